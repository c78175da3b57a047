"""Run by test_train under torchrun: 3 DDP steps; each rank writes a digest of its weights per step."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from encoder.train import TrainConfig, train
from tests.tone_corpus import ToneCorpus


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().numpy().tobytes())
    return h.hexdigest()


def main(out: str) -> None:
    torch.set_num_threads(1)
    digests: list[str] = []
    cfg = TrainConfig(out=out, steps=3, batch_size=4, warmup_steps=1, ckpt_every=100, log_every=1, max_seconds=2.0)
    train(cfg, corpus=ToneCorpus(8), on_step=lambda step, model: digests.append(digest(model)))
    Path(out, f"digests-rank{os.environ['RANK']}.json").write_text(json.dumps(digests))


if __name__ == "__main__":
    main(sys.argv[1])
