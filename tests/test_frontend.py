"""The front end: streaming equals batch, patch layout, value range, one-line errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encoder import frontend as fe


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def test_constants_show_their_derivation():
    assert fe.FRAMES_PER_SECOND == 100
    assert fe.FREQ_PATCHES == 4
    assert fe.SECONDS_PER_COLUMN == pytest.approx(0.16)
    # the recipe's token counts: 10 s -> 62 columns -> 248 tokens; 30 s -> ~748 tokens
    assert fe.n_tokens(10 * fe.FRAMES_PER_SECOND) == 248
    assert fe.n_tokens(30 * fe.FRAMES_PER_SECOND) == 748


def test_n_samples_give_n_over_hop_frames():
    for n in [0, 159, 160, 399, 400, 16000, 16159]:
        assert fe.log_mel(_noise(max(n, 1))[:n] if n else np.zeros(1, np.float32)).shape[1] == max(n, 1) // 160


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=12000),
    cuts=st.lists(st.integers(min_value=0, max_value=12000), max_size=8),
    seed=st.integers(0, 2**16),
)
def test_streaming_equals_batch_for_any_chunking(n, cuts, seed):
    audio = _noise(n, seed)
    bounds = sorted({0, n, *[c for c in cuts if c < n]})
    stream = fe.StreamingLogMel()
    parts = [stream(audio[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    streamed = np.concatenate(parts, axis=1)
    batch = fe.log_mel(audio)
    assert streamed.shape == batch.shape
    np.testing.assert_allclose(streamed, batch, atol=1e-5)
    assert stream.frames_emitted == batch.shape[1]
    assert stream.pending_samples == n % fe.HOP_LENGTH


def test_reset_starts_a_new_signal():
    stream = fe.StreamingLogMel()
    stream(_noise(5000, 1))
    stream.reset()
    audio = _noise(3200, 2)
    np.testing.assert_allclose(stream(audio), fe.log_mel(audio), atol=1e-5)


def test_value_range_on_a_tone_and_silence():
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    mel = fe.log_mel(tone)
    assert mel.dtype == np.float32 and mel.shape == (64, 100)
    assert -2.0 < mel.min() and mel.max() < 2.5
    # the band holding 1 kHz is the loudest one
    loud_band = int(mel[:, 10:].mean(axis=1).argmax())
    centres = fe._mel_to_hz(np.linspace(fe._hz_to_mel(np.array(0.0)), fe._hz_to_mel(np.array(8000.0)), 66))[1:-1]
    assert abs(centres[loud_band] - 1000) < 150
    silence = fe.log_mel(np.zeros(16000, np.float32))
    assert np.allclose(silence, (np.log10(fe.LOG_FLOOR) + fe.LOG_OFFSET) / fe.LOG_SCALE)


def test_patches_are_time_major_16x16():
    mel = np.arange(64 * 40, dtype=np.float32).reshape(64, 40)
    p = fe.patchify(mel)
    assert p.shape == (2 * 4, 256)  # 40 frames -> 2 full columns, 4 bands each
    # token 5 = column 1, band 1: mel rows 16..31, frames 16..31
    np.testing.assert_array_equal(p[5].reshape(16, 16), mel[16:32, 16:32])
    batch = fe.patchify(np.stack([mel, mel + 1]))
    assert batch.shape == (2, 8, 256)
    np.testing.assert_array_equal(batch[1], p + 1)


@pytest.mark.parametrize(
    "audio, rate, message",
    [
        (np.zeros(16000, np.float32), 44100, "expected 16000 Hz, got 44100 Hz"),
        (np.array([0.0, np.nan, 1.0], np.float32), 16000, "1 NaN or infinite samples"),
        (np.array([0.0, np.inf], np.float32), 16000, "NaN or infinite"),
        (np.zeros(0, np.float32), 16000, "empty audio"),
        (np.zeros(16000, np.int16), 16000, "expected float32 samples in [-1, 1], got int16"),
        (np.zeros((16000, 2), np.float32), 16000, "expected mono audio"),
    ],
)
def test_bad_input_gives_one_line_error(audio, rate, message):
    with pytest.raises(fe.AudioError) as err:
        fe.log_mel(audio, rate)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("n", [0, 1, 1279, 1280, 2559, 2560, 2561, 3839, 3840, 5120])
def test_a_clip_is_scored_in_the_nearest_whole_number_of_columns_and_at_least_one(n):
    padded = fe.pad_to_columns(np.full(n, 0.1, np.float32))
    columns = fe.log_mel(padded).shape[1] // fe.PATCH_FRAMES
    assert columns == fe.scored_columns(n) == max(1, round(n / fe.COLUMN_SAMPLES + 1e-9))  # halves round up
    assert np.all(padded[:n] == np.float32(0.1)) and not np.any(padded[n:])  # the clip, then silence
