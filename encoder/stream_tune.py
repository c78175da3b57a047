"""Streaming fine-tune: teach the block-causal (hop-by-hop) encoder what the whole-window encoder says.

The engine encodes each 0.5 s hop's new columns against cached keys and values (encoder/incremental.py):
a cached token never saw the audio after its own hop. A model trained on whole crops only pays for
that twice: the newest columns, the ones the detector scores, lack right context, and the global
embedding pools tokens that each lacked it (clip-set top-1 1.9 points below the whole-clip pass for
slap-tiny v2-wip at step 880). This fine-tune distils the model into itself: a frozen copy of the starting
weights, run over the whole view, is the target of the same view run block-causally by hop (any
phase of the hop grid, as in any stretch of a live stream), so both paths of the tuned model score a
view alike; the whole-window path is held to the frozen copy too, so the clip-level scores
(`main.py tag --scores`) and the text space it was trained into stay where they were.

    python main.py stream-tune --init-from models/slap-tiny-v2-wip.safetensors --corpus cache/corpus-v2 \\
        --out runs/stream-tune          # 300 steps, views up to 6 s; --score-weight 0: the cosines only

Measured (docs/capacity.md, "The streamed global embedding"): 300 steps on 2 CPU cores did not
close the streamed clip-set gap, with the cosine terms alone or with the ranking term; the shipped
weights are not tuned. Kept as the tool for a longer run, and for its spec: the causal path is the
engine's (tests/test_streamed.py).

Per view (after the robustness chain of encoder.data.augment, unlabelled clips included: no label is
read), with r the frozen whole-window output, s the student's, and P prompts (the corpus's class
names and the AudioSet names, plain and as "the sound of ..."; text tower, unit norm):
    follow(s, r) = (1 - cos(s.global, r.global)) + mean over columns (1 - cos(s.col, r.col))
                 + score_weight * [KL(r || s) of the global's softmax over P at the clip logit scale
                                   + mean over columns of the same at the frame scale]
    loss = follow(s_causal, r) + anchor_weight * follow(s_whole, r)
The cosine alone is a weak hold on what the matcher reads: the embeddings of different sounds are
close in cosine (v2-wip scores prompts at 14-17 x cosine), so a 0.99 cosine can still reorder them;
the KL term asks for the same ranking of prompts.
Only the audio encoder learns (the text tower and the calibration are left as they were). Resumes
from `<out>/ckpt.pt`; writes `<out>/model.safetensors` (the inference weights, fp16) and
`<out>/log.jsonl`, whose `dev_cos` rows measure, on the corpus dev split, how closely the causal
global embedding follows the whole-window one (and, with `dev_same_top1`, how often both rank the
same prompt first).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from encoder.checkpoint import load_model, open_run_log, save_training_checkpoint, save_weights
from encoder.frontend import COLUMN_SAMPLES, PATCH_FRAMES, log_mel, pad_to_columns
from encoder.model import AudioEncoder, AudioOutput
from encoder.streamed import column_hops, grid_ends, hop_grid
from encoder.train import ClipSampler, TrainConfig, configure_optimizer, lr_at


@dataclass
class TuneConfig:
    init_from: str = "models/slap-tiny-v2-wip.safetensors"
    corpus: str = "cache/corpus-v2"
    out: str = "runs/stream-tune"
    steps: int = 300  # what was measured (docs/capacity.md)
    batch_size: int = 32
    lr: float = 1e-4  # a fine-tune of trained weights: a fifth of the training rate
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    max_seconds: float = 6.0  # longest view, as the main training's crops
    min_seconds: float = 1.0  # half the views are cut to a length drawn in [min, their own]
    anchor_weight: float = 1.0
    score_weight: float = 1.0  # the prompt-ranking (KL) part of `follow`; 0 = cosines only
    seed: int = 0
    threads: int = 0
    log_every: int = 10
    ckpt_every: int = 50
    dev_clips: int = 200  # corpus dev clips for the dev_cos measurement (start, every ckpt, end)


def view_batch(sampler: ClipSampler, cfg: TuneConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """B augmented views -> mel (B, 64, T) zero-padded, lengths (B,) frames (whole columns)."""
    mels = []
    for clip in (sampler.clips[i] for i in rng.choice(len(sampler.clips), size=cfg.batch_size)):
        audio = sampler.wave_example(clip)[4]
        if rng.random() < 0.5:  # short views too: a 2 s door slam is a clip of its own
            lo = max(1, int(cfg.min_seconds * 16000 / COLUMN_SAMPLES))
            n = int(rng.integers(lo, max(lo, len(audio) // COLUMN_SAMPLES) + 1)) * COLUMN_SAMPLES
            start = int(rng.integers(0, max(len(audio) - n, 0) // COLUMN_SAMPLES + 1)) * COLUMN_SAMPLES
            audio = pad_to_columns(audio[start : start + n])
        mels.append(log_mel(audio))
    lengths = [m.shape[1] // PATCH_FRAMES * PATCH_FRAMES for m in mels]
    mel = np.zeros((len(mels), mels[0].shape[0], max(lengths)), np.float32)
    for i, (m, n) in enumerate(zip(mels, lengths)):
        mel[i, :, :n] = m[:, :n]
    return torch.from_numpy(mel), torch.tensor(lengths)


@dataclass(frozen=True)
class PromptSpace:
    """The prompts the matcher would rank, and the logit scales it ranks them at."""

    prompts: torch.Tensor  # (P, E) unit text embeddings
    clip_scale: float  # exp(clap_logit_scale): the global embedding's logits
    frame_scale: float  # exp(frame_log_scale): the columns'


def ranking_kl(s: torch.Tensor, r: torch.Tensor, prompts: torch.Tensor, scale: float) -> torch.Tensor:
    """KL(softmax(scale r.p) || softmax(scale s.p)) over the prompts, for (..., E) -> (...)."""
    ls = scale * F.normalize(s, dim=-1) @ prompts.T
    lr = scale * F.normalize(r, dim=-1) @ prompts.T
    return (F.softmax(lr, -1) * (F.log_softmax(lr, -1) - F.log_softmax(ls, -1))).sum(-1)


def follow_loss(s: AudioOutput, r: AudioOutput, space: PromptSpace | None = None, score_weight: float = 0.0) -> torch.Tensor:
    """How far s is from r (module doc): (1 - cos) of the global embeddings + the mean (1 - cos)
    over valid columns, + score_weight x the same two as prompt-ranking KLs; mean over the batch."""
    valid = r.column_valid.float()

    def columns_mean(x: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B,)
        return (x * valid).sum(1) / valid.sum(1).clamp(min=1)

    g = 1 - F.cosine_similarity(s.global_emb, r.global_emb, dim=-1)
    c = columns_mean(1 - F.cosine_similarity(s.columns, r.columns, dim=-1))
    loss = g + c
    if space is not None and score_weight:
        loss = loss + score_weight * (ranking_kl(s.global_emb, r.global_emb, space.prompts, space.clip_scale)
                                      + columns_mean(ranking_kl(s.columns, r.columns, space.prompts, space.frame_scale)))
    return loss.mean()


def prompt_space(model, corpus) -> PromptSpace:
    """The corpus's class names and the AudioSet names (encoder.online_teacher.prompt_vocabulary)
    through the model's text tower."""
    from encoder.online_teacher import prompt_vocabulary

    names = [n for lab in corpus.labels for n in corpus.names(lab)]
    vocab = prompt_vocabulary(names, templates=("{}", "the sound of {}"))
    with torch.no_grad():
        emb = torch.cat([model.text(*model.text.tokenize(vocab[i : i + 256])) for i in range(0, len(vocab), 256)])
    return PromptSpace(F.normalize(emb.float(), dim=-1), min(math.exp(model.clap_loss.logit_scale.item()), 100.0),
                       math.exp(model.frame_loss.log_scale.item()))


@torch.no_grad()
def dev_cos(audio: AudioEncoder, views: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
            space: PromptSpace | None = None) -> dict[str, float]:
    """The causal (phase-0 grid) against the whole-window pass on the dev views: mean cosine of the
    global embeddings and of the columns, and (with prompts) how often both rank the same prompt first."""
    was = audio.training
    audio.eval()
    g, c, same = [], [], []
    for mel, lengths, hops in views:
        whole, causal = audio(mel, lengths), audio(mel, lengths, column_hop=hops)
        g.append(F.cosine_similarity(whole.global_emb, causal.global_emb, dim=-1))
        valid = whole.column_valid
        c.append(F.cosine_similarity(whole.columns, causal.columns, dim=-1)[valid])
        if space is not None:
            top = [(F.normalize(o.global_emb, dim=-1) @ space.prompts.T).argmax(-1) for o in (whole, causal)]
            same.append((top[0] == top[1]).float())
    audio.train(was)
    row = {"dev_cos_global": round(float(torch.cat(g).mean()), 5), "dev_cos_columns": round(float(torch.cat(c).mean()), 5)}
    if same:
        row["dev_same_top1"] = round(float(torch.cat(same).mean()), 4)
    return row


def dev_views(corpus, n: int, max_seconds: float) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The first n dev clips (up to max_seconds each, from their start), one at a time, with their phase-0 hops."""
    out = []
    for clip in corpus.clips("dev")[:n]:
        audio = pad_to_columns(np.asarray(corpus.audio(clip), np.float32)[: int(max_seconds * 16000)])
        mel = log_mel(audio)
        cols = mel.shape[1] // PATCH_FRAMES
        out.append((torch.from_numpy(mel[None, :, : cols * PATCH_FRAMES]).contiguous(),
                    torch.tensor([cols * PATCH_FRAMES]), torch.from_numpy(column_hops(grid_ends(cols)))[None]))
    return out


def tune(cfg: TuneConfig, corpus=None) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if corpus is None:
        from encoder.data.dataset import Corpus

        corpus = Corpus(cfg.corpus)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(cfg.init_from)  # the whole SLAP, so its text tower and calibration are saved with it
    ref = copy.deepcopy(model.audio).eval().requires_grad_(False)  # the frozen target: the starting weights
    student = model.audio.train()
    # Only the audio encoder is optimised; requires_grad elsewhere stays as the model has it, since it
    # also says which text-tower weights the inference file keeps (encoder.checkpoint.inference_state).
    params = list(student.parameters())
    opt = configure_optimizer(student, cfg)  # and lr_at: the training's AdamW and schedule, on the fields they share
    step = 0
    ckpt_path = out / "ckpt.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        student.load_state_dict(ckpt["audio"])
        ref.load_state_dict(ckpt["ref"])
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        print(f"resumed from {ckpt_path} at step {step}", file=sys.stderr)
    (out / "tune_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    # The wave views of the online-teacher path (its crop, speed, gain and robustness chain), with
    # unlabelled clips kept: the target is our own model, so no label or teacher is read.
    sampler = ClipSampler(corpus, "train", TrainConfig(max_seconds=cfg.max_seconds, seed=cfg.seed,
                                                       online_teacher="self"), rank=0)
    rng = np.random.default_rng([cfg.seed, step])  # a resumed run does not replay its views
    sampler.rng = rng
    dev = dev_views(corpus, cfg.dev_clips, cfg.max_seconds)
    space = prompt_space(model, corpus)
    log = open_run_log(out / "log.jsonl", step)

    def write(row: dict) -> None:
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), file=sys.stderr, flush=True)

    if step == 0:
        write({"step": 0} | dev_cos(student, dev, space))
    t0, views = time.time(), 0
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        mel, lengths = view_batch(sampler, cfg, rng)
        hops = torch.from_numpy(hop_grid((lengths // PATCH_FRAMES).tolist(), rng))
        with torch.no_grad():
            r = ref(mel, lengths)
        stream = follow_loss(student(mel, lengths, column_hop=hops), r, space, cfg.score_weight)
        anchor = follow_loss(student(mel, lengths), r, space, cfg.score_weight) if cfg.anchor_weight else torch.zeros(())
        loss = stream + cfg.anchor_weight * anchor
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        step += 1
        views += len(lengths)
        if step % cfg.log_every == 0 or step == cfg.steps:
            write({"step": step, "loss": round(loss.item(), 5), "stream": round(stream.item(), 5),
                   "anchor": round(anchor.item(), 5), "lr": round(lr_at(step - 1, cfg), 7),
                   "grad_norm": round(float(gnorm), 3), "views_per_s": round(views / (time.time() - t0), 2)})
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save_training_checkpoint(ckpt_path, {"audio": student.state_dict(), "ref": ref.state_dict(),
                                                 "optimizer": opt.state_dict(), "step": step, "tune": asdict(cfg)})
            save_weights(model, out / "model.safetensors",
                         extra={"stream_tune_steps": step, "stream_tune_init": Path(cfg.init_from).name})
            write({"step": step} | dev_cos(student, dev, space))
    log.close()
    return {"steps": step, "wall_s": round(time.time() - t0, 1), "views_per_s": round(views / max(time.time() - t0, 1e-9), 2),
            "weights": str(out / "model.safetensors")}


def parse_args(argv: list[str] | None) -> TuneConfig:
    p = argparse.ArgumentParser(prog="main.py stream-tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TuneConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    cfg = TuneConfig(**vars(p.parse_args(argv)))
    if not 0 < cfg.min_seconds <= cfg.max_seconds:
        p.error(f"--min-seconds: expected 0 < min <= --max-seconds ({cfg.max_seconds}), got {cfg.min_seconds}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        summary = tune(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"main.py stream-tune: {e}".splitlines()[0], file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
