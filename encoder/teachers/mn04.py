"""EfficientAT mn04_as: a 0.98 M-parameter MobileNetV3 AudioSet tagger (mAP 0.432), as a teacher.

Written from the spec in ../shared/teachers/README.md (Schmid et al., ICASSP 2023; weights MIT):
32 kHz mono -> 128-band Kaldi log-mel (100 frames/s) -> MobileNetV3-Large at width 0.4 ->
527 AudioSet logits, the 384-d pooled feature map (the embedding) and per-320 ms frame logits.
The weights are read from teachers_dir(), never downloaded; a missing file is a one-line error.

Read top to bottom: where the files are, the front end, the network, loading, then MN04Teacher
(numpy clips of any length and sample rate in, probabilities out) and a small benchmark
(`python -m encoder.teachers.mn04 --bench`).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr
import torch
from safetensors.torch import load_file
from torch import nn

from encoder.frontend import AudioError

# ---------------------------------------------------------------------------------------------
# Where the teacher files are
# ---------------------------------------------------------------------------------------------

TEACHERS_DIR_ENV = "SLAP_TEACHERS_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]  # encoder/teachers/mn04.py -> repo
WEIGHTS_FILE = "efficientat_mn04_as.safetensors"
WEIGHTS_WHAT = "the EfficientAT mn04 teacher weights (AudioSet tagger for distillation and the eval baselines)"
LABELS_FILE = "audioset_class_labels_indices.csv"
LABELS_WHAT = "the AudioSet class list of the teachers (index, mid, display_name; 527 rows)"


def teachers_dir() -> Path:
    """$SLAP_TEACHERS_DIR if set, else ../shared/teachers beside the repo."""
    env = os.environ.get(TEACHERS_DIR_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "teachers"


def teacher_file(name: str, what: str) -> Path:
    """The path of `name` inside teachers_dir(); FileNotFoundError (one line) if it is not there."""
    path = teachers_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {what}; put ../shared/teachers beside the repo or set {TEACHERS_DIR_ENV}"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Front end: 32 kHz mono -> (128, T) normalised Kaldi log-mel, T = 1 + (N - 1) // HOP
# ---------------------------------------------------------------------------------------------

SAMPLE_RATE = 32000
N_FFT = 1024  # 32 ms frame at 32 kHz; 513 one-sided bins of 31.25 Hz
WIN_LENGTH = 800  # 25 ms symmetric Hann, centred in the 1024-sample frame
HOP = 320  # 10 ms
FRAMES_PER_SECOND = SAMPLE_RATE // HOP  # 100
N_MELS = 128
F_MIN, F_MAX = 0.0, 15000.0  # Nyquist minus half of the 2 kHz f_max augmentation range used in training
PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5
NORM_SHIFT, NORM_SCALE = 4.5, 5.0  # (log mel + 4.5) / 5: roughly zero mean, unit spread on AudioSet
MIN_STFT_SAMPLES = N_FFT // 2 + 2  # reflect padding of n_fft // 2 needs a longer pre-emphasised signal


def _kaldi_mel(f_hz: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + f_hz / 700.0)


@lru_cache
def mel_bank() -> torch.Tensor:
    """Kaldi triangular filters (torchaudio compliance.kaldi.get_mel_banks, no warping).

    128 triangles equally spaced in Kaldi mel between F_MIN and F_MAX, evaluated at the bin
    frequencies k * SAMPLE_RATE / N_FFT for k < N_FFT // 2; the Nyquist bin gets weight 0.
    Returns (N_MELS, N_FFT // 2 + 1) float32.
    """
    mel_low, mel_high = _kaldi_mel(np.array(F_MIN)), _kaldi_mel(np.array(F_MAX))
    delta = (mel_high - mel_low) / (N_MELS + 1)
    left = mel_low + np.arange(N_MELS)[:, None] * delta
    centre, right = left + delta, left + 2 * delta
    mel = _kaldi_mel(np.arange(N_FFT // 2) * (SAMPLE_RATE / N_FFT))[None, :]
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    bank = np.maximum(0.0, np.minimum(up, down))
    bank = np.pad(bank, ((0, 0), (0, 1)))  # the Nyquist bin
    return torch.from_numpy(bank.astype(np.float32))


@lru_cache
def stft_window() -> torch.Tensor:
    """Symmetric (non-periodic) Hann of WIN_LENGTH zero-padded to N_FFT, centred. (N_FFT,) float32."""
    hann = torch.hann_window(WIN_LENGTH, periodic=False, dtype=torch.float32)
    left = (N_FFT - WIN_LENGTH) // 2
    return torch.nn.functional.pad(hann, (left, N_FFT - WIN_LENGTH - left))


def mn04_mel(audio_32k: torch.Tensor) -> torch.Tensor:
    """(B, N) float32 waveform at 32 kHz -> (B, 128, T) normalised log-mel, T = 1 + (N - 1) // 320.

    Pre-emphasis y[n] = x[n+1] - 0.97 x[n], centred STFT (reflect), power, Kaldi mel bank,
    log(mel + 1e-5), (x + 4.5) / 5; all in float32.
    """
    if audio_32k.ndim != 2:
        raise ValueError(f"mn04_mel: expected a (B, N) waveform batch, got shape {tuple(audio_32k.shape)}")
    if audio_32k.shape[1] < MIN_STFT_SAMPLES:
        raise ValueError(
            f"mn04_mel: clips of {audio_32k.shape[1]} samples are too short; need at least {MIN_STFT_SAMPLES}"
        )
    x = audio_32k.float()
    x = x[:, 1:] - PREEMPHASIS * x[:, :-1]  # (B, N - 1)
    spec = torch.stft(
        x, N_FFT, hop_length=HOP, window=stft_window(), center=True, pad_mode="reflect", return_complex=True
    )  # (B, 513, T)
    power = spec.real**2 + spec.imag**2
    mel = torch.matmul(mel_bank(), power)  # (128, 513) @ (B, 513, T) -> (B, 128, T)
    return (torch.log(mel + LOG_OFFSET) + NORM_SHIFT) / NORM_SCALE


# ---------------------------------------------------------------------------------------------
# Network: MobileNetV3-Large layout at width 0.4 (channel counts already rounded to 8)
# ---------------------------------------------------------------------------------------------

N_CLASSES = 527
EMBED_DIM = 384
HEAD_DIM = 512
BN_EPS = 1e-3
STEM_CHANNELS = 8
LAST_BLOCK_CHANNELS = 64


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block: in -> expanded (1x1) -> depthwise k x k -> [SE] -> out (1x1)."""

    in_ch: int
    kernel: int
    expanded: int
    out_ch: int
    se: bool
    hardswish: bool  # else ReLU
    stride: int


# features.1 .. features.15, from the README's table
BLOCKS = (
    BlockSpec(8, 3, 8, 8, False, False, 1),
    BlockSpec(8, 3, 24, 16, False, False, 2),
    BlockSpec(16, 3, 32, 16, False, False, 1),
    BlockSpec(16, 5, 32, 16, True, False, 2),
    BlockSpec(16, 5, 48, 16, True, False, 1),
    BlockSpec(16, 5, 48, 16, True, False, 1),
    BlockSpec(16, 3, 96, 32, False, True, 2),
    BlockSpec(32, 3, 80, 32, False, True, 1),
    BlockSpec(32, 3, 72, 32, False, True, 1),
    BlockSpec(32, 3, 72, 32, False, True, 1),
    BlockSpec(32, 3, 192, 48, True, True, 1),
    BlockSpec(48, 3, 272, 48, True, True, 1),
    BlockSpec(48, 5, 272, 64, True, True, 2),
    BlockSpec(64, 5, 384, 64, True, True, 1),
    BlockSpec(64, 5, 384, 64, True, True, 1),
)
STEM_STRIDE = 2
NET_STRIDE = STEM_STRIDE * math.prod(b.stride for b in BLOCKS)  # 32: mel frames per feature-map step
FRAME_HOP_S = HOP * NET_STRIDE / SAMPLE_RATE  # 0.32 s per feature-map step


def round8(v: float) -> int:
    """Round to the nearest multiple of 8, never more than 10% below v (MobileNet's _make_divisible)."""
    r = max(8, int(v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


class ConvBNAct(nn.Sequential):
    """Bias-free conv, BatchNorm, optional activation; keys `0.weight` (conv) and `1.*` (BN)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = None):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=BN_EPS),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel attention: x * sigmoid(fc2(relu(fc1(mean of x over freq and time))))."""

    def __init__(self, channels: int):
        super().__init__()
        squeeze = round8(channels // 4)
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, F, T) -> (B, C, F, T)
        s = x.mean(dim=(2, 3))  # (B, C)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class ConcurrentSE(nn.Module):
    """EfficientAT's wrapper of parallel SE branches; mn04 has one (over channels), hence `.0`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conc_se_layers = nn.ModuleList([SqueezeExcitation(channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """features.N: `block` = [expand 1x1] -> depthwise -> [SE] -> project 1x1 (no activation)."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        act = nn.Hardswish if spec.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if spec.expanded != spec.in_ch:
            layers.append(ConvBNAct(spec.in_ch, spec.expanded, 1, act=act))
        layers.append(ConvBNAct(spec.expanded, spec.expanded, spec.kernel, spec.stride, groups=spec.expanded, act=act))
        if spec.se:
            layers.append(ConcurrentSE(spec.expanded))
        layers.append(ConvBNAct(spec.expanded, spec.out_ch, 1))
        self.block = nn.Sequential(*layers)
        self.residual = spec.stride == 1 and spec.in_ch == spec.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MN04(nn.Module):
    """mel (B, 1, 128, T) -> logits (B, 527), embedding (B, 384), frame_logits (B, T', 527).

    T' = ceil(T / 32): one feature-map step per 320 ms. The feature map is (B, 384, 4, T').
    frame_logits apply the clip head to each time step (mean over frequency only): an
    approximation, since the head was trained on clip-pooled features.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNAct(1, STEM_CHANNELS, 3, STEM_STRIDE, act=nn.Hardswish),
            *[InvertedResidual(spec) for spec in BLOCKS],
            ConvBNAct(LAST_BLOCK_CHANNELS, EMBED_DIM, 1, act=nn.Hardswish),
        )
        # indices 0, 1, 3, 4 hold no weights; they keep the checkpoint's key names (classifier.2, .5)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(EMBED_DIM, HEAD_DIM),
            nn.Hardswish(),
            nn.Dropout(0.2),
            nn.Linear(HEAD_DIM, N_CLASSES),
        )

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 384) pooled features -> (..., 527) logits."""
        return self.classifier[2:](x)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fmap = self.features(mel)  # (B, 384, 4, T')
        embedding = fmap.mean(dim=(2, 3))  # (B, 384)
        logits = self.head(embedding)  # (B, 527)
        frame_logits = self.head(fmap.mean(dim=2).transpose(1, 2))  # (B, T', 384) -> (B, T', 527)
        return logits, embedding, frame_logits


def load_mn04(path: Path | None = None) -> MN04:
    """MN04 with the teacher weights (every key used, none left over), eval mode, float32.

    path: the safetensors file; default teacher_file(WEIGHTS_FILE). Raises FileNotFoundError or
    ValueError, each one line naming the file (and the mismatched keys).
    """
    if path is None:
        path = teacher_file(WEIGHTS_FILE, WEIGHTS_WHAT)
    elif not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: {WEIGHTS_WHAT}")
    state = load_file(str(path))
    model = MN04()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{path}: weights do not fit MN04: missing {missing}, unexpected {unexpected}, wrong shape {wrong_shape}"
        )
    model.load_state_dict(state, strict=True)
    return model.float().eval()


# ---------------------------------------------------------------------------------------------
# Teacher: numpy clips in, probabilities out
# ---------------------------------------------------------------------------------------------

MIN_SECONDS = 1.0  # shorter clips are zero-padded to 1 s (10 feature-map columns' worth of context)
MIN_SAMPLES = int(MIN_SECONDS * SAMPLE_RATE)
MAX_BATCH = 32  # clips per forward pass; bounds memory for long clips


@dataclass
class TeacherOutput:
    """clip_probs (B, 527) and embedding (B, 384) float32; frame_probs[i] (T_i, 527) for clip i."""

    clip_probs: np.ndarray
    embedding: np.ndarray
    frame_probs: list[np.ndarray]
    frame_hop_s: float


@lru_cache
def _labels(path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(N_CLASSES)):
        raise ValueError(f"{path}: expected rows with index 0..{N_CLASSES - 1}, got {len(rows)} rows")
    return tuple(r["display_name"] for r in rows), tuple(r["mid"] for r in rows)


def class_names() -> tuple[str, ...]:
    """The 527 AudioSet display names, in logit order."""
    return _labels(teacher_file(LABELS_FILE, LABELS_WHAT))[0]


def class_mids() -> tuple[str, ...]:
    """The 527 AudioSet machine ids (e.g. /m/09x0r for Speech), in logit order."""
    return _labels(teacher_file(LABELS_FILE, LABELS_WHAT))[1]


def n_frames(n_samples: int) -> int:
    """Mel frames of a 32 kHz clip: pre-emphasis drops one sample, the centred STFT adds one frame."""
    return 1 + (n_samples - 1) // HOP


def n_steps(n_samples: int) -> int:
    """Feature-map steps of a 32 kHz clip: each stride-2 layer rounds up, so ceil(frames / 32)."""
    return -(-n_frames(n_samples) // NET_STRIDE)


def _check_clip(clip: object, i: int) -> np.ndarray:
    if not isinstance(clip, np.ndarray):
        raise AudioError(f"clip {i}: expected a numpy array, got {type(clip).__name__}")
    if clip.dtype not in (np.float32, np.float64):
        raise AudioError(f"clip {i}: expected float32 samples in [-1, 1], got {clip.dtype}")
    if clip.ndim != 1 or clip.size == 0:
        raise AudioError(f"clip {i}: expected non-empty mono audio of shape (N,), got shape {clip.shape}")
    if not np.isfinite(clip).all():
        raise AudioError(f"clip {i}: NaN or infinite samples")
    return clip.astype(np.float32, copy=False)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` intra-op threads, then give the process its setting back."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MN04Teacher:
    """The mn04 tagger on numpy clips: any length, any sample rate, batched.

    Batching: clips are grouped by their exact length (after resampling and padding) and each
    group runs as one batch (MAX_BATCH at most). Clips are never padded to each other's length,
    because zero columns would shift every squeeze-excitation mean and the border convolutions;
    so a clip's result does not depend on what it is batched with. Training crops of one length
    batch fully; odd lengths run one group each.

    Short clips (under 1 s) are zero-padded at the end to 1 s so the 5x5 depthwise layers see a
    real map; their clip probabilities then include that silence, and frame_probs keep only the
    steps that overlap the clip.
    """

    def __init__(self, path: Path | None = None, threads: int | None = None):
        self.model = load_mn04(path)
        self.threads = threads

    def class_names(self) -> tuple[str, ...]:
        return class_names()

    def class_mids(self) -> tuple[str, ...]:
        return class_mids()

    def predict(self, audio: list[np.ndarray], sample_rate: int = 16000) -> TeacherOutput:
        """Mono float32 clips at `sample_rate` -> TeacherOutput (sigmoid of the logits).

        Clips not at 32 kHz are resampled with soxr. frame_probs[i] has n_steps(len at 32 kHz)
        rows, step j covering 320 ms from j * 0.32 s.
        """
        clips = [_check_clip(c, i) for i, c in enumerate(audio)]
        if sample_rate != SAMPLE_RATE:
            clips = [soxr.resample(c, sample_rate, SAMPLE_RATE).astype(np.float32, copy=False) for c in clips]
        lengths = [len(c) for c in clips]
        padded = [np.pad(c, (0, max(0, MIN_SAMPLES - len(c)))) for c in clips]

        groups: dict[int, list[int]] = defaultdict(list)
        for i, c in enumerate(padded):
            groups[len(c)].append(i)
        probs = np.zeros((len(clips), N_CLASSES), np.float32)
        embedding = np.zeros((len(clips), EMBED_DIM), np.float32)
        frames: list[np.ndarray] = [np.zeros((0, N_CLASSES), np.float32)] * len(clips)
        with _torch_threads(self.threads), torch.inference_mode():
            for idx in groups.values():
                for start in range(0, len(idx), MAX_BATCH):
                    batch = idx[start : start + MAX_BATCH]
                    wave = torch.from_numpy(np.stack([padded[i] for i in batch]))  # (b, N)
                    logits, emb, frame_logits = self.model(mn04_mel(wave)[:, None])
                    probs[batch] = torch.sigmoid(logits).numpy()
                    embedding[batch] = emb.numpy()
                    frame_p = torch.sigmoid(frame_logits).numpy()  # (b, T', 527)
                    for row, i in enumerate(batch):
                        frames[i] = frame_p[row, : n_steps(lengths[i])].copy()
        return TeacherOutput(probs, embedding, frames, FRAME_HOP_S)


# ---------------------------------------------------------------------------------------------
# Cost: python -m encoder.teachers.mn04 --bench
# ---------------------------------------------------------------------------------------------


def bench(threads: tuple[int, ...] = (1, 2), batches: tuple[int, ...] = (1, 16), repeats: int = 3) -> None:
    """Print the teacher's cost (front end + network) per 10 s clip at 32 kHz; best of `repeats`."""
    rng = np.random.default_rng(0)
    teacher = MN04Teacher()
    for n_threads in threads:
        teacher.threads = n_threads
        for batch in batches:
            clips = [(rng.standard_normal(10 * SAMPLE_RATE) * 0.1).astype(np.float32) for _ in range(batch)]
            teacher.predict(clips[:1], SAMPLE_RATE)  # warm-up
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                teacher.predict(clips, SAMPLE_RATE)
                best = min(best, time.perf_counter() - t0)
            print(f"threads {n_threads} batch {batch:2d}: {best * 1e3:7.1f} ms per batch, "
                  f"{best * 1e3 / batch:5.1f} ms per 10 s clip ({10 * batch / best:5.0f}x real time)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="time the teacher per 10 s of audio")
    if parser.parse_args().bench:
        bench()
