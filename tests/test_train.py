"""Training: schedules, frame labels, a 200-step overfit, and identical weights under DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from encoder.data.dataset import Event
from encoder.train import TrainConfig, ema_momentum_at, frame_labels, lr_at, train
from tests.tone_corpus import ToneCorpus

ROOT = Path(__file__).resolve().parents[1]


def test_lr_warms_up_then_decays_by_cosine():
    cfg = TrainConfig(steps=1000, warmup_steps=100, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(550, cfg) == pytest.approx(0.55e-3, rel=1e-3)
    assert lr_at(1000, cfg) == pytest.approx(1e-4)


def test_teacher_momentum_goes_from_0994_to_1():
    assert ema_momentum_at(0, 100, 0.994, 1.0) == pytest.approx(0.994)
    assert ema_momentum_at(100, 100, 0.994, 1.0) == pytest.approx(1.0)


def test_frame_labels_mark_the_columns_an_event_covers():
    y = frame_labels([Event("b", 0.5, 1.0)], {"a": 0, "b": 1}, 320, 16)
    assert y.shape == (20, 2)
    # crop starts at 0.16 s: the event spans 0.34..0.84 s of the crop -> columns 2..5
    assert np.flatnonzero(y[:, 1]).tolist() == [2, 3, 4, 5]
    assert not y[:, 0].any()


@pytest.mark.slow
def test_overfit_200_steps_drives_every_loss_term_down(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(model="slap-tiny", out=str(tmp_path), steps=200, batch_size=16, lr=1e-3, warmup_steps=20,
                      log_every=50, ckpt_every=1000, max_seconds=1.0, spec_freq_masks=0, spec_time_masks=0)
    hist = train(cfg, corpus=ToneCorpus(16))["history"]
    first = {k: np.mean([h[k] for h in hist[:10]]) for k in ("clap", "ssl", "caption", "frame")}
    last = {k: np.mean([h[k] for h in hist[-10:]]) for k in first}
    for k in first:
        assert last[k] < first[k], f"{k}: {first[k]:.3f} -> {last[k]:.3f}"
    assert last["caption"] < 0.5 * first["caption"]
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.slow
def test_ddp_ranks_hold_identical_weights_after_each_step(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(ROOT / "tests" / "ddp_train_worker.py"), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"digests-rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == len(rank1) == 3
    assert rank0 == rank1  # same weights on both ranks after every step
    assert len(set(rank0)) == 3  # and the weights did change each step


def test_cached_text_features_give_the_towers_embeddings():
    from encoder.text import TextConfig, TextTower
    from encoder.train import TextFeatureCache

    tower = TextTower(TextConfig(trainable_layers=0), embed_dim=16)
    assert tower.frozen_features
    texts = ["a dog barking", "glass breaking", "a dog barking"]
    with torch.no_grad():
        direct = tower(*tower.tokenize(texts))
        cached = tower.proj(TextFeatureCache(tower)(texts))
    assert torch.allclose(direct, cached, atol=1e-5)


def test_training_can_start_from_shipped_weights(tmp_path):
    from encoder.checkpoint import save_weights
    from encoder.slap import SLAP, get_config
    from encoder.train import init_from_weights

    torch.manual_seed(1)
    shipped = SLAP(get_config("slap-tiny"))
    path = save_weights(shipped, tmp_path / "m.safetensors", fp16=False)
    torch.manual_seed(2)
    fresh = SLAP(get_config("slap-tiny"))
    init_from_weights(fresh, str(path))
    for a, b in ((fresh.audio, shipped.audio), (fresh.teacher["audio"], shipped.audio)):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(fresh.text.proj.weight, shipped.text.proj.weight)


def test_the_training_state_beside_shipped_weights_carries_decoder_and_ssl_heads(tmp_path):
    """A new machine has no ckpt.pt: --init-from the shipped weights must not restart captioning
    and the SSL heads from scratch when their training state is committed beside them."""
    from encoder.checkpoint import save_training_state, save_weights, training_state_path
    from encoder.slap import SLAP, get_config
    from encoder.train import init_from_weights

    torch.manual_seed(1)
    run = SLAP(get_config("slap-tiny"))
    weights = save_weights(run, tmp_path / "m.safetensors")
    state = save_training_state(run, weights)
    assert state == tmp_path / "m.train.safetensors" == training_state_path(weights)
    assert state.stat().st_size < 20 * 2**20
    torch.manual_seed(2)
    fresh = SLAP(get_config("slap-tiny"))
    assert "training state from" in init_from_weights(fresh, str(weights))
    for a, b in ((fresh.decoder, run.decoder), (fresh.student_head, run.student_head),
                 (fresh.teacher["head"], run.teacher["head"])):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=q.abs().max().item() / 127 + 1e-3), "fp16, and int8 vocabulary rows"
    assert all(torch.equal(p, q) for p, q in zip(fresh.teacher["audio"].parameters(), fresh.audio.parameters()))

    torch.manual_seed(3)
    save_weights(SLAP(get_config("slap-tiny")), weights)  # other weights now under that name
    other = SLAP(get_config("slap-tiny"))
    decoder = [p.clone() for p in other.decoder.parameters()]
    assert "saved with other weights" in init_from_weights(other, str(weights))
    assert all(torch.equal(p, q) for p, q in zip(other.decoder.parameters(), decoder))
    state.unlink()
    assert "no training state" in init_from_weights(other, str(weights))


def test_loss_weight_overrides_parse_and_name_bad_terms():
    from encoder.train import parse_weights

    assert parse_weights("ssl=0, caption=0.5") == {"ssl": 0.0, "caption": 0.5}
    assert parse_weights("") == {}
    with pytest.raises(ValueError, match="TERM=NUMBER"):
        parse_weights("sssl=0")
    with pytest.raises(ValueError, match="not a number"):
        parse_weights("ssl=off")


def test_a_term_weighted_zero_is_not_computed():
    """The ablations (no SSL, no captioning) skip the term's compute, not just its weight."""
    from encoder.slap import SLAP, get_config
    from encoder.train import ClipSampler, collate

    torch.manual_seed(0)
    cfg = get_config("slap-tiny")
    cfg.loss_weights.ssl = cfg.loss_weights.caption = 0.0
    model = SLAP(cfg)
    tcfg = TrainConfig(batch_size=4, max_seconds=1.0)
    sampler = ClipSampler(ToneCorpus(4), "train", tcfg, 0)
    terms = model(collate(sampler.batch(4), model.text, sampler, tcfg))
    assert "ssl" not in terms and "caption" not in terms
    assert {"clap", "frame", "loss"} <= set(terms)


def test_training_can_continue_from_a_run_checkpoint(tmp_path):
    from encoder.checkpoint import save_training_checkpoint
    from encoder.slap import SLAP, get_config
    from encoder.train import init_from_weights

    torch.manual_seed(1)
    run = SLAP(get_config("slap-tiny"))
    state = {k: v for k, v in run.state_dict().items() if not k.startswith("distill_head.")}  # an older run
    save_training_checkpoint(tmp_path / "ckpt.pt", {"model": state, "config": run.cfg.to_dict()})
    torch.manual_seed(2)
    fresh = SLAP(get_config("slap-tiny"))
    head = fresh.distill_head.weight.clone()
    init_from_weights(fresh, str(tmp_path / "ckpt.pt"))
    for a, b in ((fresh.audio, run.audio), (fresh.decoder, run.decoder), (fresh.teacher["audio"], run.teacher["audio"])):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert torch.equal(fresh.distill_head.weight, head)  # a module the old run lacked keeps its init


def test_clip_term_scores_the_clip_embedding_against_crop_level_labels():
    """The zero-shot path (clip embedding vs short prompts) is trained with the frame loss's own
    scale and bias, on "the class sounds somewhere in the crop"."""
    from encoder.slap import SLAP, get_config
    from encoder.train import ClipSampler, collate

    torch.manual_seed(0)
    cfg = get_config("slap-tiny")
    assert cfg.loss_weights.clip > 0
    cfg.loss_weights.ssl = 0.0  # no masked clips: the student sees what the direct computation sees
    model = SLAP(cfg)
    tcfg = TrainConfig(batch_size=4, max_seconds=1.0)
    sampler = ClipSampler(ToneCorpus(4), "train", tcfg, 0)
    batch = collate(sampler.batch(4), model.text, sampler, tcfg)
    terms = model(batch)
    with torch.no_grad():
        out = model.audio.forward_packed(batch.mel, batch.lengths, None, model.cfg.row_tokens)
        prompts = model.text.proj(batch.prompt_feats) if batch.prompt_feats is not None else model.text(batch.prompt_ids, batch.prompt_mask)
        labels = batch.frame_labels[:, : out.columns.shape[1]].amax(1)
        logits = model.frame_loss.get_logits(out.global_emb[:, None], prompts)[:, 0]
        direct = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / len(labels)
    assert labels.sum() > 0
    assert terms["clip"].item() == pytest.approx(direct.item(), rel=1e-4)


def test_causal_views_train_the_streamed_path_with_the_same_terms():
    """With causal_fraction, a training view is encoded block-causally by a stream's hop grid (as
    the engine's incremental encoder sees it) and every term scores that output; dev views stay whole."""
    from encoder.slap import SLAP, get_config
    from encoder.train import ClipSampler, collate

    torch.manual_seed(0)
    cfg = get_config("slap-tiny")
    cfg.loss_weights.ssl = 0.0
    model = SLAP(cfg)
    tcfg = TrainConfig(batch_size=4, max_seconds=2.0, causal_fraction=1.0)
    sampler = ClipSampler(ToneCorpus(4), "train", tcfg, 0)
    batch = collate(sampler.batch(4), model.text, sampler, tcfg)
    assert batch.column_hop is not None and (batch.column_hop.amax(1) > 0).all()
    terms = model(batch)
    with torch.no_grad():
        prompts = model.text(batch.prompt_ids, batch.prompt_mask)
        labels = batch.frame_labels.amax(1)

        def clip_term(hops):
            out = model.audio.forward_packed(batch.mel, batch.lengths, None, model.cfg.row_tokens, hops)
            logits = model.frame_loss.get_logits(out.global_emb[:, None], prompts)[:, 0]
            return (torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / len(labels)).item()

    assert terms["clip"].item() == pytest.approx(clip_term(batch.column_hop), rel=1e-4)
    assert clip_term(None) != pytest.approx(clip_term(batch.column_hop), rel=1e-4)
    assert collate(sampler.batch(4), model.text, sampler, tcfg, augment=False).column_hop is None


def test_perturbed_crops_keep_labels_and_teacher_on_the_stretched_clock():
    from encoder.train import perturb, stretch_time

    mel = np.random.default_rng(0).random((64, 500)).astype(np.float32)
    assert np.array_equal(stretch_time(mel, 1.0), mel)
    assert stretch_time(mel, 1.25).shape == (64, 400)  # 5 s played 1.25x faster lasts 4 s
    out, rate = perturb(mel, TrainConfig(stretch=0.2), np.random.default_rng(1))
    assert 1 / 1.2 <= rate <= 1.2 and out.shape == (64, int(500 / rate))
    # an event at 1.0-2.0 s of a clip sped up 2x lies at 0.5-1.0 s: columns 3..6 of the result
    y = frame_labels([Event("a", 1.0 / 2.0, 2.0 / 2.0)], {"a": 0}, 250, 0)
    assert np.flatnonzero(y[:, 0]).tolist() == [3, 4, 5, 6]


def test_dev_crops_are_not_perturbed():
    from encoder.train import ClipSampler

    corpus = ToneCorpus(4)
    assert ClipSampler(corpus, "train", TrainConfig(), 0).perturb
    assert not ClipSampler(corpus, "dev", TrainConfig(), 0).perturb


# --- online distillation through the text space ---------------------------------------------

needs_teachers = pytest.mark.skipif(not (ROOT.parent / "shared" / "teachers" / "efficientat_mn04_as.safetensors").is_file()
                                    and not os.environ.get("SLAP_TEACHERS_DIR"), reason="../shared/teachers absent")


@needs_teachers
def test_the_teacher_labels_the_exact_view_the_student_sees():
    from encoder.frontend import log_mel
    from encoder.online_teacher import OnlineTeacher, prompt_vocabulary
    from encoder.slap import SLAP, get_config
    from encoder.train import ClipSampler, TextFeatureCache, collate

    corpus = ToneCorpus(6)
    tcfg = TrainConfig(online_teacher="mn04", max_seconds=2.0, distill_prompts=16, distill_positives=8)
    sampler = ClipSampler(corpus, "train", tcfg, 0)
    examples = sampler.batch(3)
    for mel, _, _, stored, wave in examples:
        assert stored is None and np.array_equal(mel, log_mel(wave))  # the mel is the perturbed waveform's
        assert len(wave) <= 2.0 * 16000 and len(wave) % 2560 == 0
    vocab = prompt_vocabulary(["low_tone", "clicks"])
    assert "the sound of clicks" in vocab and "dog" in vocab and "the sound of bark" in vocab
    teacher = OnlineTeacher("mn04", vocab)
    model = SLAP(get_config("slap-tiny"))
    batch = collate(examples, model.text, sampler, tcfg, features=TextFeatureCache(model.text), online=teacher)
    C = batch.mel.shape[-1] // 16
    assert batch.distill_clip.shape == (3, 16) and batch.distill_columns.shape == (3, C, 16)
    assert batch.distill_prompt_feats.shape == (16, 384)
    # the targets are the teacher's mapped scores of these very waveforms; the positives lead
    clip, _ = teacher.label([ex[4] for ex in examples], [len(ex[4]) // 2560 for ex in examples])
    top = np.sort(clip.max(0))[::-1][:8]
    assert np.allclose(np.sort(batch.distill_clip.numpy().max(0))[::-1][:8], top, atol=1e-6)
    assert 0.0 <= float(batch.distill_columns.min()) and float(batch.distill_columns.max()) <= 1.0


@needs_teachers
def test_text_distillation_trains_the_matchers_path(tmp_path):
    """The term acts on the calibrated cosine of the global embedding and the columns against the
    text tower's prompt embeddings: the path the engine scores with, not a training-only head."""
    cfg = TrainConfig(out=str(tmp_path), steps=3, batch_size=4, max_seconds=2.0, warmup_steps=1, log_every=1,
                      ckpt_every=100, online_teacher="mn04", weights="ssl=0,caption=0", distill_prompts=16)
    hist = train(cfg, corpus=ToneCorpus(8))["history"]
    assert all(np.isfinite(h["text_distill"]) and h["text_distill"] > 0 for h in hist)
    assert "distill" not in hist[0]  # the separate head is not used


def test_an_unknown_online_teacher_is_one_line(tmp_path):
    from encoder.online_teacher import OnlineTeacher

    with pytest.raises(ValueError, match="expected mn04, yamnet or mn04\\+yamnet, got 'clap'"):
        OnlineTeacher("clap", ["dog"])


@needs_teachers
def test_unlabelled_audio_is_named_by_the_teachers_and_skips_the_frame_terms():
    from encoder.online_teacher import OnlineTeacher, prompt_vocabulary
    from encoder.slap import SLAP, get_config
    from encoder.train import ClipSampler, TextFeatureCache, collate

    corpus = ToneCorpus(6)
    for c in corpus.clips("train"):
        c.captions, c.labels, c.events = [], [], []
    tcfg = TrainConfig(online_teacher="mn04", max_seconds=2.0, distill_prompts=16)
    sampler = ClipSampler(corpus, "train", tcfg, 0)
    assert len(sampler.clips) == len(corpus.clips("train"))  # kept: the teacher labels them
    examples = sampler.batch(3)
    assert all(ex[1] == "" and np.isnan(ex[2]).all() for ex in examples)
    teacher = OnlineTeacher("mn04", prompt_vocabulary([]))
    model = SLAP(get_config("slap-tiny"))
    batch = collate(examples, model.text, sampler, tcfg, features=TextFeatureCache(model.text), online=teacher)
    assert batch.labelled is not None and not batch.labelled.any()
    clip, _ = teacher.label([ex[4] for ex in examples], [len(ex[4]) // 2560 for ex in examples])
    named = [teacher.vocabulary[int(k)] for k in clip.argmax(1)]
    feats = TextFeatureCache(model.text)(named)
    assert torch.allclose(batch.text_feats, feats, atol=1e-4)  # the captions are the teachers' top prompts
    terms = model(batch)
    assert terms["frame"].item() == 0.0 and torch.isfinite(terms["loss"])


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Steps logged after the checkpoint a run resumes from were lost with it: they are dropped
    from log.jsonl, and the resumed run logs them afresh."""
    from encoder.checkpoint import open_run_log

    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(10, 60, 10)))
    with open_run_log(path, 30) as log:  # the checkpoint was at step 30; the run had reached 50
        log.write(json.dumps({"step": 40, "loss": 0.5}) + "\n")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40] and rows[-1]["loss"] == 0.5
    with open_run_log(tmp_path / "new.jsonl", 0) as log:  # a first run: a new file
        log.write("{}\n")
