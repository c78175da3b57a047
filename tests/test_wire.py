"""The wire frame: exact round trips, and every malformed input is a WireError with a stable reason."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.wire import (
    MAGIC,
    MAX_FRAME_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_STREAM_ID_LEN,
    MIN_HEADER_BYTES,
    WIRE_ERROR_REASONS,
    Frame,
    SampleFormat,
    WireError,
    decode,
    validate_stream_id,
)

FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
stream_ids = st.text(alphabet=ID_CHARS, min_size=1, max_size=MAX_STREAM_ID_LEN)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


@st.composite
def frames(draw) -> Frame:
    fmt = draw(st.sampled_from(SampleFormat))
    channels = draw(st.integers(1, 8))
    n = draw(st.integers(1, 64))
    payload = draw(st.binary(min_size=n * channels * fmt.itemsize, max_size=n * channels * fmt.itemsize))
    if fmt is SampleFormat.FLOAT32:  # any bytes -> finite floats in [-1, 1]
        values = np.nan_to_num(np.frombuffer(payload, "<f4"), nan=0.0, posinf=1.0, neginf=-1.0)
        payload = np.clip(values, -1, 1).astype("<f4").tobytes()
    return Frame(
        stream_id=draw(stream_ids),
        epoch=draw(u32),
        seq=draw(u64),
        capture_mono_ns=draw(u64),
        capture_wall_ns=draw(u64),
        sample_rate=draw(st.integers(8000, 192000)),
        channels=channels,
        sample_format=fmt,
        payload=payload,
    )


def make_frame(**overrides) -> Frame:
    fields = dict(
        stream_id="kitchen.mic-1",
        epoch=7,
        seq=42,
        capture_mono_ns=123_456_789,
        capture_wall_ns=1_700_000_000_000_000_000,
        sample_rate=16000,
        channels=2,
        sample_format=SampleFormat.INT16,
        payload=np.arange(-8, 8, dtype="<i2").tobytes(),  # 8 samples x 2 channels
    )
    fields.update(overrides)
    return Frame(**fields)


def reason_of(buf) -> str:
    with pytest.raises(WireError) as info:
        decode(buf)
    assert "\n" not in info.value.message
    return info.value.reason


@settings(max_examples=300, deadline=None)
@given(frames())
def test_round_trip_is_exact(frame: Frame):
    buf = frame.encode()
    assert decode(buf) == frame
    assert decode(bytearray(buf)) == frame
    assert decode(memoryview(buf)) == frame
    x = frame.samples()
    assert x.dtype == np.float32 and x.shape == (frame.sample_count, frame.channels)
    assert np.all(np.abs(x) <= 1.0)


def test_layout_and_samples():
    frame = make_frame()
    buf = frame.encode()
    assert buf[:4] == MAGIC and len(buf) == MIN_HEADER_BYTES - 1 + len("kitchen.mic-1") + 32
    assert frame.sample_count == 8 and frame.duration_ns == 500_000
    x = frame.samples()
    np.testing.assert_array_equal(x, np.arange(-8, 8).reshape(8, 2) / 32768)


def test_from_samples_quantises_and_clips():
    x = np.array([[0.0], [0.5], [-1.0], [1.5], [-2.0], [np.nan]], dtype=np.float32)
    kw = dict(stream_id="s", epoch=1, seq=0, capture_mono_ns=0, capture_wall_ns=0, sample_rate=16000)
    f16 = Frame.from_samples(x, **kw)
    assert np.frombuffer(f16.payload, "<i2").tolist() == [0, 16384, -32768, 32767, -32768, 0]
    f32 = Frame.from_samples(x[:3, 0], sample_format=SampleFormat.FLOAT32, **kw)
    np.testing.assert_array_equal(f32.samples()[:, 0], [0.0, 0.5, -1.0])


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda b: b[:10], "truncated"),
        (lambda b: b"", "truncated"),
        (lambda b: b[:2], "truncated"),
        (lambda b: b"XLAP" + b[4:], "bad_magic"),
        (lambda b: b[:4] + bytes([2]) + b[5:], "bad_version"),
        (lambda b: b[:5] + bytes([9]) + b[6:], "bad_format"),
        (lambda b: b[:6] + struct.pack("<H", 0) + b[8:], "bad_channels"),
        (lambda b: b[:6] + struct.pack("<H", 9) + b[8:], "bad_channels"),
        (lambda b: b[:8] + struct.pack("<I", 7999) + b[12:], "bad_sample_rate"),
        (lambda b: b[:8] + struct.pack("<I", 192001) + b[12:], "bad_sample_rate"),
        (lambda b: b[:12] + bytes([0]) + b[13:], "bad_stream_id"),
        (lambda b: b[:12] + bytes([65]) + b[13:], "bad_stream_id"),
        (lambda b: b[:13] + b"/" + b[14:], "bad_stream_id"),
        (lambda b: b[:13] + b"\xff" + b[14:], "bad_stream_id"),
        (lambda b: b[:-1], "payload_mismatch"),
        (lambda b: b + b"\x00\x00\x00\x00", "payload_mismatch"),
        (lambda b: b + bytes(MAX_FRAME_BYTES), "too_large"),
    ],
)
def test_each_corruption_has_its_reason(corrupt, reason):
    assert reason_of(corrupt(make_frame().encode())) == reason


def test_header_limits():
    good = make_frame().encode()
    count_at = len(good) - 8 * 2 * 2 - 4  # sample count field: just before the payload
    with_count = lambda n: good[:count_at] + struct.pack("<I", n) + good[count_at + 4 :]  # noqa: E731
    assert reason_of(with_count(0)) == "empty"
    assert reason_of(with_count(9)) == "payload_mismatch"
    assert reason_of(with_count(16000 * 10 + 1)) == "too_large"  # over 10 s
    assert reason_of(with_count(2**32 - 1)) == "too_large"
    big = make_frame(
        sample_rate=192000, channels=8, sample_format=SampleFormat.FLOAT32, payload=bytes(32 * 4)
    )
    # 192 kHz x 8 ch float32: 4 MiB is 0.68 s, so the byte limit bites before the 10 s one
    big_buf = big.encode()
    at = len(big_buf) - 32 * 4 - 4
    assert (
        reason_of(big_buf[:at] + struct.pack("<I", MAX_PAYLOAD_BYTES // 32 + 1) + big_buf[at + 4 :])
        == "too_large"
    )


def test_float_payload_must_be_finite():
    good = make_frame(
        sample_format=SampleFormat.FLOAT32, channels=1, payload=np.zeros(4, "<f4").tobytes()
    ).encode()
    bad = good[:-4] + np.array([np.inf], "<f4").tobytes()
    assert reason_of(bad) == "bad_samples"
    with pytest.raises(WireError, match="bad_samples"):
        make_frame(
            sample_format=SampleFormat.FLOAT32, channels=1, payload=np.array([0, np.nan], "<f4").tobytes()
        )


@pytest.mark.parametrize("value", [None, "hello", 3, [1, 2]])
def test_non_bytes_input_is_a_wire_error(value):
    assert reason_of(value) in WIRE_ERROR_REASONS


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("stream_id", "", "bad_stream_id"),
        ("stream_id", "a" * 65, "bad_stream_id"),
        ("stream_id", "cam 1", "bad_stream_id"),
        ("stream_id", "../etc", "bad_stream_id"),
        ("stream_id", "café", "bad_stream_id"),
        ("stream_id", "a\n", "bad_stream_id"),
        ("epoch", -1, "bad_field"),
        ("epoch", 2**32, "bad_field"),
        ("seq", 2**64, "bad_field"),
        ("capture_mono_ns", 1.5, "bad_field"),
        ("channels", 3, "payload_mismatch"),  # 32 bytes are not whole 3-channel int16 samples
        ("channels", 9, "bad_channels"),
        ("sample_rate", 4000, "bad_sample_rate"),
        ("sample_format", 7, "bad_format"),
        ("payload", b"", "empty"),
        ("payload", "text", "bad_field"),
    ],
)
def test_constructor_validates(field, value, reason):
    with pytest.raises(WireError) as info:
        make_frame(**{field: value})
    assert info.value.reason == reason


@given(st.text(max_size=70) | st.text(alphabet=ID_CHARS + "/ \n\x00é", max_size=70))
def test_stream_id_charset(text):
    ok = 1 <= len(text) <= 64 and all(c in ID_CHARS for c in text)
    if ok:
        assert validate_stream_id(text) == text
    else:
        with pytest.raises(WireError):
            validate_stream_id(text)


def check_decode_never_crashes(buf: bytes) -> None:
    """decode either returns a frame that re-encodes to the same bytes, or raises WireError."""
    try:
        frame = decode(buf)
    except WireError as e:
        assert e.reason in WIRE_ERROR_REASONS
        assert "\n" not in e.message
        return
    assert frame.encode() == bytes(buf)  # the encoding is canonical


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(buf):
    check_decode_never_crashes(buf)
    check_decode_never_crashes(MAGIC + bytes([1]) + buf)  # get past the magic and version


@FUZZ
@given(frames(), st.data())
def test_fuzz_mutated_frames(frame, data):
    buf = bytearray(frame.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "cut", "extend", "insert"]))
        i = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del buf[i:]
        elif op == "extend":
            buf += data.draw(st.binary(min_size=1, max_size=8))
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    check_decode_never_crashes(bytes(buf))
