"""Prompt matching: cosine of each prompt against the audio embeddings, calibrated to [0, 1].

score = sigmoid(scale * cos + bias), with scale and bias from the model's frame loss
(`encoder.losses.FrameLoss`: scale = exp(log_scale), bias), passed in as numbers so this module
needs neither torch nor the checkpoint. The same calibration serves the dense columns and, unless
told otherwise, the global embedding.

Prompt embeddings come from the text tower (run by the caller, e.g. through ONNX Runtime) and are
cached by (model hash, sentence) in memory and, optionally, in one npz file per model hash, so a
restart or a hot reload of the prompts only encodes sentences it has not seen. A prompt of several
sentences is their ensemble: the mean of the unit sentence embeddings, normalised again.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("streamer.matcher")

EPS = 1e-8  # norm floor: a zero embedding gives cosine 0, not NaN
TextEncoder = Callable[[list[str]], np.ndarray]  # sentences -> (n, E) float, not necessarily normalised


def _unit(x: np.ndarray) -> np.ndarray:
    """L2-normalise the last axis, float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS)


@dataclass(frozen=True)
class Calibration:
    """sigmoid(scale * cos + bias): scale = exp(FrameLoss.log_scale) > 0, bias = FrameLoss.bias."""

    scale: float
    bias: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale > 0 and np.isfinite(self.bias)):
            raise ValueError(f"calibration needs a finite scale > 0 and a finite bias, got {self}")

    @classmethod
    def from_manifest(cls, calibration: dict) -> Calibration:
        """From the export manifest's "calibration" (encoder/export.py): frame_log_scale, frame_bias."""
        return cls(scale=math.exp(calibration["frame_log_scale"]), bias=calibration["frame_bias"])

    def __call__(self, cos: np.ndarray) -> np.ndarray:
        """cos: any shape, in [-1, 1] -> scores in [0, 1], float32."""
        z = np.float32(self.scale) * cos + np.float32(self.bias)
        return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # = sigmoid(z), no overflow


@dataclass(frozen=True)
class MatchScores:
    """Scores of P prompts (in `labels` order) against B clips of C columns."""

    labels: tuple[str, ...]
    global_cos: np.ndarray  # (B, P) float32 in [-1, 1]
    global_scores: np.ndarray  # (B, P) float32 in [0, 1]
    column_cos: np.ndarray  # (B, C, P) float32 in [-1, 1]; 0 where the column is invalid
    column_scores: np.ndarray  # (B, C, P) float32 in [0, 1]; 0 where the column is invalid


class Matcher:
    """Cosine + calibration of P prompts against global (B, E) and column (B, C, E) embeddings.

    prompt_embeddings: (P, E) float (normalised here, once); labels: P unique names.
    global_calibration: for the global embedding; None = the column calibration.
    set_prompts(...) swaps the prompts at once (hot reload).
    """

    def __init__(
        self,
        prompt_embeddings: np.ndarray,
        labels: Sequence[str],
        calibration: Calibration,
        global_calibration: Calibration | None = None,
    ):
        self.calibration = calibration
        self.global_calibration = global_calibration or calibration
        self.set_prompts(prompt_embeddings, labels)

    def set_prompts(self, prompt_embeddings: np.ndarray, labels: Sequence[str]) -> None:
        emb = np.asarray(prompt_embeddings)
        labels = tuple(labels)
        if emb.ndim != 2 or emb.shape[0] != len(labels) or emb.shape[0] == 0:
            raise ValueError(
                f"expected prompt embeddings (P, E) with P = {len(labels)} labels, got {emb.shape}"
            )
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique, got {list(labels)}")
        if not np.isfinite(emb).all():
            raise ValueError("prompt embeddings hold NaN or inf")
        self._prompts_t = np.ascontiguousarray(_unit(emb).T)  # (E, P), one assignment: atomic swap
        self.labels = labels

    @property
    def embed_dim(self) -> int:
        return self._prompts_t.shape[0]

    def __call__(
        self, global_emb: np.ndarray, columns: np.ndarray, column_valid: np.ndarray | None = None
    ) -> MatchScores:
        """global_emb: (B, E); columns: (B, C, E); column_valid: (B, C) bool or None (all valid)."""
        prompts_t, labels = self._prompts_t, self.labels
        e = prompts_t.shape[0]
        if global_emb.ndim != 2 or global_emb.shape[1] != e:
            raise ValueError(f"expected global embeddings (B, {e}), got {global_emb.shape}")
        if columns.ndim != 3 or columns.shape[2] != e or columns.shape[0] != global_emb.shape[0]:
            raise ValueError(f"expected columns (B={global_emb.shape[0]}, C, {e}), got {columns.shape}")
        global_cos = _unit(global_emb) @ prompts_t  # (B, P)
        column_cos = _unit(columns) @ prompts_t  # (B, C, P)
        column_scores = self.calibration(column_cos)
        if column_valid is not None:
            invalid = ~np.asarray(column_valid, dtype=bool)[..., None]  # (B, C, 1)
            column_cos = np.where(invalid, np.float32(0), column_cos)
            column_scores = np.where(invalid, np.float32(0), column_scores)
        return MatchScores(labels, global_cos, self.global_calibration(global_cos), column_cos, column_scores)


class PromptCache:
    """Unit sentence embeddings by (model hash, sentence): a dict, mirrored in npz files.

    cache_dir: where `prompts-<model hash>.npz` files live (None: memory only). A file that cannot
    be read or written is logged once and skipped; the cache then works from memory.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._vectors: dict[tuple[str, str], np.ndarray] = {}
        self._loaded: set[str] = set()  # model hashes whose file has been read
        self.hits = 0
        self.misses = 0

    def path(self, model_hash: str) -> Path | None:
        if self.cache_dir is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_hash)[:80]
        return self.cache_dir / f"prompts-{safe}.npz"

    def embed(self, model_hash: str, sentences: Sequence[str], encode: TextEncoder) -> np.ndarray:
        """(n,) sentences -> (n, E) float32 unit embeddings; `encode` runs once, on the unseen ones."""
        self._load(model_hash)
        missing = list(dict.fromkeys(s for s in sentences if (model_hash, s) not in self._vectors))
        self.misses += len(missing)
        self.hits += len(sentences) - len(missing)
        if missing:
            vectors = _unit(encode(missing))
            if vectors.shape[0] != len(missing) or not np.isfinite(vectors).all():
                raise ValueError(
                    f"text encoder returned {vectors.shape} (or non-finite) for {len(missing)} sentences"
                )
            for s, v in zip(missing, vectors):
                self._vectors[(model_hash, s)] = v
            self._save(model_hash)
        return (
            np.stack([self._vectors[(model_hash, s)] for s in sentences]) if sentences else np.zeros((0, 0))
        )

    def _load(self, model_hash: str) -> None:
        path = self.path(model_hash)
        if model_hash in self._loaded or path is None:
            return
        self._loaded.add(model_hash)
        if not path.exists():
            return
        try:
            with np.load(path, allow_pickle=False) as f:
                texts, vectors = f["texts"], f["embeddings"]
            for s, v in zip(texts.tolist(), vectors.astype(np.float32)):
                self._vectors.setdefault((model_hash, s), v)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
            log.warning("prompt cache %s unreadable (%s); re-encoding prompts", path, e)

    def _save(self, model_hash: str) -> None:
        path = self.path(model_hash)
        if path is None:
            return
        items = [(s, v) for (h, s), v in self._vectors.items() if h == model_hash]
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    texts=np.array([s for s, _ in items], dtype=str),
                    embeddings=np.stack([v for _, v in items]),
                )
            os.replace(tmp, path)  # readers never see a half-written file
            tmp = None
        except OSError as e:
            log.warning("prompt cache %s not written (%s); keeping it in memory", path, e)
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)


def prompt_embeddings(
    prompts: Sequence[str | Sequence[str]], model_hash: str, encode: TextEncoder, cache: PromptCache
) -> np.ndarray:
    """Prompts (a sentence or a list of sentences each) -> (P, E) float32 unit embeddings.

    A list is an ensemble: the mean of its unit sentence embeddings, normalised again.
    """
    groups = [[p] if isinstance(p, str) else list(p) for p in prompts]
    if any(not g for g in groups):
        raise ValueError("every prompt needs at least one sentence")
    flat = [s for g in groups for s in g]
    vectors = cache.embed(model_hash, flat, encode)  # (sum of sentences, E)
    bounds = np.cumsum([0] + [len(g) for g in groups])
    return _unit(np.stack([vectors[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])]))
