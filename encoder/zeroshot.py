"""Zero-shot classification of single real recordings, ours beside the AudioSet teachers mapped
to the same prompts, in one pass: the engine of the ESC-50 and clip-set tables of `main.py eval`.

Every system scores every clip against every class's prompt; a clip's truth is its one class.
- ours: cosine between the clip's global embedding (the whole clip in one window, as the engine's
  clip-level score) and each prompt's text embedding;
- ours-window, ours-stream, ours-stream-int8 (`main.py eval --variants`): the same with the
  global embedding the engine gives for the clip, replayed hop by hop as the engine encodes it
  (encoder/streamed.py): its end-of-stream summary, the last window encoded whole;
- ours-stream-live: the global embedding of the clip's last incremental hop instead, as a live
  stream's hops carry it between summaries;
- mn04, yamnet: the tagger's whole-clip AudioSet probabilities through `PromptMap`;
- ensemble: the same mapping of the teachers' weighted mean (`EnsembleTagger`).
Metrics: top-1, top-5, mAP (mean over classes of the AP of that class's prompt across clips),
top-1 per class and per group (e.g. source).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from encoder.evaluate import classification_metrics
from encoder.streamed import VARIANTS, OurSystem

SYSTEMS = ("ours", *(v.system for v in VARIANTS.values()), "mn04", "yamnet", "ensemble")  # table column order


@dataclass
class ZeroShotResult:
    clips: int
    classes: list[str]
    metrics: dict[str, dict[str, float]]  # system -> top1/top5/mAP
    per_class: dict[str, dict[str, float]]  # system -> class -> top-1
    per_group: dict[str, dict[str, float]]  # system -> group -> top-1
    group_sizes: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per system


def our_scores(system: OurSystem, audio: list[np.ndarray], prompts: list[str]) -> np.ndarray:
    """(N, P) cosine of each clip's global embedding with each prompt. A clip shorter than one
    160 ms column is padded with silence to one, as the engine scores a stream's last sound."""
    text = system.backend.embed_text(prompts)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    out = np.zeros((len(audio), len(prompts)), np.float32)
    for i, (_, glob) in enumerate(system.encode(audio)):
        out[i] = text @ (glob / np.linalg.norm(glob))
    return out


def per_class_top1(scores: np.ndarray, targets: np.ndarray, names: list[str]) -> dict[str, float]:
    hit = scores.argmax(1) == targets
    return {names[k]: float(hit[targets == k].mean()) for k in range(len(names)) if (targets == k).any()}


def per_group_top1(scores: np.ndarray, targets: np.ndarray, groups: list[str]) -> dict[str, float]:
    hit, g = scores.argmax(1) == targets, np.array(groups)
    return {name: float(hit[g == name].mean()) for name in sorted(set(groups))}


def run(audio: list[np.ndarray], targets: np.ndarray, classes: list[str], prompts: list[str],
        ours: dict[str, OurSystem] | None = None, taggers: dict | None = None,
        groups: list[str] | None = None) -> ZeroShotResult:
    """ours: {system name: OurSystem} (`streamed.open_systems`; None = skip ours); taggers:
    {"mn04": MN04Tagger, "yamnet": YamnetTagger} (any subset; the ensemble is added when both are there)."""
    from encoder.teachers.prompt_map import PromptMap
    from encoder.teachers.taggers import EnsembleTagger, class_names

    truth = np.zeros((len(audio), len(classes)), bool)
    truth[np.arange(len(audio)), targets] = True
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, system in (ours or {}).items():
        t = time.perf_counter()
        scores[name] = our_scores(system, audio, prompts)
        seconds[name] = time.perf_counter() - t
    taggers = taggers or {}
    if taggers:
        pmap = PromptMap(class_names(), prompts)
        outputs = {}
        for name, tagger in taggers.items():
            t = time.perf_counter()
            outputs[name] = tagger.predict(audio, 16000)
            seconds[name] = time.perf_counter() - t
            scores[name] = pmap(outputs[name].clip_probs)
        if len(outputs) >= 2:
            ens = EnsembleTagger(list(taggers.values())).combine(list(outputs.values()))
            scores["ensemble"] = pmap(ens.clip_probs)
    groups = groups or ["all"] * len(audio)
    return ZeroShotResult(
        clips=len(audio), classes=list(classes),
        metrics={s: classification_metrics(v, truth) for s, v in scores.items()},
        per_class={s: per_class_top1(v, targets, list(classes)) for s, v in scores.items()},
        per_group={s: per_group_top1(v, targets, groups) for s, v in scores.items()},
        group_sizes={g: groups.count(g) for g in sorted(set(groups))},
        seconds=seconds,
    )


def format_table(res: ZeroShotResult, title: str, per_class: bool = False) -> str:
    systems = [s for s in SYSTEMS if s in res.metrics]
    head = f"| {title} ({res.clips} clips, {len(res.classes)} classes) | " + " | ".join(systems) + " |"
    rows = [head, "|---" * (len(systems) + 1) + "|"]
    for k in ("top1", "top5", "mAP"):
        rows.append(f"| {k} | " + " | ".join(f"{res.metrics[s][k]:.3f}" for s in systems) + " |")
    if len(res.group_sizes) > 1:
        for g, n in res.group_sizes.items():
            rows.append(f"| top1 {g} ({n}) | " + " | ".join(f"{res.per_group[s][g]:.3f}" for s in systems) + " |")
    if per_class:
        for c in res.classes:
            if c in res.per_class[systems[0]]:
                rows.append(f"| top1 {c} | " + " | ".join(f"{res.per_class[s][c]:.2f}" for s in systems) + " |")
    return "\n".join(rows)


def format_change(before: ZeroShotResult, after: ZeroShotResult, metric: str, title: str) -> str:
    """One table row: each system's `metric` in `after` minus `before`, in points (x100)."""
    systems = [s for s in SYSTEMS if s in before.metrics and s in after.metrics]
    return f"| {title} | " + " | ".join(f"{100 * (after.metrics[s][metric] - before.metrics[s][metric]):+.1f}"
                                      for s in systems) + " |"
