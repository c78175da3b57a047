"""Log-mel front end: 16 kHz mono -> normalised 64-bin log-mel -> 16x16 patches.

numpy only, so the engine's hot path never imports torch. The batch function
`log_mel` and the streaming `StreamingLogMel` produce the same frames for the same
samples, however the samples are chunked: framing is causal (left-padded), so a frame
is final as soon as its last sample has arrived.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def exact_div(x: int, y: int) -> int:
    assert x % y == 0, f"{x} is not divisible by {y}"
    return x // y


SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window at 16 kHz
HOP_LENGTH = 160  # 10 ms hop at 16 kHz
N_MELS = 64
FRAMES_PER_SECOND = exact_div(SAMPLE_RATE, HOP_LENGTH)  # 100 frames of 10 ms
LEFT_PAD = N_FFT - HOP_LENGTH  # 240 samples: frame i ends at sample (i + 1) * HOP_LENGTH
PATCH_FRAMES = 16  # 160 ms per patch column
PATCH_MELS = 16
FREQ_PATCHES = exact_div(N_MELS, PATCH_MELS)  # 4 patches per time column
PATCH_DIM = PATCH_FRAMES * PATCH_MELS  # 256 values per patch
SECONDS_PER_COLUMN = PATCH_FRAMES / FRAMES_PER_SECOND  # 0.16 s
COLUMN_SAMPLES = PATCH_FRAMES * HOP_LENGTH  # 2560 samples: one column, the encoder's smallest input
F_MIN, F_MAX = 0.0, SAMPLE_RATE / 2
LOG_FLOOR = 1e-10  # power floor before log10: -100 dB, below int16 quantisation noise
# Fixed affine normalisation (not per clip, which would break streaming):
# log10 power of speech/sound at usual levels spans about -8..+4; this maps it to about -1..2.
LOG_OFFSET, LOG_SCALE = 4.0, 4.0


class AudioError(ValueError):
    """Audio input that the front end refuses; the message is one line."""


def validate_audio(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, name: str = "audio") -> np.ndarray:
    """Check a mono 16 kHz float signal and return it as float32.

    audio: (N,) float32 or float64, samples in [-1, 1]. Returns (N,) float32 (a view when possible).
    Raises AudioError with one line saying what was expected.
    """
    if sample_rate != SAMPLE_RATE:
        raise AudioError(f"{name}: expected {SAMPLE_RATE} Hz, got {sample_rate} Hz; resample first (e.g. soxr)")
    if not isinstance(audio, np.ndarray):
        raise AudioError(f"{name}: expected a numpy array, got {type(audio).__name__}")
    if audio.dtype not in (np.float32, np.float64):
        hint = "; divide integer PCM by its full scale (32768 for int16)" if audio.dtype.kind in "iu" else ""
        raise AudioError(f"{name}: expected float32 samples in [-1, 1], got {audio.dtype}{hint}")
    if audio.ndim != 1:
        raise AudioError(f"{name}: expected mono audio of shape (N,), got shape {tuple(audio.shape)}")
    if audio.size == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not np.isfinite(audio).all():
        bad = int(np.size(audio) - np.count_nonzero(np.isfinite(audio)))
        raise AudioError(f"{name}: {bad} NaN or infinite samples")
    return audio.astype(np.float32, copy=False)


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)  # HTK mel scale


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@lru_cache
def mel_filters(n_mels: int = N_MELS) -> np.ndarray:
    """Triangular HTK-scale filters, area-normalised. Returns (n_mels, N_FFT // 2 + 1) float32."""
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(np.array(F_MIN)), _hz_to_mel(np.array(F_MAX)), n_mels + 2)
    hz = _mel_to_hz(mel_points)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (fft_freqs[None, :] - lower) / (centre - lower)
    down = (upper - fft_freqs[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(up, down))
    weights *= (2.0 / (upper - lower))  # equal area, so wide high bands do not dominate
    return weights.astype(np.float32)


@lru_cache
def _window() -> np.ndarray:
    return np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann


def _frames_to_log_mel(frames: np.ndarray) -> np.ndarray:
    """frames: (T, N_FFT) float32 -> (N_MELS, T) float32 normalised log-mel."""
    spec = np.fft.rfft(frames * _window(), axis=-1)  # (T, 201) complex
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    mel = power @ mel_filters().T  # (T, 64)
    logmel = (np.log10(np.maximum(mel, LOG_FLOOR)) + LOG_OFFSET) / LOG_SCALE
    return np.ascontiguousarray(logmel.T, dtype=np.float32)


def _frame(padded: np.ndarray, n_frames: int) -> np.ndarray:
    """padded: (LEFT_PAD + n_frames * HOP,) -> (n_frames, N_FFT) strided view."""
    return np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_frames]


def log_mel(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Normalised log-mel spectrogram.

    audio: (N,) float32 at 16 kHz. Returns (N_MELS, N // HOP_LENGTH) float32; frame i covers
    samples [i*160 - 240, i*160 + 160) with zeros before the start.
    """
    audio = validate_audio(audio, sample_rate)
    n_frames = audio.size // HOP_LENGTH
    if n_frames == 0:
        return np.zeros((N_MELS, 0), np.float32)
    padded = np.concatenate([np.zeros(LEFT_PAD, np.float32), audio[: n_frames * HOP_LENGTH]])
    return _frames_to_log_mel(_frame(padded, n_frames))


class StreamingLogMel:
    """Log-mel over audio that arrives in chunks of any size.

    Keeps the last LEFT_PAD samples plus any partial hop; each call returns the frames
    completed by the new samples, identical to `log_mel` over the concatenated audio.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._buffer = np.zeros(LEFT_PAD, np.float32)  # history + pending samples
        self.frames_emitted = 0

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """chunk: (n,) float32 at 16 kHz (n may be 0). Returns (N_MELS, t) new frames."""
        if chunk.size:
            chunk = validate_audio(chunk, SAMPLE_RATE, name="chunk")
            self._buffer = np.concatenate([self._buffer, chunk])
        n_frames = (self._buffer.size - LEFT_PAD) // HOP_LENGTH
        if n_frames == 0:
            return np.zeros((N_MELS, 0), np.float32)
        out = _frames_to_log_mel(_frame(self._buffer, n_frames))
        self._buffer = self._buffer[n_frames * HOP_LENGTH :].copy()
        self.frames_emitted += n_frames
        return out

    @property
    def pending_samples(self) -> int:
        """Samples received that do not yet complete a frame."""
        return self._buffer.size - LEFT_PAD


def n_columns(n_frames: int) -> int:
    """Patch columns (160 ms each) in n_frames; a trailing partial column is dropped."""
    return n_frames // PATCH_FRAMES


def scored_columns(n_samples: int) -> int:
    """Columns a clip of n_samples is scored in: the nearest whole number, and at least one.

    A trailing partial column of half a column (80 ms) or more is completed with silence, a shorter
    one is left out, and a clip shorter than one column (0 samples included) is padded to one: the
    encoder has no smaller input, so a 0.1 s door slam is still scored."""
    return max(1, (n_samples + COLUMN_SAMPLES // 2) // COLUMN_SAMPLES)


def pad_to_columns(audio: np.ndarray) -> np.ndarray:
    """(N,) float32 16 kHz -> (M,) float32, zeros appended so that M >= scored_columns(N) * COLUMN_SAMPLES.

    The log-mel of the result has at least `scored_columns(N)` whole columns (a shorter trailing
    part is cut by `patchify`, as before). Silence is what a stream's end is followed by, so a
    clip scored here gets the same columns as the same audio at the end of a stream.
    """
    audio = np.asarray(audio, dtype=np.float32)
    missing = scored_columns(audio.size) * COLUMN_SAMPLES - audio.size
    return np.concatenate([audio, np.zeros(missing, np.float32)]) if missing > 0 else audio


def n_tokens(n_frames: int) -> int:
    return n_columns(n_frames) * FREQ_PATCHES


def patchify(mel: np.ndarray) -> np.ndarray:
    """Cut a log-mel into 16x16 patches, flattened time-major.

    mel: (..., N_MELS, T). Returns (..., C * FREQ_PATCHES, PATCH_DIM) with C = T // 16; token
    c * 4 + f is column c (time), frequency band f (low to high); a patch is flattened
    mel-major (16 mel rows of 16 frames).
    """
    *lead, n_mels, t = mel.shape
    assert n_mels == N_MELS, f"expected {N_MELS} mel bins, got {n_mels}"
    c = n_columns(t)
    x = mel[..., : c * PATCH_FRAMES].reshape(*lead, FREQ_PATCHES, PATCH_MELS, c, PATCH_FRAMES)
    x = np.moveaxis(x, -2, -4)  # (..., C, F, 16 mels, 16 frames)
    return x.reshape(*lead, c * FREQ_PATCHES, PATCH_DIM)
