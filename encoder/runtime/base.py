"""What every backend shares: the `Backend` protocol, `BackendError`, the export manifest,
cache keys and prompt tokenisation. numpy, json and `tokenizers` only: the engine's hot path
(ONNX Runtime, TensorRT) imports this module and must never pull in torch.

An export directory (written by `encoder.export`) holds:

    manifest.json        model hash, opset, shapes, embed_dim, max_len, score calibration
    audio_encoder.onnx   mel (B, 64, T) float32, lengths (B,) int64
                         -> columns (B, C, E) float32, column_valid (B, C) bool, global_emb (B, E) float32
    audio_incremental.onnx       one hop of the incremental encoder (inputs, outputs, shapes:
                                 encoder/incremental.py), the per-stream caches in, their new entries out
    audio_incremental.int8.onnx  the same, int8 weights (ONNX Runtime dynamic quantisation)
    text_tower.onnx      ids (B, L) int64, mask (B, L) int64 -> text_emb (B, E) float32
    tokenizer.json       the MiniLM WordPiece tokenizer (`tokenizers` format)
    *.plan + *.plan.json TensorRT engines and their sidecars (built by `python -m trt_build`)
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "slap-onnx-v4"  # v4: the incremental encoder (two caches, keys after RoPE, head-major global cache) and its int8 copy
AUDIO_ONNX = "audio_encoder.onnx"
INCREMENTAL_ONNX = "audio_incremental.onnx"
INCREMENTAL_INT8_ONNX = "audio_incremental.int8.onnx"
TEXT_ONNX = "text_tower.onnx"
TOKENIZER_FILE = "tokenizer.json"
EXPORT_PREFIX = "onnx-"  # cache_dir / "onnx-<model hash>"
RANDOM_MODELS_DIR = "models"  # cache_dir / "models" / "<config>-seed<k>.safetensors"
RANDOM_SEED = 0  # a config name (`slap-tiny`) means seeded random weights, materialised once
N_MELS = 64  # = encoder.frontend.N_MELS; repeated so this module stays free of the encoder package
PATCH_FRAMES = 16  # = encoder.frontend.PATCH_FRAMES (160 ms per column)


class BackendError(RuntimeError):
    """A backend that cannot be opened (missing package, GPU, file or a mismatched engine).

    The message is one line naming what is missing and, where there is one, the fix."""


@runtime_checkable
class Backend(Protocol):
    """The engine's view of the SLAP encoder: numpy in, numpy out."""

    name: str

    def encode(self, mel: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """mel: (B, 64, T) float32 normalised log-mel; lengths: (B,) int64 valid frames.

        Returns columns (B, C, E) float32 (C = T // 16, one per 160 ms), column_valid (B, C) bool,
        global_emb (B, E) float32. Neither embedding is normalised."""
        ...

    def embed_text(self, prompts: list[str]) -> np.ndarray:
        """prompts -> (P, E) float32 joint-space embeddings, not normalised."""
        ...

    def info(self) -> dict:
        """What runs: backend name, model hash, device, threads, precision."""
        ...


def file_hash(path: str | Path, n: int = 16) -> str:
    """sha256 of a file, first n hex digits. The same value as `encoder.checkpoint.file_hash`
    (a test checks it), repeated here because that module imports torch."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, read from its JSON header without torch.

    Raises BackendError (one line) when the file is missing or is not safetensors."""
    if not path.is_file():
        raise BackendError(f"{path}: model file not found")
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if not 2 <= header_len <= 100 << 20:
                raise ValueError(f"header length {header_len}")
            header = json.loads(f.read(header_len))
    except (OSError, ValueError, struct.error) as e:
        raise BackendError(f"{path}: not a readable safetensors file ({e})") from None
    return dict(header.get("__metadata__") or {})


def is_config_name(model: str | Path) -> bool:
    """`slap-tiny` (a registered config) rather than a path to a weights file."""
    p = Path(model)
    return not p.suffix and len(p.parts) == 1 and not p.exists()


def resolve_model(model: str | Path, cache_dir: str | Path) -> Path:
    """A weights file for `model`: the file itself, or, for a config name, its seeded random
    weights under cache_dir/models (written once; this import of torch happens only then).

    Raises BackendError (one line) for a missing or unreadable file, or an unknown config."""
    if is_config_name(model):
        path = Path(cache_dir) / RANDOM_MODELS_DIR / f"{model}-seed{RANDOM_SEED}.safetensors"
        if not path.is_file():
            from encoder.export import materialise_config  # torch, once per config

            try:
                materialise_config(str(model), path, seed=RANDOM_SEED)
            except ValueError as e:
                raise BackendError(str(e)) from None
    else:
        path = Path(model)
    meta = safetensors_metadata(path)
    if "config" not in meta:
        raise BackendError(f"{path}: no model config in the safetensors metadata (not a SLAP weights file)")
    return path


def export_dir_for(model_hash: str, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"{EXPORT_PREFIX}{model_hash}"


def read_manifest(export_dir: str | Path) -> dict:
    path = Path(export_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BackendError(f"{path}: export manifest not found (run `python main.py export`)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise BackendError(f"{path}: unreadable export manifest ({e})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise BackendError(f"{path}: manifest format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


def find_export(model_file: str | Path, cache_dir: str | Path) -> Path | None:
    """The cached export of this exact weights file (same content hash), or None."""
    model_hash = file_hash(model_file)
    export_dir = export_dir_for(model_hash, cache_dir)
    try:
        manifest = read_manifest(export_dir)
    except BackendError:
        return None
    files = (manifest["audio"]["file"], manifest["incremental"]["file"], manifest["incremental"]["int8_file"],
             manifest["text"]["file"], manifest["text"]["tokenizer"])
    if manifest.get("model_hash") != model_hash or not all((export_dir / f).is_file() for f in files):
        return None
    return export_dir


def check_inputs(mel: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate an encoder call; returns C-contiguous float32 mel and int64 lengths.

    Raises ValueError (one line) on a wrong shape, or a clip shorter than one 160 ms column
    (it would have no token to pool) or longer than the batch."""
    mel = np.ascontiguousarray(mel, dtype=np.float32)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    if mel.ndim != 3 or mel.shape[1] != N_MELS:
        raise ValueError(f"mel: expected shape (B, {N_MELS}, T), got {tuple(mel.shape)}")
    if lengths.shape != (mel.shape[0],):
        raise ValueError(f"lengths: expected shape ({mel.shape[0]},), got {tuple(lengths.shape)}")
    if mel.shape[0] == 0:
        raise ValueError("mel: empty batch")
    if lengths.min() < PATCH_FRAMES or lengths.max() > mel.shape[2]:
        raise ValueError(f"lengths must be in [{PATCH_FRAMES}, {mel.shape[2]}] frames, got {lengths.tolist()}")
    return mel, lengths


class PromptTokenizer:
    """Prompts -> (ids, mask) int64, exactly as `encoder.text.TextTower.tokenize`: the MiniLM
    tokenizer (lower-cases), [CLS] ... [SEP], truncation to max_len, right padding."""

    def __init__(self, tokenizer_file: str | Path, max_len: int, pad_id: int, pad_to_max_len: bool = False):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.enable_truncation(max_length=max_len)
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]", length=max_len if pad_to_max_len else None)

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of strings, got one str")
        if len(prompts) == 0:
            raise ValueError("prompts: need at least one prompt")
        enc = self.tokenizer.encode_batch(list(prompts))
        ids = np.array([e.ids for e in enc], dtype=np.int64)  # (P, L)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)  # (P, L)
        return ids, mask

    @classmethod
    def from_manifest(cls, export_dir: Path, manifest: dict) -> PromptTokenizer:
        t = manifest["text"]
        return cls(export_dir / t["tokenizer"], t["max_len"], t["pad_id"], t["pad_to_max_len"])
