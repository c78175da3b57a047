"""Wire format of one audio frame, sent by capture workers to the engine (ZeroMQ PUSH -> PULL).

One ZeroMQ message holds one frame: a little-endian header, then interleaved samples.

    offset  size  field
    0       4     magic            b"SLAP"
    4       1     version          u8, WIRE_VERSION
    5       1     sample format    u8, SampleFormat (1 = int16, 2 = float32)
    6       2     channels         u16, 1..8
    8       4     sample rate      u32, Hz, 8000..192000
    12      1     stream id length u8, 1..64
    13      n     stream id        ascii [A-Za-z0-9_.-]: safe in ZeroMQ topics, metric labels, paths
    13+n    4     epoch            u32, random per worker start: a new epoch means the worker restarted
    17+n    8     sequence         u64, frame number within the epoch, from 0; a gap means dropped frames
    25+n    8     capture mono ns  u64, time.monotonic_ns() of the frame's first sample (worker's clock)
    33+n    8     capture wall ns  u64, time.time_ns() of the frame's first sample
    41+n    4     sample count     u32, samples per channel
    45+n    ...   payload          sample_count * channels * itemsize bytes, little-endian, interleaved

`decode` validates every field and raises `WireError` (never anything else) for any input,
so the engine can count bad frames by `WireError.reason` and carry on.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"SLAP"
WIRE_VERSION = 1
MIN_CHANNELS, MAX_CHANNELS = 1, 8
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 192000  # Hz: telephone to high-resolution audio
MAX_STREAM_ID_LEN = 64  # characters (= bytes: the charset is ascii)
MAX_FRAME_SECONDS = 10  # one frame never holds more than 10 s of audio ...
MAX_PAYLOAD_BYTES = (
    4 * 1024 * 1024
)  # ... nor more than 4 MiB of samples (10 s of 48 kHz stereo f32 = 3.7 MiB)
INT16_FULL_SCALE = 32768  # int16 sample / 32768 -> float in [-1, 1)

_PREFIX = struct.Struct("<4sBBHIB")  # magic, version, format, channels, rate, stream id length
_SUFFIX = struct.Struct("<IQQQI")  # epoch, sequence, mono ns, wall ns, sample count
MIN_HEADER_BYTES = _PREFIX.size + 1 + _SUFFIX.size  # 46 bytes with a 1-character stream id
MAX_HEADER_BYTES = _PREFIX.size + MAX_STREAM_ID_LEN + _SUFFIX.size  # 109 bytes
MAX_FRAME_BYTES = MAX_HEADER_BYTES + MAX_PAYLOAD_BYTES  # 4194413 bytes
U32_MAX, U64_MAX = 2**32 - 1, 2**64 - 1

_STREAM_ID_RE = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_STREAM_ID_LEN}}}")

# Every reason `decode` (or Frame validation) can give; stable: the engine uses them as metric labels.
WIRE_ERROR_REASONS = (
    "truncated",  # shorter than its header
    "bad_magic",  # not a frame of this protocol
    "bad_version",  # a version this build does not read
    "bad_format",  # unknown sample format code
    "bad_channels",  # outside MIN_CHANNELS..MAX_CHANNELS
    "bad_sample_rate",  # outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE
    "bad_stream_id",  # empty, too long, not ascii, or outside [A-Za-z0-9_.-]
    "bad_field",  # epoch / sequence / timestamp out of its integer range (encode side only)
    "empty",  # sample count 0
    "too_large",  # over MAX_FRAME_SECONDS or MAX_PAYLOAD_BYTES
    "payload_mismatch",  # payload length != sample_count * channels * itemsize
    "bad_samples",  # float32 payload holds NaN or inf
)


class WireError(ValueError):
    """A frame that cannot be encoded or decoded.

    reason: short stable identifier from WIRE_ERROR_REASONS (a metric label).
    message: one line for logs.
    """

    def __init__(self, reason: str, message: str):
        assert reason in WIRE_ERROR_REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class SampleFormat(enum.IntEnum):
    INT16 = 1
    FLOAT32 = 2

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<i2") if self is SampleFormat.INT16 else np.dtype("<f4")

    @property
    def itemsize(self) -> int:
        return 2 if self is SampleFormat.INT16 else 4


def validate_stream_id(stream_id: object) -> str:
    """Return stream_id if it is 1-64 characters of [A-Za-z0-9_.-], else raise WireError("bad_stream_id")."""
    if not isinstance(stream_id, str) or not _STREAM_ID_RE.fullmatch(stream_id):
        shown = repr(stream_id)[:80]
        raise WireError(
            "bad_stream_id", f"stream id {shown} is not 1-{MAX_STREAM_ID_LEN} characters of [A-Za-z0-9_.-]"
        )
    return stream_id


def _check_int(name: str, value: object, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise WireError("bad_field", f"{name} must be an int in [0, {hi}], got {value!r}"[:200])


@dataclass(frozen=True)
class Frame:
    """One frame of interleaved audio from one stream.

    payload: little-endian interleaved samples in `sample_format`, (sample_count, channels) row-major.
    Times are integers: nanoseconds for timestamps, samples for lengths.
    """

    stream_id: str
    epoch: int  # u32, random per worker start
    seq: int  # u64, 0, 1, 2, ... within an epoch
    capture_mono_ns: int  # u64, monotonic clock of the worker at the first sample
    capture_wall_ns: int  # u64, wall clock at the first sample
    sample_rate: int  # Hz
    channels: int
    sample_format: SampleFormat
    payload: bytes

    def __post_init__(self) -> None:
        validate_stream_id(self.stream_id)
        _check_int("epoch", self.epoch, U32_MAX)
        _check_int("seq", self.seq, U64_MAX)
        _check_int("capture_mono_ns", self.capture_mono_ns, U64_MAX)
        _check_int("capture_wall_ns", self.capture_wall_ns, U64_MAX)
        if not isinstance(self.payload, bytes):
            raise WireError("bad_field", f"payload must be bytes, got {type(self.payload).__name__}")
        try:
            fmt = SampleFormat(self.sample_format)
        except ValueError:
            raise WireError("bad_format", f"unknown sample format {self.sample_format!r}") from None
        object.__setattr__(self, "sample_format", fmt)
        _check_audio_fields(fmt, self.channels, self.sample_rate, len(self.payload), None)
        if fmt is SampleFormat.FLOAT32:
            _check_finite(self.payload)

    @property
    def sample_count(self) -> int:
        """Samples per channel."""
        return len(self.payload) // (self.channels * self.sample_format.itemsize)

    @property
    def duration_ns(self) -> int:
        return self.sample_count * 1_000_000_000 // self.sample_rate

    @classmethod
    def from_samples(
        cls,
        samples: np.ndarray,
        *,
        stream_id: str,
        epoch: int,
        seq: int,
        capture_mono_ns: int,
        capture_wall_ns: int,
        sample_rate: int,
        sample_format: SampleFormat = SampleFormat.INT16,
    ) -> Frame:
        """Build a frame from samples: (n, channels) or (n,) int16, or float in [-1, 1] (clipped)."""
        samples = np.asarray(samples)
        if samples.ndim == 1:
            samples = samples[:, None]
        if samples.ndim != 2:
            raise WireError("bad_channels", f"expected samples of shape (n, channels), got {samples.shape}")
        data = to_wire_dtype(samples, sample_format)
        return cls(
            stream_id=stream_id,
            epoch=epoch,
            seq=seq,
            capture_mono_ns=capture_mono_ns,
            capture_wall_ns=capture_wall_ns,
            sample_rate=sample_rate,
            channels=samples.shape[1],
            sample_format=sample_format,
            payload=data.tobytes(),
        )

    def samples(self) -> np.ndarray:
        """Samples as float32 in [-1, 1], shape (sample_count, channels)."""
        x = np.frombuffer(self.payload, dtype=self.sample_format.dtype).reshape(-1, self.channels)
        if self.sample_format is SampleFormat.INT16:
            return x.astype(np.float32) / np.float32(INT16_FULL_SCALE)
        return x.astype(np.float32)  # a writable native-endian copy

    def encode(self) -> bytes:
        sid = self.stream_id.encode("ascii")
        return b"".join(
            (
                _PREFIX.pack(
                    MAGIC, WIRE_VERSION, self.sample_format, self.channels, self.sample_rate, len(sid)
                ),
                sid,
                _SUFFIX.pack(
                    self.epoch, self.seq, self.capture_mono_ns, self.capture_wall_ns, self.sample_count
                ),
                self.payload,
            )
        )

    @classmethod
    def decode(cls, buf: bytes | bytearray | memoryview) -> Frame:
        return decode(buf)


def to_wire_dtype(samples: np.ndarray, sample_format: SampleFormat) -> np.ndarray:
    """Convert (n, ch) int16 or float samples to the wire dtype (little-endian), C-contiguous.

    Float -> int16 scales by 32768, rounds and clips to [-32768, 32767]. NaN -> 0, +-inf -> +-1.
    """
    if sample_format is SampleFormat.INT16:
        if samples.dtype == np.int16:
            return np.ascontiguousarray(samples, dtype="<i2")
        if samples.dtype.kind != "f":
            raise WireError("bad_format", f"expected int16 or float samples, got {samples.dtype}")
        scaled = np.rint(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0) * INT16_FULL_SCALE)
        return np.clip(scaled, -INT16_FULL_SCALE, INT16_FULL_SCALE - 1).astype("<i2")
    if samples.dtype == np.int16:
        return (samples.astype(np.float32) / np.float32(INT16_FULL_SCALE)).astype("<f4")
    if samples.dtype.kind != "f":
        raise WireError("bad_format", f"expected int16 or float samples, got {samples.dtype}")
    return np.ascontiguousarray(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), dtype="<f4")


def _check_audio_fields(
    fmt: SampleFormat, channels: int, sample_rate: int, payload_bytes: int, sample_count: int | None
) -> None:
    """Shared by Frame validation and decode. sample_count=None: derive it from payload_bytes."""
    if not isinstance(channels, int) or not MIN_CHANNELS <= channels <= MAX_CHANNELS:
        raise WireError("bad_channels", f"channels must be {MIN_CHANNELS}-{MAX_CHANNELS}, got {channels!r}")
    if not isinstance(sample_rate, int) or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise WireError(
            "bad_sample_rate",
            f"sample rate must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, got {sample_rate!r}",
        )
    bytes_per_sample = channels * fmt.itemsize
    if sample_count is None:
        if payload_bytes % bytes_per_sample:
            raise WireError(
                "payload_mismatch",
                f"payload of {payload_bytes} bytes is not whole samples of {channels} x {fmt.itemsize} bytes",
            )
        sample_count = payload_bytes // bytes_per_sample
    if sample_count == 0:
        raise WireError("empty", "frame holds no samples")
    if sample_count > MAX_FRAME_SECONDS * sample_rate or sample_count * bytes_per_sample > MAX_PAYLOAD_BYTES:
        raise WireError(
            "too_large",
            f"{sample_count} samples x {channels} ch at {sample_rate} Hz exceeds "
            f"{MAX_FRAME_SECONDS} s or {MAX_PAYLOAD_BYTES} bytes",
        )
    if payload_bytes != sample_count * bytes_per_sample:
        raise WireError(
            "payload_mismatch",
            f"payload is {payload_bytes} bytes, header says {sample_count} x {channels} x {fmt.itemsize}",
        )


def _check_finite(payload: bytes) -> None:
    if not np.isfinite(np.frombuffer(payload, dtype="<f4")).all():
        raise WireError("bad_samples", "float32 payload holds NaN or inf")


def decode(buf: bytes | bytearray | memoryview) -> Frame:
    """Parse and validate one frame. Raises WireError (only) on any malformed input."""
    try:
        view = memoryview(buf).cast("B")
    except TypeError:
        raise WireError("truncated", f"expected a bytes-like frame, got {type(buf).__name__}") from None
    n = len(view)
    if bytes(view[:4]) != MAGIC[: min(n, 4)]:
        raise WireError("bad_magic", f"frame starts with {bytes(view[:4])!r}, expected {MAGIC!r}")
    if n > MAX_FRAME_BYTES:
        raise WireError("too_large", f"frame of {n} bytes exceeds {MAX_FRAME_BYTES} bytes")
    if n < MIN_HEADER_BYTES:
        raise WireError("truncated", f"frame of {n} bytes is shorter than the {MIN_HEADER_BYTES}-byte header")
    _, version, fmt_code, channels, sample_rate, sid_len = _PREFIX.unpack_from(view, 0)
    if version != WIRE_VERSION:
        raise WireError("bad_version", f"wire version {version}, this build reads {WIRE_VERSION}")
    try:
        fmt = SampleFormat(fmt_code)
    except ValueError:
        raise WireError("bad_format", f"unknown sample format code {fmt_code}") from None
    if not 1 <= sid_len <= MAX_STREAM_ID_LEN:
        raise WireError("bad_stream_id", f"stream id length {sid_len} is not 1-{MAX_STREAM_ID_LEN}")
    header_bytes = _PREFIX.size + sid_len + _SUFFIX.size
    if n < header_bytes:
        raise WireError("truncated", f"frame of {n} bytes is shorter than its {header_bytes}-byte header")
    try:
        stream_id = bytes(view[_PREFIX.size : _PREFIX.size + sid_len]).decode("ascii")
    except UnicodeDecodeError:
        raise WireError("bad_stream_id", "stream id is not ascii") from None
    validate_stream_id(stream_id)
    epoch, seq, mono_ns, wall_ns, sample_count = _SUFFIX.unpack_from(view, _PREFIX.size + sid_len)
    payload_bytes = n - header_bytes
    _check_audio_fields(fmt, channels, sample_rate, payload_bytes, sample_count)
    return Frame(  # __post_init__ checks the float32 payload for NaN / inf
        stream_id=stream_id,
        epoch=epoch,
        seq=seq,
        capture_mono_ns=mono_ns,
        capture_wall_ns=wall_ns,
        sample_rate=sample_rate,
        channels=channels,
        sample_format=fmt,
        payload=bytes(view[header_bytes:]),
    )
