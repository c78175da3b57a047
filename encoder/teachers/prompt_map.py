"""Closed-vocabulary scores -> open-vocabulary prompt scores: the one place an AudioSet tagger's
class probabilities become a score per plain-language prompt.

    score(prompt) = sum_k softmax_k(cos(prompt, name_k) / tau) * p_k

cos is the all-MiniLM-L6-v2 sentence similarity between the prompt and each class's display name
(the text tower's frozen BERT, not our learned projection, so the mapping does not move as our
model trains). tau = 0.05 is the temperature `../shared/teachers/README.md` measured the teachers
with: at MiniLM's cosine spread (~0.2-0.9 between related and unrelated names) it puts most of the
weight on the two or three nearest names, so "the sound of a dog" reads Dog, Bark and Bow-wow,
while a hard argmax would read only one of them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

TAU = 0.05


@lru_cache(maxsize=4)
def _tower():
    from encoder.text import TextConfig, TextTower

    return TextTower(TextConfig(), embed_dim=8)  # only the frozen MiniLM is used; the projection is not


def sentence_embeddings(texts: list[str] | tuple[str, ...]) -> np.ndarray:
    """(N,) texts -> (N, 384) L2-normalised MiniLM sentence embeddings (batched, no grad)."""
    import torch

    tower = _tower()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 256):
            out.append(tower.sentence_embedding(*tower.tokenize(list(texts[i:i + 256]))).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)


@lru_cache(maxsize=8)
def _name_embeddings(names: tuple[str, ...]) -> np.ndarray:
    return sentence_embeddings(names)


class PromptMap:
    """Maps (B, K) class probabilities over `class_names` to (B, P) prompt scores.

    weights: (P, K), each row sums to 1, so a prompt's score is a probability-weighted mean of
    its nearest classes and stays in [0, 1]."""

    def __init__(self, class_names: tuple[str, ...], prompts: list[str], tau: float = TAU) -> None:
        if tau <= 0:
            raise ValueError(f"PromptMap: tau must be > 0, got {tau}")
        self.class_names, self.prompts, self.tau = tuple(class_names), list(prompts), tau
        sim = sentence_embeddings(self.prompts) @ _name_embeddings(self.class_names).T  # (P, K)
        z = sim / tau
        z -= z.max(axis=1, keepdims=True)
        w = np.exp(z)
        self.weights = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """probs: (..., K) -> (..., P). NaN marks a class the tagger does not have (YAMNet lacks six
        of AudioSet's 527): the weights are renormalised over the classes it has."""
        probs = np.asarray(probs, np.float32)
        known = ~np.isnan(probs)
        if known.all():
            return probs @ self.weights.T
        mass = known.astype(np.float32) @ self.weights.T
        return (np.where(known, probs, 0.0) @ self.weights.T) / np.maximum(mass, 1e-12)

    def nearest(self, prompt_index: int, k: int = 3) -> list[tuple[str, float]]:
        """The k class names carrying most of a prompt's weight (to read what a prompt means)."""
        row = self.weights[prompt_index]
        return [(self.class_names[i], float(row[i])) for i in np.argsort(-row)[:k]]
