"""The source library: labelled, trimmed 16 kHz mono sounds that clips are mixed from.

Each backend (fluidsynth, speech, sample packs) produces `SourceItem`s and stores them in one
`Library` file pair (`NAME.npy` int16 audio + `NAME.jsonl` index) under cache/sources/library, so
a rebuild with the same recipe set reuses it. `source_id` names the recording an item came from
(a soundfont sample, a TTS voice, a pack file without its variant number); the dev split is
decided per source_id, never per item.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soxr

SAMPLE_RATE = 16000
FRAME = 160  # 10 ms analysis frames for energy trimming, same hop as the log-mel front end
TRIM_DB = 40.0  # a frame is active when within 40 dB of the loudest frame
MIN_SOURCE_S = 0.1  # shorter than this after trimming is a click, not a sound


@dataclass
class SourceItem:
    item_id: str  # unique per render / file segment
    source_id: str  # the recording it came from; splits are decided on this
    label: str
    backend: str  # "fluidsynth", "espeak", "flite", "pack:<deb name>"
    licence: str
    n_samples: int = 0
    offset: int = 0  # start in the library's audio array
    meta: dict = field(default_factory=dict)
    # Classes that also sound over the whole item ("thunderstorm": label rain, extra thunder).
    # label "" marks an unlabelled recording: used as a clip of its own, never mixed.
    extra_labels: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [lab for lab in (self.label, *self.extra_labels) if lab]


def to_mono_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """audio: (N,) or (N, C) any float/int dtype -> (M,) float32 at 16 kHz, soxr high quality."""
    x = np.asarray(audio)
    if x.dtype.kind in "iu":
        x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
    x = x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        x = soxr.resample(x, sample_rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    return x


def frame_db(audio: np.ndarray) -> np.ndarray:
    """(N,) float -> (N // 160,) frame energies in dB (10 ms frames)."""
    n = len(audio) // FRAME
    if n == 0:
        return np.full(1, -120.0, dtype=np.float32)
    frames = audio[: n * FRAME].astype(np.float32).reshape(n, FRAME)
    return 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def active_span(audio: np.ndarray, floor_db: float = TRIM_DB) -> tuple[int, int]:
    """[start, end) in samples of the part within `floor_db` of the loudest 10 ms frame."""
    db = frame_db(audio)
    active = np.nonzero(db > db.max() - floor_db)[0]
    if db.max() < -90 or len(active) == 0:
        return 0, 0
    return int(active[0] * FRAME), int(min(len(audio), (active[-1] + 1) * FRAME))


def trim(audio: np.ndarray) -> np.ndarray:
    """Cut leading/trailing silence so the item's extent is its energy extent (exact events)."""
    s, e = active_span(audio)
    return audio[s:e]


def peak_normalise(audio: np.ndarray, peak: float = 0.9) -> np.ndarray:
    m = float(np.max(np.abs(audio))) if len(audio) else 0.0
    return audio if m < 1e-9 else (audio * (peak / m)).astype(np.float32)


def stable_hash(*parts: object) -> str:
    """Short hex digest stable across runs and machines (Python's hash() is salted)."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


class Library:
    """Items plus one int16 audio array, all in memory; saved as NAME.npy + NAME.jsonl."""

    def __init__(self) -> None:
        self.items: list[SourceItem] = []
        self._chunks: list[np.ndarray] = []
        self._n = 0
        self.audio: np.ndarray = np.zeros(0, dtype=np.int16)

    def add(self, item: SourceItem, audio: np.ndarray) -> bool:
        """Trim, normalise and append; returns False (and drops it) when too short or silent."""
        x = trim(np.asarray(audio, dtype=np.float32))
        if len(x) < MIN_SOURCE_S * SAMPLE_RATE:
            return False
        x = peak_normalise(x)
        item.offset, item.n_samples = self._n, len(x)
        self._chunks.append(np.round(x * 32767).astype(np.int16))
        self._n += len(x)
        self.items.append(item)
        return True

    def extend(self, other: Library) -> None:
        for it in other.items:
            self.add_raw(it, other.get(it))

    def add_raw(self, item: SourceItem, audio16: np.ndarray) -> None:
        item = SourceItem(**{**asdict(item), "offset": self._n, "n_samples": len(audio16)})
        self._chunks.append(audio16.astype(np.int16))
        self._n += len(audio16)
        self.items.append(item)

    def _flush(self) -> None:
        if self._chunks:
            self.audio = np.concatenate([self.audio, *self._chunks])
            self._chunks = []

    def get(self, item: SourceItem) -> np.ndarray:
        """int16 (n_samples,) view of an item."""
        self._flush()
        return self.audio[item.offset : item.offset + item.n_samples]

    def get_float(self, item: SourceItem) -> np.ndarray:
        return self.get(item).astype(np.float32) / 32767.0

    @staticmethod
    def _file(stem: Path, suffix: str) -> Path:
        # appended, never with_suffix: "pack-wesnoth-1.16-data-<key>" has dots, and with_suffix
        # cut its name at the first one, so every key of that pack shared one cache file
        return stem.with_name(stem.name + suffix)

    def save(self, stem: Path) -> None:
        self._flush()
        stem.parent.mkdir(parents=True, exist_ok=True)
        tmp = stem.with_name(stem.name + ".tmp.npy")
        np.save(tmp, self.audio)
        with open(self._file(stem, ".jsonl.tmp"), "w") as f:
            for it in self.items:
                f.write(json.dumps(asdict(it)) + "\n")
        # Index last: a library counts as cached only when its .jsonl exists.
        tmp.replace(self._file(stem, ".npy"))
        self._file(stem, ".jsonl.tmp").replace(self._file(stem, ".jsonl"))

    @classmethod
    def load(cls, stem: Path) -> Library:
        lib = cls()
        lib.audio = np.load(cls._file(stem, ".npy"))
        with open(cls._file(stem, ".jsonl")) as f:
            lib.items = [SourceItem(**json.loads(line)) for line in f if line.strip()]
        lib._n = len(lib.audio)
        return lib

    @staticmethod
    def cached(stem: Path) -> bool:
        return Library._file(stem, ".jsonl").exists() and Library._file(stem, ".npy").exists()


def assign_splits(items: list[SourceItem], dev_fraction: float, seed: int) -> dict[str, str]:
    """source_id -> "train" | "dev", decided by a hash of (seed, source_id).

    A class whose sources would all land in dev keeps its first source in train, so every class
    is trainable; a class with a single source therefore never appears in dev. Unlabelled
    recordings always train: dev clips are scored against their labels.
    """
    split = {}
    for sid in sorted({it.source_id for it in items}):
        u = int(stable_hash(seed, sid), 16) / 16**16
        split[sid] = "dev" if u < dev_fraction else "train"
    by_label: dict[str, set[str]] = defaultdict(set)
    labelled = {it.source_id for it in items if it.label}
    for it in items:
        if it.label:
            by_label[it.label].add(it.source_id)
        elif it.source_id not in labelled:
            split[it.source_id] = "train"
    for sids in by_label.values():
        if all(split[s] == "dev" for s in sids):
            split[min(sids)] = "train"
    return split
