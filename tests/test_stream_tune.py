"""The streaming fine-tune (encoder/stream_tune.py): the block-causal encoder learns to say what the
whole-window encoder says, the whole-window path stays where it was, only the audio encoder moves,
and a run resumes from its checkpoint. The model is the committed slap-tiny v2-wip (a trained model:
random weights hardly use right context, so they have little to learn here); the data the in-memory
tone corpus (numpy-made sounds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from encoder.checkpoint import inference_state, load_model
from encoder.stream_tune import TuneConfig, parse_args, ranking_kl, tune
from tests.tone_corpus import ToneCorpus

START = Path(__file__).parents[1] / "models" / "slap-tiny-v2-wip.safetensors"


@pytest.fixture(scope="module")
def start_weights():
    return START


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_the_causal_path_comes_to_follow_the_whole_window_and_the_rest_stays(start_weights, tmp_path):
    cfg = TuneConfig(init_from=str(start_weights), out=str(tmp_path / "run"), steps=12, batch_size=8, lr=3e-4,
                     warmup_steps=2, max_seconds=3.0, log_every=2, ckpt_every=12, dev_clips=4)
    summary = tune(cfg, corpus=ToneCorpus(16))
    log = rows(tmp_path / "run")
    train = [r for r in log if "stream" in r]
    dev = [r for r in log if "dev_cos_global" in r]  # fixed views, the causal path against the whole window
    assert dev[-1]["dev_cos_global"] > dev[0]["dev_cos_global"]
    assert dev[-1]["dev_cos_columns"] > dev[0]["dev_cos_columns"]
    assert 0 <= dev[-1]["dev_same_top1"] <= 1
    # the whole-window path stays nearer the starting weights than the causal path ever was
    assert np.mean([r["anchor"] for r in train]) < np.mean([r["stream"] for r in train])
    start, tuned = load_model(start_weights), load_model(summary["weights"])
    assert not torch.equal(start.audio.blocks[0].attn.qkv.weight, tuned.audio.blocks[0].attn.qkv.weight)
    kept, tuned_state = inference_state(start), inference_state(tuned)
    assert set(kept) == set(tuned_state)
    for name, p in kept.items():
        if not name.startswith("audio."):  # text tower, calibration: untouched
            torch.testing.assert_close(p, tuned_state[name])


def test_a_run_resumes_from_its_checkpoint(start_weights, tmp_path):
    cfg = TuneConfig(init_from=str(start_weights), out=str(tmp_path / "run"), steps=4, batch_size=4,
                     max_seconds=2.0, log_every=2, ckpt_every=2, dev_clips=2)
    tune(cfg, corpus=ToneCorpus(8))
    cfg.steps = 6
    tune(cfg, corpus=ToneCorpus(8))
    steps = [r["step"] for r in rows(tmp_path / "run") if "stream" in r]
    assert steps == [2, 4, 6]  # 5 and 6 after the resume, no step twice


def test_the_ranking_term_is_zero_for_the_same_ranking_and_grows_as_the_ranking_moves():
    prompts = torch.nn.functional.normalize(torch.randn(50, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    r = prompts[3] + 0.1 * prompts[7]  # nearest prompt 3, then 7
    assert ranking_kl(r, r, prompts, 19.0).abs() < 1e-6
    assert ranking_kl(2.5 * r, r, prompts, 19.0).abs() < 1e-6  # a scaled embedding ranks alike
    near, far = r + 0.05 * prompts[9], r + 0.5 * prompts[9]
    assert 0 < ranking_kl(near, r, prompts, 19.0) < ranking_kl(far, r, prompts, 19.0)


def test_bad_lengths_are_one_line(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--min-seconds", "9", "--max-seconds", "6"])
    assert "--min-seconds: expected 0 < min <= --max-seconds (6.0), got 9.0" in capsys.readouterr().err
