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


def _describe(rng: random.Random, g: LabelGroup, clause: bool = False) -> str:
    """One label group as a phrase (a clause when `clause`), with its count when countable."""
    if g.count > 1 and CLASSES[g.label].countable:
        word = COUNT_WORDS.get(g.count, "several times")
        if clause:
            return f"{_clause(g.label)} {word}"
        return rng.choice((f"{_clause(g.label)} {word}", f"{_name(rng, g.label)}, {word}"))
    if g.count > 1:
        if clause:
            return f"{_clause(g.label)} repeatedly"
        return rng.choice((f"{_clause(g.label)} repeatedly", f"{_name(rng, g.label)} again and again"))
    return _clause(g.label) if clause else rng.choice((_clause(g.label), _name(rng, g.label)))


def _join(rng: random.Random, groups: list[LabelGroup]) -> str:
    if len(groups) == 1:
        p = _describe(rng, groups[0])
        return rng.choice((p, p, f"the sound of {_describe(rng, groups[0])}",
                           f"{_describe(rng, groups[0])} can be heard"))
    parts = [_describe(rng, g) for g in groups]
    pairs = zip(groups, groups[1:], strict=False)
    sequential = all(a.offset_s <= b.onset_s + 0.05 for a, b in pairs)
    if sequential and rng.random() < 0.8:
        if len(parts) == 2:
            return rng.choice((f"{parts[0]}, then {parts[1]}", f"{parts[0]} followed by {parts[1]}",
                               f"first {parts[0]}, then {parts[1]}"))
        return ", then ".join(parts[:-1]) + f" and finally {parts[-1]}"
    if len(parts) == 2:
        return rng.choice((f"{parts[0]} while {_describe(rng, groups[1], clause=True)}",
                           f"{parts[0]} and {parts[1]}", f"{parts[0]} together with {parts[1]}",
                           f"{parts[0]} as {_describe(rng, groups[1], clause=True)}"))
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
