"""Read a built corpus: clip metadata from manifest.jsonl, audio from memory-mapped int16 shards.

    corpus = Corpus("cache/corpus")
    for clip in corpus.clips("train"):
        audio = corpus.audio(clip)        # (n_samples,) float32 in [-1, 1], 16 kHz
        clip.captions, clip.events        # strings; Event(label, onset_s, offset_s)

The log-mel front end is applied by the training loader, not here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "dev")


@dataclass(frozen=True)
class Event:
    label: str
    onset_s: float
    offset_s: float


@dataclass(frozen=True)
class Clip:
    id: str
    split: str
    shard: str
    offset: int  # first sample in the shard
    n_samples: int
    captions: tuple[str, ...]
    labels: tuple[str, ...]
    events: tuple[Event, ...]  # includes an ambience bed as an event spanning the clip
    source_ids: tuple[str, ...]
    background: dict  # {"kind": "none" | "noise" | "ambience", "label"?, "color"?, "snr_db"?}
    kind: str = "mix"  # "mix" | "clean" (one real recording alone; unlabelled ones have no captions)

    @property
    def duration_s(self) -> float:
        return self.n_samples / 16000

    @classmethod
    def from_record(cls, r: dict) -> Clip:
        return cls(id=r["id"], split=r["split"], shard=r["shard"], offset=int(r["offset"]),
                   n_samples=int(r["n_samples"]), captions=tuple(r["captions"]),
                   labels=tuple(r["labels"]), events=tuple(Event(**e) for e in r["events"]),
                   source_ids=tuple(r["source_ids"]), background=dict(r.get("background", {})),
                   kind=r.get("kind", "mix"))


class Corpus:
    """A built corpus folder (see encoder/data/build.py for its layout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / "manifest.jsonl"
        if not manifest.exists():
            raise FileNotFoundError(f"no corpus at {self.path}: run `python -m encoder.data.build` first")
        with open(manifest) as f:
            self._clips = [Clip.from_record(json.loads(line)) for line in f if line.strip()]
        self._by_id = {c.id: c for c in self._clips}
        self.classes: dict[str, dict] = json.loads((self.path / "classes.json").read_text())
        self.info: dict = json.loads((self.path / "build_info.json").read_text())
        self.sample_rate: int = int(self.info.get("sample_rate", 16000))
        self._shards: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._clips)

    def __iter__(self) -> Iterator[Clip]:
        return iter(self._clips)

    def clips(self, split: str | None = None) -> list[Clip]:
        """Clips of one split ("train" | "dev"), or all when split is None."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [c for c in self._clips if split is None or c.split == split]

    def clip(self, clip_id: str) -> Clip:
        return self._by_id[clip_id]

    @property
    def labels(self) -> list[str]:
        """All class labels of the corpus, sorted (a stable class index for multi-label heads)."""
        return sorted(self.classes)

    def names(self, label: str) -> list[str]:
        """Natural-language names of a class ("a dog barks", "a dog barking", ...)."""
        return list(self.classes[label]["names"])

    def _shard(self, name: str) -> np.ndarray:
        if name not in self._shards:
            self._shards[name] = np.load(self.path / name, mmap_mode="r")
        return self._shards[name]

    def audio_int16(self, clip: Clip) -> np.ndarray:
        """(n_samples,) int16 read-only view into the memory-mapped shard."""
        return self._shard(clip.shard)[clip.offset : clip.offset + clip.n_samples]

    def audio(self, clip: Clip | str) -> np.ndarray:
        """(n_samples,) float32 in [-1, 1] at 16 kHz."""
        c = self._by_id[clip] if isinstance(clip, str) else clip
        return self.audio_int16(c).astype(np.float32) / 32767.0

    def frame_targets(self, clip: Clip, frames_per_second: int = 100) -> np.ndarray:
        """(n_classes, n_samples * fps // 16000) float32 0/1 strong labels on the `labels` index,
        at the log-mel frame rate by default (frame i covers [i/fps, (i+1)/fps))."""
        n = clip.n_samples * frames_per_second // self.sample_rate
        index = {lab: i for i, lab in enumerate(self.labels)}
        y = np.zeros((len(index), n), dtype=np.float32)
        for e in clip.events:
            a = int(np.floor(e.onset_s * frames_per_second))
            b = int(np.ceil(e.offset_s * frames_per_second))
            y[index[e.label], max(0, a) : min(n, b)] = 1.0
        return y

    def hours(self, split: str | None = None) -> float:
        return sum(c.n_samples for c in self.clips(split)) / self.sample_rate / 3600
