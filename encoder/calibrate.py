"""Post-hoc score calibration (Platt scaling) of the frame-level scores.

The frame loss learns `score = sigmoid(scale * cos + bias)` jointly with the encoder, but two
scalars move slowly at the encoder's learning rate, so a short run ends with scores whose 0.5
does not mean "present". This fits the two scalars by logistic regression on (column, prompt)
pairs of the **train** split, with the encoder frozen and positives weighted to equal priors
(see `fit_platt`), and writes them back into the weights.

    python -m encoder.calibrate --model runs/slap-tiny/model.safetensors --corpus cache/corpus --out F
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

from encoder.checkpoint import load_model, save_weights
from encoder.frontend import FRAMES_PER_SECOND, log_mel
from encoder.train import frame_labels


@torch.no_grad()
def collect_pairs(model, corpus, split: str, max_clips: int, max_seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """cos(column, class prompt) and 0/1 labels over every (valid column, class) of up to max_clips clips."""
    labels = corpus.labels
    index = {lab: i for i, lab in enumerate(labels)}
    prompts = [corpus.names(lab)[0] for lab in labels]
    p = F.normalize(model.text(*model.text.tokenize(prompts)), dim=-1)  # (K, E)
    clips = [c for c in corpus.clips(split) if c.labels]  # an unlabelled clip's zeros mean "unknown", not "absent"
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(clips), size=min(max_clips, len(clips)), replace=False)
    cos_all, y_all = [], []
    max_frames = int(max_seconds * FRAMES_PER_SECOND)
    for i in chosen:
        clip = clips[int(i)]
        mel = log_mel(corpus.audio(clip))[:, :max_frames]
        if mel.shape[1] < 16:
            continue
        out = model.audio(torch.from_numpy(mel)[None], torch.tensor([mel.shape[1]]))
        cols = F.normalize(out.columns[0][out.column_valid[0]], dim=-1)  # (C, E)
        y = frame_labels(clip.events, index, mel.shape[1], 0)[: cols.shape[0]]
        cos_all.append((cols @ p.T).numpy().ravel())
        y_all.append(y.ravel())
    return np.concatenate(cos_all), np.concatenate(y_all)


def fit_platt(cos: np.ndarray, y: np.ndarray, steps: int = 200, balanced: bool = False) -> tuple[float, float]:
    """(scale, bias) minimising the logistic loss of sigmoid(scale * cos + bias) against y.

    balanced: weight positives by n_neg / n_pos, i.e. fit under equal priors. The corpus prior
    (one class in ~100 sounding in a column) would put almost every score near 0; with equal
    priors a score of 0.5 means the evidence for and against the prompt is even, which is what a
    detector threshold of 0.5 should mean whatever the number of prompts."""
    x, t = torch.from_numpy(cos).double(), torch.from_numpy(y).double()
    n_pos = max(float(y.sum()), 1.0)
    pos_weight = torch.tensor((len(y) - n_pos) / n_pos if balanced else 1.0, dtype=torch.float64)
    log_scale = torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-5.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_scale, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(log_scale.exp() * x + bias, t, pos_weight=pos_weight)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_scale.detach().exp()), float(bias.detach())


def main(argv: list[str] | None = None) -> int:
    from encoder.data.dataset import Corpus

    ap = argparse.ArgumentParser(prog="python -m encoder.calibrate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", default="cache/corpus")
    ap.add_argument("--out", required=True, help="calibrated weights file")
    ap.add_argument("--max-clips", type=int, default=300)
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    model = load_model(args.model)
    cos, y = collect_pairs(model, Corpus(args.corpus), "train", args.max_clips, args.max_seconds, args.seed)
    before = (model.frame_loss.log_scale.exp().item(), model.frame_loss.bias.item())
    scale, bias = fit_platt(cos, y, balanced=True)
    with torch.no_grad():
        model.frame_loss.log_scale.fill_(math.log(scale))
        model.frame_loss.bias.fill_(bias)
    save_weights(model, args.out, extra={"calibration": f"platt on {len(y)} train pairs"})
    pos, neg = cos[y > 0], cos[y == 0]
    print(f"{len(y)} pairs ({int(y.sum())} positive): cos pos {pos.mean():.3f} neg {neg.mean():.3f}; "
          f"scale/bias {before[0]:.2f}/{before[1]:.2f} -> {scale:.2f}/{bias:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
