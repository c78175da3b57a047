"""Captions from templates over a clip's events: paraphrases, counts and order.

Every caption names every label of its clip with one of that class's phrases (labels.phrases),
e.g. "a dog barks twice while rain falls", "footsteps, then a door slamming".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .labels import CLASSES

COUNT_WORDS = {2: "twice", 3: "three times", 4: "four times", 5: "five times"}
NOISE_PHRASES = {"white": ("with static hiss", "over white noise", "with background noise"),
                 "pink": ("with background noise", "in a noisy recording", "over steady noise"),
                 "brown": ("over a low rumble", "with background noise", "in a noisy recording")}


@dataclass(frozen=True)
class LabelGroup:
    """All foreground events of one label: when it first starts, last ends and how often."""

    label: str
    onset_s: float
    offset_s: float
    count: int


def group_events(events: list[dict]) -> list[LabelGroup]:
    by: dict[str, list[dict]] = {}
    for e in events:
        by.setdefault(e["label"], []).append(e)
    groups = [LabelGroup(lab, min(e["onset_s"] for e in es), max(e["offset_s"] for e in es), len(es))
              for lab, es in by.items()]
    return sorted(groups, key=lambda g: g.onset_s)


def _name(rng: random.Random, label: str) -> str:
    return rng.choice(CLASSES[label].names)


def _clause(label: str) -> str:
    return CLASSES[label].clause


def _describe(rng: random.Random, g: LabelGroup, form: str = "any") -> str:
    """One label group as a phrase, with its count when countable. form: "clause" ("a dog
    barks"), "noun" ("a dog barking"; fits "the sound of ...") or "any"."""
    if form == "any":
        form = rng.choice(("clause", "noun"))
    head = _clause(g.label) if form == "clause" else _name(rng, g.label)
    if g.count > 1 and CLASSES[g.label].countable:
        word = COUNT_WORDS.get(g.count, "several times")
        return f"{head} {word}" if form == "clause" else f"{head}, {word}"
    if g.count > 1:
        return f"{head} repeatedly" if form == "clause" else f"{head} again and again"
    return head


def _join(rng: random.Random, groups: list[LabelGroup]) -> str:
    if len(groups) == 1:
        g = groups[0]
        return rng.choice((_describe(rng, g, "clause"), _describe(rng, g, "noun"),
                           f"the sound of {_describe(rng, g, 'noun')}",
                           f"{_describe(rng, g, 'noun')} can be heard"))
    parts = [_describe(rng, g) for g in groups]
    pairs = zip(groups, groups[1:], strict=False)
    sequential = all(a.offset_s <= b.onset_s + 0.05 for a, b in pairs)
    if sequential and rng.random() < 0.8:
        if len(parts) == 2:
            return rng.choice((f"{parts[0]}, then {parts[1]}", f"{parts[0]} followed by "
                               f"{_describe(rng, groups[1], 'noun')}", f"first {parts[0]}, then {parts[1]}"))
        return ", then ".join(parts[:-1]) + f" and finally {parts[-1]}"
    if len(parts) == 2:
        return rng.choice((f"{parts[0]} while {_describe(rng, groups[1], 'clause')}",
                           f"{parts[0]} and {parts[1]}",
                           f"{parts[0]} together with {_describe(rng, groups[1], 'noun')}",
                           f"{parts[0]} as {_describe(rng, groups[1], 'clause')}"))
    return ", ".join(parts[:-1]) + f" and {parts[-1]}"


def make_caption(rng: random.Random, events: list[dict], background: dict) -> str:
    """events: foreground events [{label, onset_s, offset_s}]; background: {"kind": "none" |
    "noise" | "ambience", "label"?: str, "color"?: str}."""
    text = _join(rng, group_events(events)) if events else ""
    if background.get("kind") == "ambience":
        b = background["label"]
        bg = rng.choice((f"while {_clause(b)}", f"over {_name(rng, b)}",
                         f"with {_name(rng, b)} in the background", f"against {_name(rng, b)}"))
        text = f"{text} {bg}" if text else rng.choice((_clause(b), _name(rng, b)))
    elif background.get("kind") == "noise" and rng.random() < 0.5:
        text = f"{text} {rng.choice(NOISE_PHRASES[background['color']])}"
    return text[0].upper() + text[1:]


def make_captions(rng: random.Random, events: list[dict], background: dict, n: int = 4) -> list[str]:
    """Up to n distinct captions for one clip (fewer when the templates run out of variety)."""
    out: list[str] = []
    for _ in range(4 * n):
        c = make_caption(rng, events, background)
        if c not in out:
            out.append(c)
        if len(out) == n:
            break
    return out
