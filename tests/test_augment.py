"""Waveform augmentation (encoder/data/augment.py) as specifications: what each transform does to a
signal, measured on the signal, and the rules of the random chain (seeding, lengths, no NaN)."""

from __future__ import annotations

import numpy as np
import pytest

from encoder.data import augment as A

SR = A.SAMPLE_RATE


def _tone(freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def _noise(seconds: float = 1.0, seed: int = 0, amp: float = 0.1) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def _band_energy(x: np.ndarray, lo: float, hi: float = SR / 2 + 1) -> float:
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return float(np.sum(np.abs(np.fft.rfft(x.astype(np.float64))[(f >= lo) & (f < hi)]) ** 2))


def schroeder_rt60(h: np.ndarray, rate: int = SR) -> float:
    """RT60 from an impulse response: Schroeder's backward-integrated energy decay curve, a line
    fitted between -5 and -25 dB (T20), extrapolated to 60 dB."""
    edc = np.cumsum(h[::-1].astype(np.float64) ** 2)[::-1]
    db = 10 * np.log10(edc / edc[0])
    i5, i25 = int(np.argmax(db <= -5)), int(np.argmax(db <= -25))
    t = np.arange(i5, i25) / rate
    slope = np.polyfit(t, db[i5:i25], 1)[0]  # dB per second
    return -60.0 / slope


def _g711_reference(sample: int) -> int:
    """ITU-T G.711 mu-law encoder for one 16-bit sample, as Sun's g711.c writes it."""
    seg_end = (0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF)
    if sample < 0:
        sample, mask = A.MU_BIAS - sample, 0x7F
    else:
        sample, mask = sample + A.MU_BIAS, 0xFF
    sample = min(sample, A.MU_CLIP + A.MU_BIAS)
    seg = next((i for i, end in enumerate(seg_end) if sample <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((sample >> (seg + 3)) & 0x0F)) ^ mask


# --- band limit --------------------------------------------------------------------------------

def test_band_limit_removes_everything_above_4khz_and_keeps_a_1khz_tone():
    x = _noise(2.0)
    y = A.band_limit(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert _band_energy(y, 4000) < 1e-5 * _band_energy(x, 4000)  # > 50 dB down
    assert _band_energy(y, 300, 3000) == pytest.approx(_band_energy(x, 300, 3000), rel=0.01)
    tone = _tone(1000)
    t = A.band_limit(tone)
    spectrum = np.abs(np.fft.rfft(t))
    assert np.fft.rfftfreq(len(t), 1 / SR)[np.argmax(spectrum)] == 1000
    assert np.max(np.abs(t[200:-200] - tone[200:-200])) < 0.005  # same amplitude, same phase: no delay


# --- mu-law ------------------------------------------------------------------------------------

def test_mu_law_encoder_is_g711_for_every_16_bit_sample():
    pcm = np.arange(-32768, 32768)
    ours = A.mu_law_encode(pcm / 32768.0)
    assert ours.dtype == np.uint8
    assert np.array_equal(ours, np.array([_g711_reference(int(s)) for s in pcm], np.uint8))


def test_mu_law_has_256_codes_and_a_bounded_round_trip_error():
    ramp = np.linspace(-1, 1, 200_001, dtype=np.float32)
    codes = A.mu_law_encode(ramp)
    assert len(np.unique(codes)) == 256  # 8 bits, every code used over full scale
    y = A.mu_law(ramp)
    assert len(np.unique(y)) <= 256 and y.shape == ramp.shape
    inside = np.abs(ramp) * 32768 <= A.MU_CLIP
    # half a quantisation step: the step doubles per segment, (|x| + 132) / 32 in 16-bit units
    bound = (np.abs(ramp) * 32768 + A.MU_BIAS) / 32 / 32768
    assert np.all(np.abs(y - ramp)[inside] <= bound[inside] + 0.5 / 32768)  # + rounding to 16 bits
    assert np.max(np.abs(y - ramp)) < 0.02
    # every code decodes to a value inside its own interval; only "-0" (0x7F) comes back as "+0" (0xFF)
    all_codes = np.arange(256, dtype=np.uint8)
    again = A.mu_law_encode(A.mu_law_decode(all_codes))
    assert np.flatnonzero(again != all_codes).tolist() == [0x7F] and again[0x7F] == 0xFF


# --- room --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rt60", [0.25, 0.6, 1.2])
def test_room_impulse_response_decays_at_the_requested_rt60(rt60):
    h = A.room_impulse_response(rt60, np.random.default_rng(1))
    assert schroeder_rt60(h) == pytest.approx(rt60, rel=0.2)
    assert np.sum(h.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-4)


def test_reverb_keeps_the_direct_path_and_adds_the_tail_at_its_ratio():
    impulse = np.zeros(SR, np.float32)
    impulse[100] = 1.0
    for drr in (0.0, 10.0):
        y = A.reverb(impulse, 0.5, drr, np.random.default_rng(2))
        assert y.shape == impulse.shape and np.max(np.abs(y[:100])) < 1e-6  # causal: nothing before the onset
        tail = np.sum(y[101:].astype(np.float64) ** 2)  # all but the tail's first tap, under the direct path
        assert y[100] == pytest.approx(1.0, abs=0.1) and 10 * np.log10(1.0 / tail) == pytest.approx(drr, abs=0.3)
    far = A.far_field(impulse, 12.0, 0.5, 0.0, np.random.default_rng(2))
    near = A.reverb(impulse, 0.5, 0.0, np.random.default_rng(2))
    assert np.allclose(far, near * 10 ** (-12 / 20), atol=1e-7)


# --- level, noise, crop ------------------------------------------------------------------------

@pytest.mark.parametrize("snr", [0.0, 5.0, 12.5, 20.0])
def test_noise_is_added_at_the_requested_snr(snr):
    x = _tone(440, 2.0)
    short_noise = _noise(0.3, seed=3)  # shorter than x: repeated
    y = A.add_noise(x, short_noise, snr, np.random.default_rng(4))
    n = (y - x).astype(np.float64)
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(n**2))
    assert measured == pytest.approx(snr, abs=0.5)
    assert np.array_equal(A.add_noise(np.zeros(100, np.float32), short_noise, snr, np.random.default_rng(0)),
                          np.zeros(100, np.float32))


def test_gain_then_clipping_bounds_the_waveform():
    x = _tone(300, amp=0.5)
    y = A.gain_clip(x, 12.0, ceiling=0.8)
    assert np.max(np.abs(y)) <= 0.8 and np.max(np.abs(y)) == pytest.approx(0.8)
    scaled = x * 10 ** (12 / 20)
    under = np.abs(scaled) < 0.8
    assert np.allclose(y[under], scaled[under], atol=1e-6) and np.all(np.abs(y[~under]) == np.float32(0.8))
    assert np.allclose(A.gain_clip(x, -6.0), x * 10 ** (-6 / 20), atol=1e-7)


def test_right_edge_crop_ends_at_a_random_point_inside_the_clip():
    x = np.arange(5 * SR, dtype=np.float32)
    ends = set()
    for seed in range(20):
        y, start, end = A.right_edge_crop(x, np.random.default_rng(seed), SR, 3 * SR)
        assert np.array_equal(y, x[start:end]) and SR <= end <= len(x) and 0 < end - start <= 3 * SR
        assert start == max(0, end - 3 * SR)
        ends.add(end)
    assert len(ends) > 15
    short = x[: SR // 2]
    assert A.right_edge_crop(short, np.random.default_rng(0), SR)[1:] == (0, len(short))


# --- codec -------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ["libopus", "libmp3lame"])
def test_low_bitrate_codec_keeps_length_and_timing(encoder):
    if encoder not in A.ffmpeg_encoders():
        pytest.skip(f"ffmpeg lacks {encoder}")
    x = _tone(700, 2.0) + _noise(2.0, amp=0.01)
    y = A.codec(x, encoder, 16)
    assert y.shape == x.shape and np.isfinite(y).all()
    assert np.corrcoef(x[SR // 4 : -SR // 4], y[SR // 4 : -SR // 4])[0, 1] > 0.95  # aligned: no codec delay left
    assert A.codec_delay(y, x) == 0


def test_a_missing_encoder_is_skipped_and_counted():
    aug = A.Augmenter(A.AugmentConfig(**_only("p_codec"), codecs=("libnosuchcodec",)), seed=0)
    x = _tone(500)
    y, applied = aug(x)
    assert applied == [] and np.array_equal(y, x)
    assert aug.skipped == {"codec: ffmpeg lacks the libnosuchcodec encoder": 1}


# --- the chain ---------------------------------------------------------------------------------

def _only(*names: str) -> dict:
    """An AugmentConfig's keyword arguments with every probability 0 except the named ones (1)."""
    probs = [f for f in A.AugmentConfig.__dataclass_fields__ if f.startswith("p_")]
    return {p: 1.0 if p in names else 0.0 for p in probs}


def test_same_seed_same_output_and_record():
    cfg = A.AugmentConfig(p_reverb=0.7, p_noise=0.7, p_gain=0.7, p_clip=0.5, p_band_limit=0.5, p_mu_law=0.5,
                          p_codec=0.0, p_right_crop=0.5)
    x, bed = _tone(440, 3.0) + _noise(3.0), _noise(5.0, seed=9)
    runs = []
    for _ in range(2):
        aug = A.Augmenter(cfg, seed=123)
        runs.append([aug(x, bed) for _ in range(5)])
    for (y1, r1), (y2, r2) in zip(*runs):
        assert np.array_equal(y1, y2) and r1 == r2
    other = A.Augmenter(cfg, seed=124)
    assert any(not np.array_equal(y, other(x, bed)[0]) for y, _ in runs[0])


def test_output_length_is_the_input_length_unless_cropped():
    x, bed = _tone(440, 4.0), _noise(1.0)
    everything = A.AugmentConfig(**{**_only(*[p for p in _only() if p != "p_far_field"]), "p_codec": 0.0})
    for seed in range(6):
        y, applied = A.Augmenter(everything, seed=seed)(x, bed)
        crop = next((a for a in applied if a["name"] == "right_crop"), None)
        assert len(y) == (crop["end"] - crop["start"] if crop else len(x))
        assert [a["name"] for a in applied][:6] == ["reverb", "noise", "gain", "clip", "band_limit", "mu_law"]
    y, applied = A.Augmenter(A.AugmentConfig(**_only("p_far_field", "p_noise", "p_gain")), seed=0)(x, bed)
    assert len(y) == len(x) and [a["name"] for a in applied][:3] == ["far_field", "noise", "gain"]


@pytest.mark.parametrize("x", [np.zeros(16000, np.float32), np.ones(16000, np.float32),
                               np.sign(_tone(50)), _noise(0.001), np.zeros(0, np.float32)],
                         ids=["silence", "dc", "full-scale square", "16 samples", "empty"])
def test_no_nan_and_full_scale_at_most(x):
    cfg = A.AugmentConfig(**_only(*[p for p in _only() if p not in ("p_far_field",)]))
    for seed in range(3):
        y, _ = A.Augmenter(cfg, seed=seed)(x, _noise(0.5))
        assert np.isfinite(y).all() and (len(y) == 0 or np.max(np.abs(y)) <= 1.0)


def test_bad_config_and_bad_input_are_one_line_errors():
    with pytest.raises(ValueError, match="p_noise must be a probability"):
        A.AugmentConfig(p_noise=1.5)
    with pytest.raises(ValueError, match=r"snr_db must be a \(low, high\) range"):
        A.AugmentConfig(snr_db=(20.0, 0.0))
    with pytest.raises(ValueError, match="NaN or inf"):
        A.Augmenter()(np.array([0.0, np.nan], np.float32))
