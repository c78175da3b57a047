"""Export SLAP to ONNX for the engine: the audio encoder, the text tower, a tokenizer and a manifest.

    python main.py export --model runs/slap-tiny/model.safetensors --out DIR
    python main.py export --model slap-tiny --out DIR      # seeded random weights (tests, benches)

The engine never runs PyTorch on its hot path: it opens the export with ONNX Runtime (or a
TensorRT engine built from it, see `trt_build`). Exports are cached by the weights file's content
hash (`export_cached`), so the engine exports on first use and reuses the result afterwards.
Every export is checked against PyTorch on a random batch and refused below cosine 0.9999.

Beside the full-window encoder it writes the incremental encoder (encoder/incremental.py: a hop
encodes only its new columns against per-stream caches) and an int8 copy of it (ONNX Runtime
dynamic quantisation of the weight matmuls), which the engine uses by default on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from encoder.checkpoint import CheckpointError, file_hash, load_model, save_weights
from encoder.frontend import FRAMES_PER_SECOND, N_MELS, PATCH_FRAMES
from encoder.incremental import IncrementalEncoder, entry_sizes, local_columns
from encoder.model import AudioEncoder
from encoder.runtime.base import (
    AUDIO_ONNX,
    INCREMENTAL_INT8_ONNX,
    INCREMENTAL_ONNX,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    RANDOM_SEED,
    TEXT_ONNX,
    TOKENIZER_FILE,
    BackendError,
    export_dir_for,
    find_export,
    resolve_model,
)
from encoder.slap import SLAP, create_model
from encoder.text import TOKENIZER_FILE as MINILM_TOKENIZER
from encoder.text import find_minilm_dir

OPSET = 17  # LayerNormalization is a single op from 17; TensorRT 10 parses up to opset 20+
MIN_COSINE = 0.9999  # ORT vs torch, per clip (global) and per valid column
AUDIO_INPUTS = {"mel": ["batch", N_MELS, "frames"], "lengths": ["batch"]}
AUDIO_OUTPUTS = {"columns": ["batch", "n_columns", "embed_dim"], "column_valid": ["batch", "n_columns"],
                 "global_emb": ["batch", "embed_dim"]}
INCREMENTAL_INPUTS = {
    "mel": ["batch", N_MELS, "frames"], "new_valid": ["batch", "new_columns"],
    "rope_cos": ["batch", "new_tokens", "half_head"], "rope_sin": ["batch", "new_tokens", "half_head"],
    "past_local": ["batch", "local_tokens", "local_entry"], "local_valid": ["batch", "local_columns"],
    "past_global": ["batch", "groups", 2, "heads", "global_tokens", "head_dim"], "global_valid": ["batch", "global_columns"],
}
INCREMENTAL_OUTPUTS = {"columns": ["batch", "new_columns", "embed_dim"], "global_emb": ["batch", "embed_dim"],
                       "new_local": ["batch", "new_tokens", "local_entry"],
                       "new_global": ["batch", "groups", 2, "heads", "new_tokens", "head_dim"]}
FIXED_AXES = ("embed_dim", "half_head", "local_entry", "groups", "heads", "head_dim")
INT8_MIN_COSINE = 0.99  # int8 vs fp32 incremental graph on the check batch; the eval tables are the real test
TEXT_INPUTS = {"ids": ["batch", "tokens"], "mask": ["batch", "tokens"]}
TEXT_OUTPUTS = {"text_emb": ["batch", "embed_dim"]}


class ExportError(RuntimeError):
    """An export that failed or does not match PyTorch; the message is one line."""


def materialise_config(name: str, path: str | Path, seed: int = RANDOM_SEED) -> Path:
    """Seeded random weights for a named config, saved as the shipped format (fp16 safetensors)."""
    torch.manual_seed(seed)
    model = create_model(name)  # ValueError for an unknown name
    return save_weights(model, path, fp16=True, extra={"seed": seed, "random_init": True})


class ExportableEncoder(nn.Module):
    """`AudioEncoder.forward` (padded execution) returning the three tensors the engine uses, as a
    tuple. Shares the encoder's modules; holds no weights of its own."""

    def __init__(self, audio: AudioEncoder):
        super().__init__()
        self.audio = audio

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.audio(mel, lengths)
        return out.columns, out.column_valid, out.global_emb


def _dynamic_axes(shapes: dict[str, list]) -> dict[str, dict[int, str]]:
    return {name: {i: d for i, d in enumerate(dims) if isinstance(d, str) and d not in FIXED_AXES}
            for name, dims in shapes.items()}


def _quiet_export(*args, **kwargs) -> None:
    """torch.onnx.export without its tracer warnings: the ones it raises here are about Python
    values that are constant by construction (the 64-bin assert, unpacking q/k/v), and every
    export is checked on other shapes than the traced one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy (TorchScript) exporter
        torch.onnx.export(*args, **kwargs)


def export_audio(model: SLAP, path: Path, opset: int = OPSET) -> None:
    lengths = torch.tensor([700, 333])  # mixed lengths and padding, neither a multiple of 16
    mel = torch.randn(2, N_MELS, 700)
    _quiet_export(
        ExportableEncoder(model.audio).eval(), (mel, lengths), str(path),
        input_names=list(AUDIO_INPUTS), output_names=list(AUDIO_OUTPUTS),
        dynamic_axes=_dynamic_axes(AUDIO_INPUTS | AUDIO_OUTPUTS), opset_version=opset, dynamo=False,
    )


def cache_spec(model: SLAP):
    """The incremental encoder's CacheSpec for this model (also written to the manifest)."""
    from encoder.runtime.stream_cache import CacheSpec

    cfg = model.cfg.audio
    local, groups = entry_sizes(cfg.width, cfg.depth, cfg.pattern)
    return CacheSpec(local, groups, cfg.heads, cfg.width // cfg.heads, local_columns(cfg.window_columns), cfg.rope_base)


def incremental_example(model: SLAP, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A batch for the incremental graph: 3 streams, 4 new columns (one stream with 3), caches of
    5, 2 and 0 columns (left padded), at stream columns 40, 7 and 0."""
    from encoder.runtime.stream_cache import rope_angles

    spec = cache_spec(model)
    rng = np.random.default_rng(seed)
    mel = rng.standard_normal((3, N_MELS, 4 * PATCH_FRAMES)).astype(np.float32)
    new_valid = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], bool)
    cos, sin = rope_angles(np.array([40, 7, 0]), 4, spec.head_dim, spec.rope_base)
    W = spec.local_columns
    past_local = (0.5 * rng.standard_normal((3, 4 * W, spec.local_entry))).astype(np.float32)
    local_valid = np.array([[1] * W, [0] * (W - 2) + [1, 1], [0] * W], bool)
    past_global = (0.5 * rng.standard_normal((3, spec.global_groups, 2, spec.heads, 5 * 4, spec.head_dim))).astype(np.float32)
    global_valid = np.array([[1] * 5, [0, 0, 0, 1, 1], [0] * 5], bool)
    return mel, new_valid, cos, sin, past_local, local_valid, past_global, global_valid


def export_incremental(model: SLAP, path: Path, opset: int = OPSET) -> None:
    example = tuple(torch.from_numpy(a) for a in incremental_example(model))
    _quiet_export(
        IncrementalEncoder(model.audio).eval(), example, str(path),
        input_names=list(INCREMENTAL_INPUTS), output_names=list(INCREMENTAL_OUTPUTS),
        dynamic_axes=_dynamic_axes(INCREMENTAL_INPUTS | INCREMENTAL_OUTPUTS), opset_version=opset, dynamo=False,
    )


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime dynamic quantisation: int8 weights for every MatMul with a constant weight,
    activations quantised per call (no calibration data needed)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it logs a warning advising shape pre-processing, which this graph does not need
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def export_text(model: SLAP, path: Path, opset: int = OPSET) -> None:
    ids, mask = model.text.tokenize(["a dog barking in the distance", "glass breaking"])
    _quiet_export(
        model.text.eval(), (ids, mask), str(path),
        input_names=list(TEXT_INPUTS), output_names=list(TEXT_OUTPUTS),
        dynamic_axes=_dynamic_axes(TEXT_INPUTS | TEXT_OUTPUTS), opset_version=opset, dynamo=False,
    )


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows: a, b (..., E) -> (...,)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def compare_audio(ref: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Parity of two encoders' (columns, column_valid, global_emb) on the same batch: the min cosine
    and max abs diff of the global embeddings and of the valid columns (padding is not compared)."""
    (cr, vr, gr), (cg, vg, gg) = ref, got
    if not np.array_equal(vr, vg):
        raise ExportError("column_valid differs between the two backends")
    return {
        "global_min_cos": float(cosine_rows(gr, gg).min()),
        "global_max_abs": float(np.abs(gr - gg).max()),
        "columns_min_cos": float(cosine_rows(cr[vr], cg[vr]).min()),
        "columns_max_abs": float(np.abs(cr[vr] - cg[vr]).max()),
    }


def torch_audio(model: SLAP, mel: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, ...]:
    with torch.inference_mode():
        out = model.audio(torch.from_numpy(mel), torch.from_numpy(lengths))
    return out.columns.numpy(), out.column_valid.numpy(), out.global_emb.numpy()


def verify_export(model: SLAP, export_dir: Path, seed: int = 0) -> dict[str, float]:
    """ORT vs torch on a random batch (mixed lengths, padding) and a few prompts.

    Returns the parity figures; raises ExportError when a cosine is below MIN_COSINE."""
    from encoder.runtime.onnx_backend import OnnxBackend

    backend = OnnxBackend(export_dir)
    rng = np.random.default_rng(seed)
    lengths = np.array([1000, 517, 160], dtype=np.int64)  # 10 s, 5.17 s, 1.6 s
    mel = rng.standard_normal((3, N_MELS, 1000)).astype(np.float32)
    figures = compare_audio(torch_audio(model, mel, lengths), backend.encode(mel, lengths))
    prompts = ["a dog barking", "glass breaking in a quiet kitchen at night", "rain"]
    with torch.inference_mode():
        ref_text = model.text(*model.text.tokenize(prompts)).numpy()
    inputs = incremental_example(model, seed + 1)
    with torch.inference_mode():
        ref = [t.numpy() for t in IncrementalEncoder(model.audio)(*(torch.from_numpy(a) for a in inputs))]
    for precision in ("fp32", "int8"):
        got = OnnxBackend(export_dir, precision=precision).incremental(*inputs)
        valid = inputs[1]
        figures[f"incremental_{precision}_global_min_cos"] = float(cosine_rows(ref[1], got[1]).min())
        figures[f"incremental_{precision}_columns_min_cos"] = float(cosine_rows(ref[0][valid], got[0][valid]).min())
        cache_rows = np.concatenate([cosine_rows(ref[2], got[2]).ravel(), cosine_rows(ref[3], got[3]).ravel()])
        if precision == "fp32":
            figures["incremental_fp32_cache_min_cos"] = float(cache_rows.min())
        else:
            # int8 weights move a few of the cache's thousands of K/V rows more than the outputs
            # they feed; the gate is on their mean (a wiring fault drops it far below), the worst
            # row is reported beside it, not gated
            figures["incremental_int8_cache_mean_cos"] = float(cache_rows.mean())
            figures["incremental_int8_cache_worst_row"] = float(cache_rows.min())
    got_text = backend.embed_text(prompts)
    figures["text_min_cos"] = float(cosine_rows(ref_text, got_text).min())
    figures["text_max_abs"] = float(np.abs(ref_text - got_text).max())
    bad = {k: v for k, v in figures.items()
           if k.endswith("_cos") and not v >= (INT8_MIN_COSINE if "int8" in k else MIN_COSINE)}
    if bad:
        raise ExportError(f"{export_dir}: ONNX Runtime disagrees with PyTorch: {bad} (need cosine >= {MIN_COSINE}, "
                          f"int8 >= {INT8_MIN_COSINE})")
    return figures


def build_manifest(model: SLAP, model_file: Path, export_dir: Path, opset: int) -> dict:
    import onnx
    import onnxruntime

    cfg = model.cfg
    return {
        "format": MANIFEST_FORMAT,
        "model_hash": file_hash(model_file),
        "model_file": str(model_file.resolve()),
        "model_name": cfg.name,
        "opset": opset,
        "embed_dim": cfg.audio.embed_dim,
        "audio": {
            "file": AUDIO_ONNX,
            "sha256": file_hash(export_dir / AUDIO_ONNX),
            "inputs": AUDIO_INPUTS,
            "outputs": AUDIO_OUTPUTS,
            "dtypes": {"mel": "float32", "lengths": "int64", "columns": "float32", "column_valid": "bool",
                       "global_emb": "float32"},
            "n_mels": N_MELS,
            "frames_per_second": FRAMES_PER_SECOND,
            "patch_frames": PATCH_FRAMES,
            "min_frames": PATCH_FRAMES,  # one 160 ms column
            "max_seconds": cfg.audio.max_seconds,
            "max_frames": int(round(cfg.audio.max_seconds * FRAMES_PER_SECOND)),
        },
        "incremental": {
            "file": INCREMENTAL_ONNX,
            "int8_file": INCREMENTAL_INT8_ONNX,
            "sha256": file_hash(export_dir / INCREMENTAL_ONNX),
            "inputs": INCREMENTAL_INPUTS,
            "outputs": INCREMENTAL_OUTPUTS,
            **asdict(cache_spec(model)),
            "tokens_per_column": 4,
        },
        "text": {
            "file": TEXT_ONNX,
            "sha256": file_hash(export_dir / TEXT_ONNX),
            "inputs": TEXT_INPUTS,
            "outputs": TEXT_OUTPUTS,
            "tokenizer": TOKENIZER_FILE,
            "max_len": cfg.text.max_len,
            "pad_id": model.text.pad_id,
            "pad_to_max_len": cfg.text.pad_to_max_len,
        },
        # logit = frame_scale * cos(column, prompt) + frame_bias, frame_scale = exp(frame_log_scale);
        # clip-level logit = exp(clap_logit_scale) * cos(global, prompt) (clamped at 100 in training)
        "calibration": {
            "frame_log_scale": model.frame_loss.log_scale.item(),
            "frame_bias": model.frame_loss.bias.item(),
            "clap_logit_scale": model.clap_loss.logit_scale.item(),
        },
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }


def export(model_file: str | Path, out_dir: str | Path, opset: int = OPSET, verify: bool = True) -> Path:
    """Write the ONNX export of a SLAP weights file into out_dir; manifest.json is written last.

    Raises CheckpointError for an unusable weights file, ExportError when the check fails."""
    model_file, out_dir = Path(model_file), Path(out_dir)
    model = load_model(model_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # an interrupted export must not look complete
    export_audio(model, out_dir / AUDIO_ONNX, opset)
    export_incremental(model, out_dir / INCREMENTAL_ONNX, opset)
    quantize_int8(out_dir / INCREMENTAL_ONNX, out_dir / INCREMENTAL_INT8_ONNX)
    export_text(model, out_dir / TEXT_ONNX, opset)
    text_dir = Path(model.cfg.text.model_dir) if model.cfg.text.model_dir else find_minilm_dir()
    shutil.copyfile(text_dir / MINILM_TOKENIZER, out_dir / TOKENIZER_FILE)
    manifest = build_manifest(model, model_file, out_dir, opset)
    write_manifest(out_dir, manifest)  # the check reads it (through OnnxBackend)
    if verify:
        try:
            manifest["parity"] = verify_export(model, out_dir)
        except ExportError:
            (out_dir / MANIFEST_FILE).unlink()
            raise
        write_manifest(out_dir, manifest)
    return out_dir


def write_manifest(out_dir: Path, manifest: dict) -> None:
    tmp = out_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / MANIFEST_FILE)


def export_cached(model_path: str | Path, cache_dir: str | Path) -> Path:
    """The export of `model_path` (a weights file or a config name) under cache_dir/onnx-<hash>.

    Returns the existing directory when its manifest carries the same model hash; otherwise
    exports into a temporary directory and renames it into place (safe against a concurrent
    export of the same model)."""
    model_file = resolve_model(model_path, cache_dir)
    found = find_export(model_file, cache_dir)
    if found is not None:
        return found
    final = export_dir_for(file_hash(model_file), cache_dir)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    export(model_file, tmp)
    shutil.rmtree(final, ignore_errors=True)  # a stale or partial export of this hash
    try:
        os.replace(tmp, final)
    except OSError:  # another process won the race: use its export
        shutil.rmtree(tmp, ignore_errors=True)
        if find_export(model_file, cache_dir) is None:
            raise
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="main.py export", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="weights (.safetensors) or a config name (slap-tiny: random)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"), help="where config names are materialised")
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--no-verify", action="store_true", help="skip the ORT-vs-torch check")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        model_file = resolve_model(args.model, args.cache_dir)
        out = export(model_file, args.out, args.opset, verify=not args.no_verify)
    except (BackendError, CheckpointError, ExportError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    print(f"exported {model_file} (hash {manifest['model_hash']}) to {out} in {time.perf_counter() - t0:.1f} s")
    for name, figure in manifest.get("parity", {}).items():
        print(f"  {name:16s} {figure:.7f}" if name.endswith("_cos") else f"  {name:16s} {figure:.2e}")
    return 0
