"""Robustness augmentation of 16 kHz waveforms: the rooms, devices and channels real audio comes through.

    aug = Augmenter(AugmentConfig(), seed=0)
    y, applied = aug(x, noise=bed)    # x: (N,) float32 16 kHz -> y: (M,) float32, M == N unless cropped
    applied                           # [{"name": "reverb", "rt60_s": 0.62, "drr_db": 4.1}, ...]
    aug.skipped                       # Counter of transforms drawn but not applied, by reason

One small function per transform, each (N,) float32 -> (N,) float32 at 16 kHz that keeps the length
(all but `right_edge_crop`) and the time alignment, so event times and frame labels stay valid:

- band_limit: down to the 8 kHz telephone rate and back up (soxr): nothing above 4 kHz survives;
- mu_law_encode / mu_law_decode: ITU-T G.711 mu-law, the 8-bit segmented code of telephone networks;
- codec: a low-bitrate codec through ffmpeg (Opus, MP3 at 16-24 kbps), re-aligned for its delay;
  CodecUnavailable when ffmpeg or the encoder is missing (the Augmenter counts and skips it);
- reverb: a synthetic room, exponentially decaying noise of a given RT60 after the direct path;
- far_field: a distant source, attenuated and with a low direct-to-reverberant ratio;
- gain_clip: a gain, then hard clipping at a ceiling (an overdriven input);
- add_noise: a background waveform at a given SNR (whole-clip powers);
- right_edge_crop: a crop that ends at a random point, as a stream's newest column has no right context.

The chain follows the signal path: room (reverb or far field), background noise at the microphone,
input gain and clipping, then the channel (band limit, mu-law, codec), then the crop.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np
import soxr

SAMPLE_RATE = 16000
TELEPHONE_RATE = 8000  # G.711 narrowband: Nyquist at 4 kHz
MU_BIAS = 0x84  # 132, added before the segment search so segment k spans [2^(k+7), 2^(k+8)) - 132
MU_CLIP = 32635  # 32767 - MU_BIAS: the largest magnitude that encodes without overflow
DECAY_60DB = 3.0 * math.log(10.0)  # exp(-a t) is 60 dB down at t = RT60 when a = 3 ln 10 / RT60
IR_LENGTH_RT60 = 1.2  # impulse response length in RT60s: its tail ends 72 dB down
MAX_CODEC_DELAY = 4096  # samples (256 ms) searched for a codec's delay; MP3 at 16 kHz adds ~1105
CODEC_FORMATS = {"libopus": "ogg", "libmp3lame": "mp3", "libvorbis": "ogg", "aac": "adts"}


class CodecUnavailable(RuntimeError):
    """ffmpeg, or the requested encoder inside it, is not installed (or it failed on this input)."""


def _fit(y: np.ndarray, n: int) -> np.ndarray:
    """y cut or zero-padded to n samples, float32."""
    y = np.asarray(y, dtype=np.float32)[:n]
    return np.pad(y, (0, n - len(y))) if len(y) < n else y


# --- channel -----------------------------------------------------------------------------------

def band_limit(x: np.ndarray, narrow_rate: int = TELEPHONE_RATE) -> np.ndarray:
    """(N,) -> (N,): resampled to narrow_rate and back with soxr (linear phase, delay compensated)."""
    if len(x) == 0:
        return np.zeros(0, np.float32)
    down = soxr.resample(np.asarray(x, np.float32), SAMPLE_RATE, narrow_rate, quality="HQ")
    if len(down) == 0:  # shorter than one narrowband sample: nothing below 4 kHz to keep
        return np.zeros(len(x), np.float32)
    return _fit(soxr.resample(down, narrow_rate, SAMPLE_RATE, quality="HQ"), len(x))


def mu_law_encode(x: np.ndarray) -> np.ndarray:
    """(N,) float in [-1, 1] -> (N,) uint8 G.711 mu-law codes (as the ITU / Sun g711.c reference:
    16-bit linear in, magnitude + 132, segment = position of the top bit, 4 mantissa bits, all
    bits inverted on the line)."""
    pcm = np.clip(np.round(np.asarray(x, np.float64) * 32768.0), -32768, 32767).astype(np.int32)
    negative = pcm < 0
    mag = np.minimum(np.abs(pcm), MU_CLIP) + MU_BIAS  # in [132, 32767]
    seg = np.frexp(mag.astype(np.float64))[1] - 8  # mag in [2^(seg+7), 2^(seg+8)): 0..7
    mant = (mag >> (seg + 3)) & 0x0F
    return (~((negative.astype(np.int32) << 7) | (seg << 4) | mant) & 0xFF).astype(np.uint8)


def mu_law_decode(codes: np.ndarray) -> np.ndarray:
    """(N,) uint8 mu-law codes -> (N,) float32 in [-1, 1]: the midpoint of each code's interval."""
    u = ~np.asarray(codes, np.int32) & 0xFF
    seg, mant = (u >> 4) & 0x07, u & 0x0F
    t = ((mant << 3) + MU_BIAS) << seg
    pcm = np.where(u & 0x80, MU_BIAS - t, t - MU_BIAS)
    return (pcm / 32768.0).astype(np.float32)


def mu_law(x: np.ndarray) -> np.ndarray:
    """(N,) -> (N,): G.711 mu-law companding round trip (8 bits a sample, ~38 dB SNR on speech)."""
    return mu_law_decode(mu_law_encode(x))


@lru_cache(maxsize=1)
def ffmpeg_encoders() -> frozenset[str]:
    """Audio encoder names of the installed ffmpeg (empty when there is none)."""
    if shutil.which("ffmpeg") is None:
        return frozenset()
    out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return frozenset(parts[1] for line in out.splitlines() if len(parts := line.split()) > 1 and parts[0].startswith("A"))


def codec_delay(y: np.ndarray, x: np.ndarray, max_delay: int = MAX_CODEC_DELAY) -> int:
    """The lag in [0, max_delay] samples at which y best matches x (cross-correlation via FFT)."""
    n = min(len(x), len(y))
    if n == 0 or not np.any(x[:n]):
        return 0
    size = 1 << int(np.ceil(np.log2(len(y) + len(x))))
    c = np.fft.irfft(np.fft.rfft(y, size) * np.conj(np.fft.rfft(x, size)), size)  # c[k] = sum_t y[t+k] x[t]
    return int(np.argmax(c[: max_delay + 1]))


def codec(x: np.ndarray, encoder: str = "libopus", kbps: int = 16) -> np.ndarray:
    """(N,) -> (N,): encoded at kbps by ffmpeg's encoder and decoded back, shifted by the codec delay."""
    if shutil.which("ffmpeg") is None:
        raise CodecUnavailable("ffmpeg not found")
    if encoder not in ffmpeg_encoders() or encoder not in CODEC_FORMATS:
        raise CodecUnavailable(f"ffmpeg lacks the {encoder} encoder")
    x = np.asarray(x, np.float32)
    raw = ["-f", "f32le", "-ar", str(SAMPLE_RATE), "-ac", "1"]
    enc = subprocess.run(["ffmpeg", "-v", "error", *raw, "-i", "pipe:0", "-c:a", encoder, "-b:a", f"{kbps}k",
                          "-f", CODEC_FORMATS[encoder], "pipe:1"], input=x.astype("<f4").tobytes(), capture_output=True)
    dec = subprocess.run(["ffmpeg", "-v", "error", "-i", "pipe:0", *raw, "pipe:1"], input=enc.stdout,
                         capture_output=True) if enc.returncode == 0 else enc
    if dec.returncode != 0:
        raise CodecUnavailable(f"ffmpeg {encoder} failed: {dec.stderr.decode(errors='replace').strip()[-200:]}")
    y = np.frombuffer(dec.stdout, "<f4").astype(np.float32)
    return _fit(y[codec_delay(y, x):], len(x))


# --- room --------------------------------------------------------------------------------------

def room_impulse_response(rt60_s: float, rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """(L,) float32 unit-energy reverberant tail: Gaussian noise under exp(-3 ln 10 t / RT60),
    L = 1.2 RT60 (its energy decays 60 dB per RT60, as Schroeder integration measures it)."""
    if rt60_s <= 0:
        raise ValueError(f"rt60_s must be > 0, got {rt60_s}")
    n = max(1, int(round(IR_LENGTH_RT60 * rt60_s * rate)))
    h = rng.standard_normal(n) * np.exp(-DECAY_60DB * np.arange(n) / (rt60_s * rate))
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


def fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(N,), (L,) -> (N,): the causal convolution cut to x's length (events keep their onsets)."""
    if len(x) == 0:
        return np.zeros(0, np.float32)
    size = 1 << int(np.ceil(np.log2(len(x) + len(h) - 1)))
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]
    return y.astype(np.float32)


def reverb(x: np.ndarray, rt60_s: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) -> (N,): the direct path (unit gain) plus a room tail `drr_db` below it in energy."""
    h = room_impulse_response(rt60_s, rng) * np.float32(10.0 ** (-drr_db / 20.0))
    h[0] += 1.0
    return fft_convolve(np.asarray(x, np.float32), h)


def far_field(x: np.ndarray, attenuation_db: float, rt60_s: float, drr_db: float,
              rng: np.random.Generator) -> np.ndarray:
    """(N,) -> (N,): a source far from the microphone: reverberant (drr_db near or below 0) and quiet."""
    return reverb(x, rt60_s, drr_db, rng) * np.float32(10.0 ** (-attenuation_db / 20.0))


# --- level and background ------------------------------------------------------------------------

def gain_clip(x: np.ndarray, gain_db: float, ceiling: float = 1.0) -> np.ndarray:
    """(N,) -> (N,): x times the gain, hard-clipped to [-ceiling, ceiling]."""
    y = np.asarray(x, np.float32) * np.float32(10.0 ** (gain_db / 20.0))
    return np.clip(y, -ceiling, ceiling).astype(np.float32)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """(N,), (K,) -> (N,): x plus noise (from a random offset, repeated when K < N) scaled so that
    10 log10(mean(x^2) / mean(noise^2)) = snr_db. A silent x or noise leaves x as it is."""
    x = np.asarray(x, np.float32)
    noise = np.asarray(noise, np.float32)
    if len(x) == 0 or len(noise) == 0:
        return x.copy()
    n = np.resize(np.roll(noise, -int(rng.integers(len(noise)))), len(x)).astype(np.float64)
    p_x, p_n = float(np.mean(x.astype(np.float64) ** 2)), float(np.mean(n**2))
    if p_x == 0.0 or p_n == 0.0:
        return x.copy()
    return (x + n * math.sqrt(p_x / (p_n * 10.0 ** (snr_db / 10.0)))).astype(np.float32)


def right_edge_crop(x: np.ndarray, rng: np.random.Generator, min_samples: int,
                    max_samples: int | None = None) -> tuple[np.ndarray, int, int]:
    """(N,) -> (x[start:end], start, end) with end uniform in [min_samples, N] and, given
    max_samples, start = max(0, end - max_samples); audio of N <= min_samples comes back whole."""
    n = len(x)
    if n <= min_samples:
        return x, 0, n
    end = int(rng.integers(min_samples, n + 1))
    start = max(0, end - max_samples) if max_samples else 0
    return x[start:end], start, end


# --- the random chain --------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentConfig:
    """Probability of each transform per call, and the ranges its parameters are drawn from (uniform)."""

    p_reverb: float = 0.25
    rt60_s: tuple[float, float] = (0.2, 1.2)
    drr_db: tuple[float, float] = (0.0, 12.0)
    p_far_field: float = 0.1  # instead of reverb: a distant source
    far_attenuation_db: tuple[float, float] = (6.0, 20.0)
    far_drr_db: tuple[float, float] = (-6.0, 3.0)
    p_noise: float = 0.3  # needs a noise waveform in the call
    snr_db: tuple[float, float] = (0.0, 20.0)
    p_gain: float = 0.5
    gain_db: tuple[float, float] = (-24.0, 6.0)
    p_clip: float = 0.05
    clip_ceiling: tuple[float, float] = (0.2, 0.8)
    p_band_limit: float = 0.15
    p_mu_law: float = 0.1
    p_codec: float = 0.1
    codecs: tuple[str, ...] = ("libopus", "libmp3lame")
    codec_kbps: tuple[int, int] = (16, 24)
    p_right_crop: float = 0.2
    crop_min_s: float = 1.0
    crop_max_s: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= v <= 1.0:
                raise ValueError(f"AugmentConfig.{f.name} must be a probability in [0, 1], got {v}")
            if isinstance(v, tuple) and f.name != "codecs" and not (len(v) == 2 and v[0] <= v[1]):
                raise ValueError(f"AugmentConfig.{f.name} must be a (low, high) range with low <= high, got {v}")
        if self.clip_ceiling[0] <= 0 or self.rt60_s[0] <= 0 or self.crop_min_s <= 0:
            raise ValueError("AugmentConfig: clip_ceiling, rt60_s and crop_min_s must be > 0")
        if self.p_codec > 0 and not self.codecs:
            raise ValueError("AugmentConfig.codecs is empty but p_codec > 0")


class Augmenter:
    """Applies a random chain of the transforms above; seeded, so one seed gives one sequence."""

    def __init__(self, config: AugmentConfig | None = None, seed: int = 0) -> None:
        self.config = config or AugmentConfig()
        self.rng = np.random.default_rng(seed)
        self.skipped: Counter = Counter()  # "codec: ffmpeg lacks the libopus encoder" -> times

    def __call__(self, x: np.ndarray, noise: np.ndarray | None = None,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, list[dict]]:
        """x: (N,) float32 16 kHz; noise: (K,) float32 16 kHz or None. Returns (y, applied):
        y (N,) float32, or the crop's length when `right_crop` is in applied (its start/end say
        which samples of x it kept); applied lists the transforms in order with their parameters."""
        c, g = self.config, rng if rng is not None else self.rng
        y = np.asarray(x, np.float32).copy()
        if y.ndim != 1 or not np.isfinite(y).all():
            raise ValueError(f"Augmenter: expected a finite (N,) waveform, got shape {y.shape}"
                             f"{'' if np.isfinite(y).all() else ' with NaN or inf'}")
        applied: list[dict] = []

        def draw(r: tuple[float, float]) -> float:
            return float(g.uniform(r[0], r[1]))

        if g.random() < c.p_far_field:
            p = {"attenuation_db": draw(c.far_attenuation_db), "rt60_s": draw(c.rt60_s), "drr_db": draw(c.far_drr_db)}
            y = far_field(y, p["attenuation_db"], p["rt60_s"], p["drr_db"], g)
            applied.append({"name": "far_field", **p})
        elif g.random() < c.p_reverb:
            p = {"rt60_s": draw(c.rt60_s), "drr_db": draw(c.drr_db)}
            y = reverb(y, p["rt60_s"], p["drr_db"], g)
            applied.append({"name": "reverb", **p})
        if g.random() < c.p_noise:
            if noise is None or len(noise) == 0:
                self.skipped["noise: no noise waveform given"] += 1
            else:
                snr = draw(c.snr_db)
                y = add_noise(y, noise, snr, g)
                applied.append({"name": "noise", "snr_db": snr})
        if g.random() < c.p_gain:
            gain = draw(c.gain_db)
            y = gain_clip(y, gain, ceiling=np.inf)
            applied.append({"name": "gain", "gain_db": gain})
        if g.random() < c.p_clip:
            ceiling = draw(c.clip_ceiling)
            peak = float(np.max(np.abs(y))) if len(y) else 0.0
            # clip relative to the peak, so a quiet clip is clipped too: ceiling 0.3 = 30 % of the peak
            y = gain_clip(y, 0.0, ceiling * peak) if peak > 0 else y
            applied.append({"name": "clip", "ceiling": ceiling})
        if g.random() < c.p_band_limit:
            y = band_limit(y)
            applied.append({"name": "band_limit", "rate": TELEPHONE_RATE})
        if g.random() < c.p_mu_law:
            y = mu_law(y)
            applied.append({"name": "mu_law"})
        if g.random() < c.p_codec:
            encoder = str(c.codecs[int(g.integers(len(c.codecs)))])
            kbps = int(g.integers(c.codec_kbps[0], c.codec_kbps[1] + 1))
            try:
                y = codec(y, encoder, kbps)
                applied.append({"name": "codec", "encoder": encoder, "kbps": kbps})
            except CodecUnavailable as e:
                self.skipped[f"codec: {e}"] += 1
        if g.random() < c.p_right_crop:
            max_n = int(c.crop_max_s * SAMPLE_RATE) if c.crop_max_s else None
            y, start, end = right_edge_crop(y, g, int(c.crop_min_s * SAMPLE_RATE), max_n)
            applied.append({"name": "right_crop", "start": start, "end": end})
        peak = float(np.max(np.abs(y))) if len(y) else 0.0
        if peak > 1.0:  # gain and reverb may overshoot; full scale is where the int16 corpus ends
            y = y * np.float32(0.99 / peak)
            applied.append({"name": "limit", "scale": 0.99 / peak})
        return y.astype(np.float32), applied
