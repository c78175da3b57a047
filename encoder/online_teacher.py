"""Online, consistent distillation targets: the AudioSet teachers label the exact audio a
training view holds (after every waveform augmentation and mix), in the training process, and
their class probabilities are mapped onto a broad prompt vocabulary through the same soft mapping
the eval baselines use (`encoder.teachers.prompt_map`).

    teacher = OnlineTeacher("mn04+yamnet", prompt_vocabulary(corpus_names))
    clip, columns = teacher.label(waves, n_columns)   # (B, V) and B x (C_i, V) in [0, 1]

The student learns these targets on the path the engine scores with: cosine of its global
embedding and of each 160 ms column against the prompt's text embedding, through the frame
loss's learned scale and bias (`SLAP.forward`, term `text_distill`). So the teacher's knowledge
lands in the joint text space that any user prompt is matched in, not in a training-only head.
Precomputed scores would go stale under augmentation (a band-limited or reverberant view is not
the clip the teacher once heard); online labels cost ~16 ms per 6 s view for mn04 on one core.
"""

from __future__ import annotations

import numpy as np

from encoder.frontend import SECONDS_PER_COLUMN

TEMPLATES = ("{}", "the sound of {}", "a {} sound")


def audioset_aliases() -> list[str]:
    """AudioSet display names split into their aliases ("Chicken, rooster" -> chicken, rooster),
    lower-cased, in class order, without repeats."""
    from encoder.teachers.taggers import class_names

    out: dict[str, None] = {}
    for name in class_names():
        for alias in name.split(", "):
            out.setdefault(alias.strip().lower(), None)
    return list(out)


def prompt_vocabulary(extra_names: list[str] = (), templates: tuple[str, ...] = TEMPLATES) -> list[str]:
    """Every AudioSet alias and every extra name (corpus labels) in every template: the prompts
    whose teacher scores the student learns (paraphrases included, so wording matters less)."""
    names: dict[str, None] = dict.fromkeys(audioset_aliases())
    for n in extra_names:
        names.setdefault(n.strip().lower().replace("_", " "), None)
    return [t.format(n) for n in names for t in templates]


class OnlineTeacher:
    """kind: "mn04", "yamnet" or "mn04+yamnet" (the ensemble: mean of the two)."""

    def __init__(self, kind: str, vocabulary: list[str], cache_dir: str = "cache", threads: int | None = None) -> None:
        from encoder.teachers.prompt_map import PromptMap
        from encoder.teachers.taggers import EnsembleTagger, MN04Tagger, YamnetTagger, class_names

        makers = {"mn04": lambda: MN04Tagger(threads=threads), "yamnet": lambda: YamnetTagger(cache_dir)}
        parts = [p for p in kind.split("+") if p]
        unknown = [p for p in parts if p not in makers]
        if not parts or unknown:
            raise ValueError(f"online teacher: expected mn04, yamnet or mn04+yamnet, got {kind!r}")
        self.taggers = [makers[p]() for p in parts]
        self.ensemble = EnsembleTagger(self.taggers) if len(self.taggers) > 1 else None
        self.vocabulary = list(vocabulary)
        self.map = PromptMap(class_names(), self.vocabulary)

    def label(self, waves: list[np.ndarray], n_columns: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
        """waves: B mono 16 kHz views; n_columns: the student's columns per view.
        Returns clip targets (B, V) and per-view column targets (C_i, V), each column read from
        the teacher frame nearest its centre."""
        outs = [t.predict(waves, 16000) for t in self.taggers]
        out = self.ensemble.combine(outs) if self.ensemble else outs[0]
        clip = self.map(out.clip_probs)
        cols = [self.map(out.frames_at(i, (np.arange(c) + 0.5) * SECONDS_PER_COLUMN)) for i, c in enumerate(n_columns)]
        return clip, cols
