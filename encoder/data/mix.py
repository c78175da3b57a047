"""Training clips: 1-4 labelled sources placed at random onsets over a background, with exact events.

Library items are already trimmed to their energy extent, so a placed item's event is
[onset, onset + length) clipped to the clip; long items are cropped and re-trimmed first.
Levels: each foreground source gets an RMS (over its active part) between -12 and 0 dB of a
reference; the background sits `snr_db` (5-25 dB) below the loudest foreground. The sum is
peak-normalised to a random peak (0.1-0.95): random gain without clipping.

`clean_clip` is the other kind: one real recording alone, no bed (the training corpus writes one
per real-recording item), so clean single sources are common next to the mixtures. Unlabelled
recordings only ever become clean clips: mixing them would add sounds no label names.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .labels import CLASSES
from .sources import SAMPLE_RATE, Library, SourceItem, active_span

MIN_CLIP_S = 1.0
MAX_CLIP_S = 30.0
REF_RMS = 0.1
N_SOURCES_P = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1}
BACKGROUND_P = {"none": 0.25, "noise": 0.35, "ambience": 0.40}
MIN_EVENT_S = 0.1


@dataclass
class MixedClip:
    audio: np.ndarray  # (N,) float32, 16 kHz
    events: list[dict]  # foreground events, sorted by onset
    background: dict  # {"kind", "label"?, "color"?, "snr_db"?}
    source_ids: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """Foreground labels in order of first onset, then the ambience label."""
        out = list(dict.fromkeys(e["label"] for e in self.events))
        if self.background.get("kind") == "ambience" and self.background["label"] not in out:
            out.append(self.background["label"])
        return out

    @property
    def all_events(self) -> list[dict]:
        """Foreground events plus the ambience bed as one event spanning the clip."""
        ev = list(self.events)
        if self.background.get("kind") == "ambience":
            ev.append({"label": self.background["label"], "onset_s": 0.0,
                       "offset_s": round(len(self.audio) / SAMPLE_RATE, 3)})
        return ev


def sample_duration(rng: random.Random) -> float:
    """Clip length in seconds: log-normal around 5 s (most mass in 2-10 s), clipped to [1, 30]."""
    return float(min(MAX_CLIP_S, max(MIN_CLIP_S, rng.lognormvariate(math.log(5.0), 0.6))))


def colored_noise(rng: random.Random, n: int, color: str) -> np.ndarray:
    """White (flat), pink (1/f) or brown (1/f^2) power spectrum noise, unit RMS."""
    g = np.random.default_rng(rng.getrandbits(32))
    spec = np.fft.rfft(g.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    spec *= {"white": 1.0, "pink": f**-0.5, "brown": f**-1.0}[color]
    x = np.fft.irfft(spec, n).astype(np.float32)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _ms_floor(sample: int) -> float:
    """Event times are stored in whole ms, rounded outwards so an event always covers its sound."""
    return math.floor(sample * 1000 / SAMPLE_RATE) / 1000


def _ms_ceil(sample: int) -> float:
    return math.ceil(sample * 1000 / SAMPLE_RATE) / 1000


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


class Mixer:
    """Draws clips for one split from the library items whose source_id is in that split."""

    def __init__(self, lib: Library, split_of: dict[str, str]) -> None:
        self.lib = lib
        self.by_split: dict[str, dict[str, list[SourceItem]]] = defaultdict(lambda: defaultdict(list))
        for it in lib.items:
            if it.label:
                self.by_split[split_of[it.source_id]][it.label].append(it)

    def labels(self, split: str) -> list[str]:
        return sorted(self.by_split[split])

    def _crop(self, rng: random.Random, x: np.ndarray, max_len: int) -> np.ndarray:
        """A random piece of at most max_len samples, re-trimmed so its extent is its energy."""
        if len(x) <= max_len:
            return x
        length = rng.randint(max(1, max_len // 3), max_len)
        start = rng.randint(0, len(x) - length)
        piece = x[start : start + length]
        s, e = active_span(piece)
        return piece[s:e]

    def _tile(self, rng: random.Random, items: list[SourceItem], n: int) -> tuple[np.ndarray, list[str]]:
        """n samples of ambience: a random offset into repeated items (loops are what beds are)."""
        parts, used, total = [], [], 0
        plain = [it for it in items if not it.extra_labels] or items  # a bed names one class
        while total < n + SAMPLE_RATE:
            it = rng.choice(plain)
            x = self.lib.get_float(it)
            fade = min(len(x) // 4, 800)  # 50 ms fades hide the seams
            if fade:
                x = x.copy()
                x[:fade] *= np.linspace(0, 1, fade, dtype=np.float32)
                x[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
            parts.append(x)
            used.append(it.source_id)
            total += len(x)
        bed = np.concatenate(parts)
        start = rng.randint(0, len(bed) - n)
        return bed[start : start + n], used

    def make_clip(self, rng: random.Random, split: str) -> MixedClip:
        pool = self.by_split[split]
        if not pool:
            raise ValueError(f"no source sounds in split {split!r}")
        n = int(round(sample_duration(rng) * SAMPLE_RATE))
        mix = np.zeros(n, dtype=np.float32)
        labels = sorted(pool)
        k = rng.choices(list(N_SOURCES_P), weights=list(N_SOURCES_P.values()))[0]
        chosen = rng.sample(labels, min(k, len(labels)))  # class-balanced: labels, not items
        events, source_ids, levels = [], [], []
        for label in chosen:
            item = rng.choice(pool[label])
            x = self._crop(rng, self.lib.get_float(item), n)
            if len(x) < MIN_EVENT_S * SAMPLE_RATE:
                continue
            level_db = rng.uniform(-12.0, 0.0)
            x = x * (REF_RMS * 10 ** (level_db / 20) / max(_rms(x), 1e-6))
            repeats = rng.randint(2, 4) if CLASSES[label].countable and rng.random() < 0.35 else 1
            onset = rng.randint(0, n - len(x))
            placed = 0
            for _ in range(repeats):
                if onset + len(x) > n:
                    break
                mix[onset : onset + len(x)] += x
                events += [{"label": lab, "onset_s": _ms_floor(onset), "offset_s": _ms_ceil(onset + len(x))}
                           for lab in item.labels]
                placed += 1
                onset += len(x) + int(rng.uniform(0.1, 1.0) * SAMPLE_RATE)
            if placed:
                source_ids.append(item.source_id)
                levels.append(level_db)
        if not events:  # every chosen item was too short: fall back to one whole item
            return self.make_clip(rng, split)

        present = set(chosen) | {e["label"] for e in events}  # and the extra classes of placed items
        background = self._background(rng, split, n, present, max(levels))
        if "audio" in background:
            mix += background.pop("audio")
            source_ids += background.pop("source_ids", [])
        peak = float(np.max(np.abs(mix)))
        mix *= rng.uniform(0.1, 0.95) / max(peak, 1e-9)
        events.sort(key=lambda e: (e["onset_s"], e["label"]))
        return MixedClip(mix.astype(np.float32), events, background, list(dict.fromkeys(source_ids)))

    def _background(self, rng: random.Random, split: str, n: int, exclude: set[str],
                    loudest_db: float) -> dict:
        kinds = dict(BACKGROUND_P)
        ambience = [lab for lab in self.by_split[split] if CLASSES[lab].ambience and lab not in exclude]
        if not ambience:
            kinds.pop("ambience")
        kind = rng.choices(list(kinds), weights=list(kinds.values()))[0]
        if kind == "none":
            return {"kind": "none"}
        snr_db = rng.uniform(5.0, 25.0)
        target = REF_RMS * 10 ** ((loudest_db - snr_db) / 20)
        if kind == "noise":
            color = rng.choice(("white", "pink", "brown"))
            return {"kind": "noise", "color": color, "snr_db": round(snr_db, 1),
                    "audio": colored_noise(rng, n, color) * target}
        label = rng.choice(ambience)
        bed, used = self._tile(rng, self.by_split[split][label], n)
        bed *= target / max(_rms(bed), 1e-6)
        return {"kind": "ambience", "label": label, "snr_db": round(snr_db, 1), "audio": bed,
                "source_ids": used}


def clean_clip(rng: random.Random, lib: Library, item: SourceItem) -> MixedClip:
    """One library item alone at a random peak level, padded with silence to MIN_CLIP_S at a random
    onset; each of its classes is one event over the whole sound (none when unlabelled)."""
    x = lib.get_float(item)[: int(MAX_CLIP_S * SAMPLE_RATE)]
    n = max(len(x), int(MIN_CLIP_S * SAMPLE_RATE))
    onset = rng.randint(0, n - len(x))
    audio = np.zeros(n, dtype=np.float32)
    audio[onset : onset + len(x)] = x * (rng.uniform(0.1, 0.95) / max(float(np.max(np.abs(x))), 1e-9))
    events = [{"label": lab, "onset_s": _ms_floor(onset), "offset_s": _ms_ceil(onset + len(x))}
              for lab in item.labels]
    return MixedClip(audio, events, {"kind": "none"}, [item.source_id])
