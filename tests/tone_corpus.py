"""A small in-memory corpus of numpy-made sounds, with the reading interface of
encoder.data.dataset.Corpus (clips(split), audio(clip), labels, names(label)), for training tests."""

from dataclasses import dataclass, field

import numpy as np

from encoder.data.dataset import Event

SR = 16000
CLASSES = {
    "low_tone": ["a low hum", "low humming"],
    "high_tone": ["a high beep", "high pitched beeping"],
    "noise": ["white noise hiss", "hissing noise"],
    "clicks": ["rapid clicking", "a clicking sound"],
}


@dataclass
class ToneClip:
    id: str
    audio: np.ndarray
    captions: list
    labels: list
    events: list = field(default_factory=list)
    n_samples: int = 0


def _sound(label: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    if label == "low_tone":
        return 0.3 * np.sin(2 * np.pi * rng.uniform(100, 200) * t)
    if label == "high_tone":
        return 0.3 * np.sin(2 * np.pi * rng.uniform(2500, 4000) * t)
    if label == "noise":
        return 0.2 * rng.standard_normal(n)
    x = np.zeros(n)
    x[:: int(SR * rng.uniform(0.03, 0.06))] = 0.9
    return x


class ToneCorpus:
    path = "<tone corpus>"
    labels = sorted(CLASSES)

    def __init__(self, n_clips: int = 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        self._clips = []
        for i in range(n_clips):
            label = sorted(CLASSES)[i % len(CLASSES)]
            n = int(SR * rng.uniform(1.0, 3.0))
            audio = 0.01 * rng.standard_normal(n)
            on, off = int(rng.uniform(0.0, 0.3) * n), int(rng.uniform(0.7, 1.0) * n)
            audio[on:off] += _sound(label, off - on, rng)
            self._clips.append(ToneClip(
                id=f"tone-{i}", audio=audio.astype(np.float32), captions=CLASSES[label], labels=[label],
                events=[Event(label, on / SR, off / SR)], n_samples=n))

    def clips(self, split: str):
        return self._clips if split == "train" else self._clips[:4]

    def names(self, label: str) -> list[str]:
        return CLASSES[label]

    def audio(self, clip) -> np.ndarray:
        return clip.audio
