"""Linear probe: how well do a model's features carry class information to unseen recordings?

    python -m encoder.probe --model models/slap-tiny.safetensors [--train-clips 500]

Fits one multi-label logistic layer on train-split features and reports top-1 on the train clips
and on the dev split (held out by source recording). A large train/dev gap means the features
identify recordings rather than sounds. The same probe on the corpus's YAMNet teacher scores
(encoder.data.teacher: mean and max over the clip's patches) runs in the same command, as the
reference for features that were learnt elsewhere.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

MAX_SECONDS = 10.0  # features of the first 10 s; longer clips are rare and slow on CPU


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, steps: int = 300, lr: float = 1e-2,
              weight_decay: float = 1e-4, seed: int = 0):
    """x: (N, D) features, y: (N, K) multi-hot -> a function (M, D) -> (M, K) logits (Adam, BCE)."""
    import torch

    torch.manual_seed(seed)
    x = torch.as_tensor(x_train, dtype=torch.float32)
    y = torch.as_tensor(y_train, dtype=torch.float32)
    layer = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.Adam(layer.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def predict(feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return layer(torch.as_tensor(feats, dtype=torch.float32)).numpy()

    return predict


def probe(features_train, y_train, features_dev, y_dev) -> dict[str, float]:
    from encoder.evaluate import classification_metrics

    predict = fit_probe(features_train, y_train)
    return {"train_top1": classification_metrics(predict(features_train), y_train)["top1"],
            "dev_top1": classification_metrics(predict(features_dev), y_dev)["top1"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m encoder.probe", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/slap-tiny.safetensors")
    p.add_argument("--corpus", default="cache/corpus")
    p.add_argument("--cache-dir", default="cache")
    p.add_argument("--train-clips", type=int, default=500)
    p.add_argument("--dev-clips", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    from encoder.data.dataset import Corpus
    from encoder.data.teacher import TeacherScores
    from encoder.evaluate import dev_clips, encode_clips, label_matrix
    from encoder.runtime import open_backend

    try:
        corpus = Corpus(a.corpus)
        backend = open_backend("onnx", a.model, a.cache_dir, a.threads)
    except (ValueError, FileNotFoundError) as e:
        print(f"encoder.probe: {e}", file=sys.stderr)
        return 2
    teacher = TeacherScores.open(corpus.path)
    rng = np.random.default_rng(0)
    train = corpus.clips("train")
    train = [train[i] for i in rng.choice(len(train), min(a.train_clips, len(train)), replace=False)]
    dev = dev_clips(corpus, a.dev_clips)

    def ours(clips) -> np.ndarray:
        enc = encode_clips(backend, [corpus.audio(c)[: int(MAX_SECONDS * 16000)] for c in clips])
        return np.stack([np.concatenate([g, cols.mean(0)]) for g, cols in enc])

    def yamnet(clips) -> np.ndarray:
        rows = []
        for c in clips:
            s = teacher.patches(c.id)
            rows.append(np.concatenate([s.mean(0), s.max(0)]))
        return np.stack(rows)

    y_tr, y_dev = (label_matrix(c, corpus.labels).astype(np.float32) for c in (train, dev))
    print(f"linear probe, {len(train)} train -> {len(dev)} dev clips, {len(corpus.labels)} classes (top-1)")
    res = probe(ours(train), y_tr, ours(dev), y_dev)
    print(f"  {a.model}: train {res['train_top1']:.3f}  dev {res['dev_top1']:.3f}")
    if teacher is not None:
        res = probe(yamnet(train), y_tr, yamnet(dev), y_dev)
        print(f"  YAMNet teacher scores: train {res['train_top1']:.3f}  dev {res['dev_top1']:.3f}")
    else:
        print("  YAMNet teacher scores: none for this corpus (python main.py data teacher)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
