"""Single-stage SLAP training: contrastive + EMA-teacher masked prediction + captioning + frame loss.

One process:      python main.py train --corpus cache/corpus --out runs/tiny
Data parallel:    torchrun --nnodes N --nproc_per_node M -m encoder.train --corpus ... --out ...
                  (gloo on CPU, nccl on GPU; rank 0 logs and writes checkpoints)
Resumes from `<out>/ckpt.pt` when it exists, so a long run survives session ends.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from encoder.checkpoint import open_run_log, save_training_checkpoint, save_training_state, save_weights
from encoder.data.dataset import Event
from encoder.frontend import (
    COLUMN_SAMPLES,
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    LOG_SCALE,
    PATCH_FRAMES,
    log_mel,
    pad_to_columns,
)
from encoder.slap import SLAP, Batch, get_config
from encoder.streamed import hop_grid


@dataclass
class TrainConfig:
    model: str = "slap-tiny"
    corpus: str = "cache/corpus"
    out: str = "runs/slap-tiny"
    steps: int = 3000
    batch_size: int = 32  # per rank
    lr: float = 5e-4  # the paper: 1e-4 at batch 2048; small models at small batch take more
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200  # the paper: 2,000 of ~100k steps
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    max_seconds: float = 6.0  # random crop: CPU compute grows with length; eval sees whole clips
    n_prompts: int = 24  # class prompts per batch for the frame loss: the batch's classes + random negatives
    spec_freq_masks: int = 2
    spec_freq_width: int = 8  # mel bins
    spec_time_masks: int = 2
    spec_time_width: int = 40  # frames (0.4 s)
    # Perturbations that change a recording's fingerprint but not its class (train split only):
    # a few thousand source recordings are otherwise memorised rather than generalised from.
    stretch: float = 0.2  # speed factor in [1/(1+s), 1+s]; labels and teacher columns follow
    pitch_bins: int = 2  # shift the mel axis by up to this many bins (~1-2 semitones mid-band)
    eq_db: float = 6.0  # a smooth random tilt/ripple over the mel bands, up to +-eq_db
    gain_db: float = 10.0  # overall level, up to +-gain_db
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 100
    threads: int = 0  # torch intra-op threads per rank; 0 = leave torch's default
    # Start from shipped weights (e.g. models/slap-tiny.safetensors) when <out>/ckpt.pt is absent:
    # how a later session goes on training without the (large, uncommitted) optimizer checkpoint.
    init_from: str = ""
    # Loss-weight overrides over the model config's, e.g. "ssl=0,caption=0" (the ablations) or
    # "distill=1"; a term weighted 0 is skipped.
    weights: str = ""
    # Online distillation (encoder.online_teacher): "" = off, or mn04 | yamnet | mn04+yamnet. The
    # teachers label every training view as the student gets it; targets act in the text space.
    online_teacher: str = ""
    distill_prompts: int = 64  # vocabulary prompts per batch for the text_distill term
    distill_positives: int = 32  # of which the ones the teachers score highest on this batch
    # Waveform robustness chain on online views (encoder.data.augment: room, noise, gain and
    # clipping, 8 kHz band limit, mu-law, codecs), train split only; the teachers hear its output.
    robust_augment: bool = True
    # The share of training views the student encodes block-causally by the hop grid of a stream
    # (encoder.streamed.hop_grid), as the engine's incremental encoder does: it learns the streamed
    # view with all of its terms, beside the whole view. Train split only; 0 = every view whole.
    causal_fraction: float = 0.0


def parse_weights(spec: str) -> dict[str, float]:
    """"ssl=0,caption=0.5" -> {"ssl": 0.0, "caption": 0.5}; unknown terms are an error."""
    from encoder.slap import LossWeights

    known = {f.name for f in fields(LossWeights)}
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in known:
            raise ValueError(f"--weights: expected TERM=NUMBER with TERM in {sorted(known)}, got {part!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--weights: {part!r}: {value!r} is not a number") from None
    return out


# --- data ------------------------------------------------------------------------------


def frame_labels(events, label_index: dict[str, int], n_frames: int, offset_frames: int) -> np.ndarray:
    """(C, n_classes) {0,1}: class k sounds during 160 ms column c of the crop starting at offset_frames."""
    n_cols = n_frames // PATCH_FRAMES
    y = np.zeros((n_cols, len(label_index)), np.float32)
    for ev in events:  # objects with .label, .onset_s, .offset_s (encoder.data.dataset.Event)
        k = label_index.get(ev.label)
        if k is None:
            continue
        a = (ev.onset_s * FRAMES_PER_SECOND - offset_frames) / PATCH_FRAMES
        b = (ev.offset_s * FRAMES_PER_SECOND - offset_frames) / PATCH_FRAMES
        lo, hi = max(int(math.floor(a)), 0), min(int(math.ceil(b)), n_cols)
        if hi > lo:
            y[lo:hi, k] = 1.0
    return y


class ClipSampler:
    """Random crops of corpus clips as (log-mel, caption, frame labels, teacher column scores or
    None), seeded per rank."""

    def __init__(self, corpus, split: str, cfg: TrainConfig, rank: int, teacher=None):
        self.corpus = corpus
        self.teacher = teacher  # encoder.data.teacher.TeacherScores or None
        self.perturb = split == "train"
        self.clips = corpus.clips(split)
        if not cfg.online_teacher:  # unlabelled clips need a teacher to name them
            self.clips = [c for c in self.clips if c.captions]
        if not self.clips:
            raise ValueError(f"{corpus.path}: no clips in split {split!r}")
        self.labels = corpus.labels
        self.label_index = {lab: i for i, lab in enumerate(self.labels)}
        self.names = [corpus.names(lab) for lab in self.labels]  # prompts: a random name per batch
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed * 1000 + rank)
        self.online = bool(cfg.online_teacher)  # views cut and perturbed as waveforms, labelled in collate
        self.augmenter = None
        if self.online and self.perturb and cfg.robust_augment:
            from encoder.data.augment import AugmentConfig, Augmenter

            # views already end anywhere in a clip (random crops), so the chain's own crop is off
            self.augmenter = Augmenter(AugmentConfig(p_right_crop=0.0), seed=cfg.seed * 1000 + rank)

    def example(self, clip) -> tuple:
        """(log-mel, caption, frame labels, stored teacher columns or None, waveform view or None)."""
        if self.online:
            return self.wave_example(clip)
        audio = self.corpus.audio(clip)
        mel = log_mel(audio)
        rate = 1.0
        if self.perturb:
            mel, rate = perturb(mel, self.cfg, self.rng)
        max_frames = int(self.cfg.max_seconds * FRAMES_PER_SECOND)
        off = 0
        if mel.shape[1] > max_frames:
            off = int(self.rng.integers(0, (mel.shape[1] - max_frames) // PATCH_FRAMES + 1)) * PATCH_FRAMES
            mel = mel[:, off : off + max_frames]
        caption = clip.captions[int(self.rng.integers(len(clip.captions)))]
        teacher = None
        if self.teacher is not None:  # on the original clock: column c covers rate x as much audio
            teacher = self.teacher.column_targets(clip.id, off * rate / FRAMES_PER_SECOND, mel.shape[1] // PATCH_FRAMES,
                                                  rate * PATCH_FRAMES / FRAMES_PER_SECOND)
        events = clip.events if rate == 1.0 else [Event(e.label, e.onset_s / rate, e.offset_s / rate) for e in clip.events]
        return mel, caption, frame_labels(events, self.label_index, mel.shape[1], off), teacher, None

    def wave_example(self, clip) -> tuple:
        """A view cut and perturbed on the waveform (speed, gain), so the teacher can hear exactly
        what the student sees. The crop may end anywhere in the clip: columns near a view's right
        edge, scored without right context as the streaming engine scores them, are trained too."""
        import soxr

        audio = np.asarray(self.corpus.audio(clip), np.float32)
        rate = 1.0
        if self.perturb and self.cfg.stretch:
            rate = float(np.exp(self.rng.uniform(-np.log1p(self.cfg.stretch), np.log1p(self.cfg.stretch))))
            audio = soxr.resample(audio, 16000 * rate, 16000).astype(np.float32)  # plays `rate` times faster
        max_n = max(int(self.cfg.max_seconds * FRAMES_PER_SECOND) // PATCH_FRAMES, 1) * COLUMN_SAMPLES
        off = 0
        if len(audio) > max_n:
            off = int(self.rng.integers(0, (len(audio) - max_n) // COLUMN_SAMPLES + 1)) * COLUMN_SAMPLES
            audio = audio[off: off + max_n]
        audio = pad_to_columns(audio)
        audio = audio[: len(audio) // COLUMN_SAMPLES * COLUMN_SAMPLES]  # whole columns: the teacher hears no more than the student
        if self.perturb and self.cfg.gain_db:
            audio = np.clip(audio * np.float32(10 ** (self.rng.uniform(-self.cfg.gain_db, self.cfg.gain_db) / 20)), -1, 1)
        if self.augmenter is not None:
            audio, _ = self.augmenter(audio, noise=coloured_noise(len(audio), self.rng), rng=self.rng)
            audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
        mel = log_mel(audio)
        # an unlabelled clip gets "" here and the teachers' name for it in collate
        caption = clip.captions[int(self.rng.integers(len(clip.captions)))] if clip.captions else ""
        events = clip.events if rate == 1.0 else [Event(e.label, e.onset_s / rate, e.offset_s / rate) for e in clip.events]
        y = frame_labels(events, self.label_index, mel.shape[1], off // HOP_LENGTH)
        if not clip.labels:
            y[:] = np.nan  # unknown, not absent: the frame terms skip this view
        return mel, caption, y, None, audio

    def batch(self, size: int) -> list[tuple]:
        idx = self.rng.choice(len(self.clips), size=size, replace=len(self.clips) < size)
        return [self.example(self.clips[i]) for i in idx]


def coloured_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 unit-RMS noise with a 1/f^a spectrum, a in [0, 2] (white to brown): a
    background with no sound of its own, so the view's labels stay true."""
    spec = np.fft.rfft(rng.standard_normal(max(n, 2)))
    f = np.maximum(np.arange(len(spec)), 1.0)
    x = np.fft.irfft(spec / f ** (rng.uniform(0.0, 2.0) / 2), max(n, 2))[:n]
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


DB_PER_UNIT = 10.0 * LOG_SCALE  # the normalised log-mel moves 1 unit per 40 dB


def stretch_time(mel: np.ndarray, rate: float) -> np.ndarray:
    """(M, T) -> (M, floor(T / rate)): played `rate` times faster, by linear interpolation in time."""
    n = int(mel.shape[1] / rate)
    pos = np.minimum(np.arange(n) * rate, mel.shape[1] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, mel.shape[1] - 1)
    frac = (pos - lo).astype(np.float32)
    return mel[:, lo] * (1 - frac) + mel[:, hi] * frac


def perturb(mel: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Speed, mel-axis shift, smooth EQ and gain on a normalised log-mel (M, T).
    Returns (perturbed mel, speed rate): event times scale by 1 / rate."""
    rate = float(np.exp(rng.uniform(-np.log1p(cfg.stretch), np.log1p(cfg.stretch)))) if cfg.stretch else 1.0
    if rate != 1.0 and mel.shape[1] > 1:
        mel = stretch_time(mel, rate)
    k = int(rng.integers(-cfg.pitch_bins, cfg.pitch_bins + 1)) if cfg.pitch_bins else 0
    if k > 0:  # up: bands move to higher bins, the lowest bins repeat the old lowest
        mel = np.concatenate([np.repeat(mel[:1], k, 0), mel[:-k]])
    elif k < 0:
        mel = np.concatenate([mel[-k:], np.repeat(mel[-1:], -k, 0)])
    m = np.linspace(0.0, 1.0, mel.shape[0], dtype=np.float32)[:, None]
    curve = rng.uniform(-1, 1) * (m - 0.5) * 2 + rng.uniform(-0.5, 0.5) * np.cos(2 * np.pi * rng.uniform(1, 3) * m + rng.uniform(0, 6.3))
    shift = (cfg.eq_db * curve / 1.5 + rng.uniform(-cfg.gain_db, cfg.gain_db)) / DB_PER_UNIT
    return (mel + shift.astype(np.float32)).astype(np.float32), rate


def spec_augment(mel: np.ndarray, n_frames: int, cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """SpecAugment: zero (the normalised scale's mid-level) bands of mel bins and runs of frames."""
    mel = mel.copy()
    for _ in range(cfg.spec_freq_masks):
        w = int(rng.integers(0, cfg.spec_freq_width + 1))
        f0 = int(rng.integers(0, mel.shape[0] - w + 1))
        mel[f0 : f0 + w, :n_frames] = 0.0
    for _ in range(cfg.spec_time_masks):
        w = int(rng.integers(0, min(cfg.spec_time_width, max(n_frames // 5, 1)) + 1))
        t0 = int(rng.integers(0, max(n_frames - w, 0) + 1))
        mel[:, t0 : t0 + w] = 0.0
    return mel


class TextFeatureCache:
    """Pooled text features by string, for a tower frozen below its projection: captions and
    class names repeat across steps, so each is run through MiniLM once."""

    def __init__(self, tower):
        self.tower = tower
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            with torch.no_grad():
                feats = self.tower.pooled(*self.tower.tokenize(new))
            self.cache.update(zip(new, feats))
        return torch.stack([self.cache[t] for t in texts])


def online_targets(online, waves: list[np.ndarray], n_cols: list[int], C: int, tower, rng: np.random.Generator,
                   cfg: TrainConfig, features: TextFeatureCache | None) -> dict:
    """The teachers' prompt-mapped targets for this batch's views, on `cfg.distill_prompts` of the
    vocabulary: the `distill_positives` the teachers score highest anywhere in the batch (what the
    views hold) and random others (what they do not). "best_prompt": each view's top prompt."""
    clip, cols = online.label(waves, n_cols)
    V = clip.shape[1]
    pos = np.argsort(-clip.max(0))[: min(cfg.distill_positives, V)]
    rest = np.setdiff1d(np.arange(V), pos)
    neg = rng.permutation(rest)[: max(cfg.distill_prompts - len(pos), 0)]
    chosen = np.concatenate([pos, neg]).astype(int)
    texts = [online.vocabulary[k] for k in chosen]
    col_t = np.zeros((len(waves), C, len(chosen)), np.float32)
    for i, c in enumerate(cols):
        col_t[i, : len(c)] = c[:C][:, chosen]
    out = {"distill_clip": torch.from_numpy(clip[:, chosen].astype(np.float32)), "distill_columns": torch.from_numpy(col_t),
           "best_prompt": [online.vocabulary[int(k)] for k in clip.argmax(1)]}
    if features is not None:
        out["distill_prompt_feats"] = features(texts)
    else:
        out["distill_prompt_ids"], out["distill_prompt_mask"] = tower.tokenize(texts)
    return out


def collate(examples, tower, sampler: ClipSampler, cfg: TrainConfig, augment: bool = True,
            features: TextFeatureCache | None = None, online=None) -> Batch:
    """Pad to the longest crop (a whole number of columns); pick the batch's prompts; with an
    online teacher (encoder.online_teacher.OnlineTeacher), label the views' waveforms."""
    lengths = [ex[0].shape[1] // PATCH_FRAMES * PATCH_FRAMES for ex in examples]
    T = max(lengths)
    mel = np.zeros((len(examples), examples[0][0].shape[0], T), np.float32)
    for i, (m, *_) in enumerate(examples):
        m = m[:, : lengths[i]]
        mel[i, :, : lengths[i]] = spec_augment(m, lengths[i], cfg, sampler.rng) if augment else m
    distill, captions = {}, [ex[1] for ex in examples]
    if online is not None and all(ex[4] is not None for ex in examples):
        distill = online_targets(online, [ex[4] for ex in examples], [n // PATCH_FRAMES for n in lengths],
                                 T // PATCH_FRAMES, tower, sampler.rng, cfg, features)
        best = distill.pop("best_prompt")
        captions = [c or best[i] for i, c in enumerate(captions)]  # unlabelled audio: the teachers name it
    labelled = np.array([not np.isnan(ex[2]).any() for ex in examples])
    ids, mask = tower.tokenize(captions)
    present = sorted({int(k) for ex in examples if not np.isnan(ex[2]).any() for k in np.flatnonzero(ex[2].any(0))})
    others = [k for k in range(len(sampler.labels)) if k not in set(present)]
    n_neg = max(cfg.n_prompts - len(present), 0)
    chosen = present + [int(k) for k in sampler.rng.permutation(others)[:n_neg]]
    names = sampler.names
    prompt_texts = [names[k][int(sampler.rng.integers(len(names[k])))] for k in chosen]
    p_ids, p_mask = tower.tokenize(prompt_texts)
    C = T // PATCH_FRAMES
    labels = np.zeros((len(examples), C, len(chosen)), np.float32)
    for i, (_, _, y, *_) in enumerate(examples):
        labels[i, : y.shape[0]] = np.nan_to_num(y[:C][:, chosen])
    teacher_clip = teacher_cols = None
    if all(ex[3] is not None for ex in examples):
        K = examples[0][3].shape[1]
        cols = np.zeros((len(examples), C, K), np.float32)
        for i, ex in enumerate(examples):
            cols[i, : len(ex[3])] = ex[3][:C]
        teacher_cols = torch.from_numpy(cols)
        teacher_clip = torch.from_numpy(np.stack([ex[3].mean(0) for ex in examples]))  # the crop's mean
    return Batch(
        **distill,
        labelled=None if labelled.all() else torch.from_numpy(labelled),
        mel=torch.from_numpy(mel), lengths=torch.tensor(lengths), text_ids=ids, text_mask=mask,
        prompt_ids=p_ids, prompt_mask=p_mask, frame_labels=torch.from_numpy(labels),
        text_feats=features(captions) if features else None,
        prompt_feats=features(prompt_texts) if features else None,
        teacher_clip=teacher_clip, teacher_columns=teacher_cols,
        column_hop=torch.from_numpy(hop_grid([n // PATCH_FRAMES for n in lengths], sampler.rng, cfg.causal_fraction))
        if augment and cfg.causal_fraction > 0 else None,
    )


# --- schedules ---------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min((step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1), 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def ema_momentum_at(step: int, total: int, start: float, end: float) -> float:
    """Cosine from start to end over training (DINO's teacher schedule)."""
    return end - (end - start) * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


def init_from_weights(model: SLAP, path: str) -> str:
    """Start a new run from earlier weights: shipped inference weights (`*.safetensors`, with the
    training state saved beside them when it is there: decoder and SSL heads; the EMA teacher
    starts as a copy of the encoder) or another run's `ckpt.pt` (every module it has, teacher
    included; new modules keep their init). The optimizer and schedules always start afresh.
    Returns one line for the log: what was loaded."""
    if path.endswith(".pt"):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("config", {}).get("audio_cfg") != model.cfg.to_dict()["audio_cfg"]:
            raise ValueError(f"{path}: its audio encoder config differs from {model.cfg.name}'s")
        model.load_state_dict(state["model"], strict=False)
        return f"initialised from {path} (every module, EMA teacher included; the optimizer starts afresh)"
    from encoder.checkpoint import inference_state, load_model, load_training_state

    shipped = load_model(path)
    if shipped.cfg.to_dict()["audio_cfg"] != model.cfg.to_dict()["audio_cfg"]:
        raise ValueError(f"{path}: its audio encoder config differs from {model.cfg.name}'s")
    model.load_state_dict(inference_state(shipped), strict=False)  # what the file holds, nothing else
    model.teacher["audio"].load_state_dict(model.audio.state_dict())
    return f"initialised from {path} (the EMA teacher as a copy, the optimizer afresh); " + load_training_state(model, path)


def configure_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW over model's trainable parameters (a SLAP, or one tower of it: encoder/stream_tune.py),
    at cfg.lr with cfg.weight_decay only on matrices (dim >= 2), never on norms, scales or biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


# --- the loop ----------------------------------------------------------------------------


def train(cfg: TrainConfig, corpus=None, on_step=None) -> dict:
    """Run (or resume) training; `corpus` defaults to Corpus(cfg.corpus); `on_step(step, model)` is
    called after every optimizer step (tests use it to compare ranks)."""

    ddp = int(os.environ.get("RANK", -1)) != -1
    if ddp:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        rank, world = 0, 1
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    master = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    out = Path(cfg.out)

    if corpus is None:
        from encoder.data.dataset import Corpus

        corpus = Corpus(cfg.corpus)
    model_cfg = get_config(cfg.model)
    for name, value in parse_weights(cfg.weights).items():
        setattr(model_cfg.loss_weights, name, value)
    model = SLAP(model_cfg).to(device)
    opt = configure_optimizer(model, cfg)
    step = 0
    ckpt_path = out / "ckpt.pt"
    if not ckpt_path.exists() and cfg.init_from:
        note = init_from_weights(model, cfg.init_from)
        if master:
            print(note, file=sys.stderr)
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        if master:
            print(f"resumed from {ckpt_path} at step {step}", file=sys.stderr)
    teacher = None
    corpus_dir = Path(str(getattr(corpus, "path", "")))
    if not (corpus_dir / "manifest.jsonl").is_file():
        corpus_dir = None  # an in-memory corpus (tests): no folder, so no teacher scores
    if model_cfg.loss_weights.distill and corpus_dir is not None:
        from encoder.data.teacher import TeacherScores, build_teacher_scores

        if master and TeacherScores.open(corpus_dir) is None:
            build_teacher_scores(corpus_dir)  # ~20 s for 3 h of audio
        if ddp:
            dist.barrier()
        teacher = TeacherScores(corpus_dir)
    elif model_cfg.loss_weights.distill and master:
        print("no teacher scores for this corpus: the distill term is off", file=sys.stderr)
    online = None
    if cfg.online_teacher:
        from encoder.online_teacher import OnlineTeacher, prompt_vocabulary

        if "text_distill" not in parse_weights(cfg.weights):
            model_cfg.loss_weights.text_distill = 1.0  # the teachers are asked for: their term is on
        names = [n for lab in corpus.labels for n in corpus.names(lab)]
        online = OnlineTeacher(cfg.online_teacher, prompt_vocabulary(names), threads=cfg.threads or None)
        if master:
            print(f"online teacher {cfg.online_teacher}: {len(online.vocabulary)} prompts", file=sys.stderr)
    sampler = ClipSampler(corpus, "train", cfg, rank, teacher)
    sampler.rng = np.random.default_rng([cfg.seed, rank, step])  # a resumed run does not replay batches
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + rank * 104729 + step)
    # A term that is off leaves its head without gradient; DDP must then look for unused parameters.
    weights = model_cfg.loss_weights
    find_unused = teacher is None or not all((weights.ssl, weights.caption, weights.distill, weights.text_distill))
    net = (DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=find_unused)
           if ddp else model)

    if master:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log = open_run_log(out / "log.jsonl", step) if master else None
    bar = None
    if master:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", dynamic_ncols=True, file=sys.stderr)
    features = TextFeatureCache(model.text) if model.text.frozen_features else None
    t0, clips_seen = time.time(), 0
    history = []
    model.train()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        batch = collate(sampler.batch(cfg.batch_size), model.text, sampler, cfg, features=features, online=online)
        batch = Batch(**{f.name: (getattr(batch, f.name).to(device) if getattr(batch, f.name) is not None else None)
                         for f in fields(Batch)})
        terms = net(batch, generator=gen)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        model.update_teacher(ema_momentum_at(step, cfg.steps, model.cfg.ssl.ema_start, model.cfg.ssl.ema_end))
        step += 1
        if on_step is not None:
            on_step(step, model)
        clips_seen += cfg.batch_size * world
        row = {k: round(v.item(), 4) for k, v in terms.items()} | {"step": step, "lr": lr_at(step - 1, cfg),
                                                                      "grad_norm": round(float(gnorm), 3)}
        history.append(row)
        if master:
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                row["clips_per_s"] = round(clips_seen / (time.time() - t0), 2)
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix({k: row[k] for k in ("loss", "clap", "ssl", "caption", "frame", "clip", "distill", "text_distill") if k in row})
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                save_training_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                     "step": step, "config": model.cfg.to_dict(), "train": asdict(cfg)})
                save_training_state(model, save_weights(model, out / "model.safetensors", extra={"step": step}))
    if master:
        bar.close()
        log.close()
    summary = {"steps": step, "wall_s": round(time.time() - t0, 1),
               "clips_per_s": round(clips_seen / max(time.time() - t0, 1e-9), 2), "history": history}
    if ddp:
        dist.destroy_process_group()
    return summary


def parse_args(argv: list[str] | None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="main.py train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return TrainConfig(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        summary = train(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"main.py train: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
