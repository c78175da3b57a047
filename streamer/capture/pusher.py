"""What every capture worker shares: the ZeroMQ PUSH socket, frame numbering and time, pacing.

A worker hands `Pusher.push` chunks of any length; the pusher cuts them into frames of exactly
`frame_samples` (the last one of a finite source may be shorter), stamps each frame with the
capture time of its first sample, numbers it within this run's random epoch and sends it.

Sending never blocks a live source: when the engine is gone or slow (ZMQ_IMMEDIATE: nothing is
queued for an absent peer; SNDHWM frames at most for a slow one) the frame is dropped and counted,
and it still uses up its sequence number, so the engine sees the gap. An offline source
(`block=True`, e.g. `file --fast`) waits for room instead, and so runs as fast as the engine reads.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from dataclasses import dataclass

import numpy as np
import zmq

from streamer.wire import (
    MAX_FRAME_SECONDS,
    MAX_PAYLOAD_BYTES,
    Frame,
    SampleFormat,
    to_wire_dtype,
    validate_stream_id,
)

log = logging.getLogger("streamer.capture")

NS_PER_S = 1_000_000_000
DEFAULT_FRAME_MS = 100  # 10 frames a second: latency vs per-message overhead
MIN_FRAME_MS, MAX_FRAME_MS = 10, MAX_FRAME_SECONDS * 1000
DEFAULT_SNDHWM = 50  # frames queued for a slow engine: 5 s of audio at 100 ms frames
DEFAULT_LINGER_MS = 200  # on stop/kill: give queued frames 0.2 s, then drop them
DRAIN_LINGER_MS = 5000  # at the natural end of a finite source: give the engine 5 s to take the rest
DROP_LOG_INTERVAL_NS = 10 * NS_PER_S  # at most one "dropping frames" warning per 10 s


class SourceError(Exception):
    """The source cannot be opened or read; the CLI prints the one-line message and exits `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def frame_samples_for(sample_rate: int, frame_ms: int) -> int:
    """Samples per channel in one frame: 1600 at 16 kHz and 100 ms (rounded where not whole, e.g. 11025 Hz)."""
    return max(1, round(sample_rate * frame_ms / 1000))


@dataclass
class PusherStats:
    frames_sent: int = 0
    frames_dropped: int = 0
    samples_sent: int = 0  # per channel
    bytes_sent: int = 0
    reconnects: int = 0  # a worker whose source reconnects counts them here (exported as a metric)
    device_errors: int = 0  # a worker whose device reports errors or overflows counts them here


class Pusher:
    """PUSH socket + framing for one stream. Use as a context manager, or call close().

    curve: (engine public key, this worker's public key, its secret key), Z85: CURVE encryption
    and authentication toward an engine with `outputs.curve`; None: plain TCP."""

    def __init__(
        self,
        endpoint: str,
        stream_id: str,
        sample_rate: int,
        channels: int,
        *,
        frame_ms: int = DEFAULT_FRAME_MS,
        sample_format: SampleFormat = SampleFormat.INT16,
        sndhwm: int = DEFAULT_SNDHWM,
        linger_ms: int = DEFAULT_LINGER_MS,
        block: bool = False,
        stop: threading.Event | None = None,
        epoch: int | None = None,
        curve: tuple[bytes, bytes, bytes] | None = None,
    ):
        self.stream_id = validate_stream_id(stream_id)
        self.sample_rate = sample_rate
        self.channels = channels
        self.sample_format = sample_format
        self.frame_samples = frame_samples_for(sample_rate, frame_ms)
        if self.frame_samples * channels * sample_format.itemsize > MAX_PAYLOAD_BYTES:
            raise SourceError(
                f"--frame-ms {frame_ms} at {sample_rate} Hz x {channels} ch exceeds {MAX_PAYLOAD_BYTES} bytes"
            )
        self.block = block
        self.linger_ms = linger_ms
        self.epoch = secrets.randbits(32) if epoch is None else epoch  # new per run: the engine sees restarts
        self.seq = 0  # sequence number of the next frame
        self.stats = PusherStats()
        self._stop = stop or threading.Event()
        self._pending: list[np.ndarray] = []  # (n, channels) wire-dtype chunks not yet framed
        self._pending_n = 0
        self._next_index = 0  # stream index (samples per channel) of the next pushed sample
        self._anchors: collections.deque[tuple[int, int]] = collections.deque()  # (sample index, mono ns)
        self._last_drop_log = 0
        self._drops_logged = 0
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.LINGER, linger_ms)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only for a connected engine: none = drop now
        if curve is not None:  # (engine public, our public, our secret): encrypted, and the engine checks our key
            self._sock.curve_serverkey, self._sock.curve_publickey, self._sock.curve_secretkey = curve
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as e:
            self.close()
            raise SourceError(f"cannot connect to endpoint {endpoint!r}: {e}") from None
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLOUT)

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def push(self, samples: np.ndarray, mono_ns: int | None = None) -> None:
        """Queue samples and send every full frame.

        samples: (n, channels) or (n,) int16, or float in [-1, 1].
        mono_ns: time.monotonic_ns() at which the first sample was captured; default: the chunk
        ends now. Frames are stamped from these anchors plus sample counts, so they do not drift.
        """
        samples = np.asarray(samples)
        if samples.ndim == 1:
            samples = samples[:, None]
        if samples.ndim != 2 or samples.shape[1] != self.channels:
            raise ValueError(f"expected samples of shape (n, {self.channels}), got {samples.shape}")
        n = len(samples)
        if n == 0:
            return
        if mono_ns is None:
            mono_ns = time.monotonic_ns() - n * NS_PER_S // self.sample_rate
        self._anchors.append((self._next_index, mono_ns))
        self._next_index += n
        self._pending.append(to_wire_dtype(samples, self.sample_format))
        self._pending_n += n
        if self._pending_n >= self.frame_samples:
            buf = np.concatenate(self._pending)
            n_full = len(buf) // self.frame_samples * self.frame_samples
            for start in range(0, n_full, self.frame_samples):
                self._emit(buf[start : start + self.frame_samples])
            self._pending = [buf[n_full:]] if n_full < len(buf) else []
            self._pending_n = len(buf) - n_full

    def flush(self) -> None:
        """Send the partial frame held back, if any (end of a source, or before a discontinuity)."""
        if self._pending_n:
            self._emit(np.concatenate(self._pending))
            self._pending, self._pending_n = [], 0

    def _emit(self, data: np.ndarray) -> None:
        start = self._next_index - self._pending_n  # stream index of data[0]
        while len(self._anchors) > 1 and self._anchors[1][0] <= start:
            self._anchors.popleft()
        anchor_index, anchor_ns = self._anchors[0]
        mono_ns = anchor_ns + (start - anchor_index) * NS_PER_S // self.sample_rate
        self._pending_n -= len(data)
        mono_to_wall = time.time_ns() - time.monotonic_ns()  # read per frame: follows NTP steps
        frame = Frame(
            stream_id=self.stream_id,
            epoch=self.epoch,
            seq=self.seq,
            capture_mono_ns=max(0, mono_ns),
            capture_wall_ns=max(0, mono_ns + mono_to_wall),
            sample_rate=self.sample_rate,
            channels=self.channels,
            sample_format=self.sample_format,
            payload=data.tobytes(),
        )
        self.seq += 1
        if self.send(frame.encode()):
            self.stats.frames_sent += 1
            self.stats.samples_sent += len(data)
        else:
            self._count_drop()

    def send(self, message: bytes) -> bool:
        """Send one encoded frame; False if dropped (no engine / queue full, or stopping while blocked)."""
        while True:
            try:
                self._sock.send(message, zmq.NOBLOCK, copy=False)
                self.stats.bytes_sent += len(message)
                return True
            except zmq.Again:
                if not self.block or self._stop.is_set():
                    return False
            self._poller.poll(100)  # block=True: wait for room, waking to check the stop flag

    def _count_drop(self) -> None:
        self.stats.frames_dropped += 1
        now = time.monotonic_ns()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_NS:
            new = self.stats.frames_dropped - self._drops_logged
            log.warning(
                "engine not taking frames (not connected or queue full): dropped %d frame(s), %d in all",
                new,
                self.stats.frames_dropped,
            )
            self._last_drop_log, self._drops_logged = now, self.stats.frames_dropped

    def finish(self) -> None:
        """Natural end of a finite source: send the last partial frame, give the engine time to take
        what is queued (DRAIN_LINGER_MS), close."""
        self.flush()
        self.close(linger_ms=max(self.linger_ms, DRAIN_LINGER_MS))

    def close(self, linger_ms: int | None = None) -> None:
        if self._ctx.closed:
            return
        if not self._sock.closed:
            self._sock.close(linger=self.linger_ms if linger_ms is None else linger_ms)
        self._ctx.term()
        s = self.stats
        log.info(
            "stream %s epoch %08x: sent %d frames (%.1f s of audio), dropped %d",
            self.stream_id,
            self.epoch,
            s.frames_sent,
            s.samples_sent / self.sample_rate,
            s.frames_dropped,
        )


def pusher_from_args(args, sample_rate: int, channels: int, stop: threading.Event, block: bool) -> Pusher:
    """The worker's Pusher, configured from the CLI's common options (see cli.build_parser);
    handed to `args.on_pusher` when the CLI set one (the worker's metrics, --metrics-port)."""
    pusher = Pusher(
        args.endpoint,
        args.stream,
        sample_rate,
        channels,
        frame_ms=args.frame_ms,
        sample_format=SampleFormat[args.format.upper()],
        sndhwm=args.sndhwm,
        linger_ms=args.linger_ms,
        block=block,
        stop=stop,
        curve=getattr(args, "curve", None),
    )
    on_pusher = getattr(args, "on_pusher", None)
    if on_pusher is not None:
        on_pusher(pusher)
    return pusher


class Pacer:
    """Real-time pacing by the monotonic clock: sample k of the stream is due at t0 + k / rate.

    Waiting for absolute deadlines (not sleeping one frame per frame) keeps the long-run rate
    exact whatever each iteration costs.
    """

    def __init__(self, sample_rate: int, stop: threading.Event):
        self.sample_rate = sample_rate
        self.stop = stop
        self.t0_ns = time.monotonic_ns()

    def time_of(self, sample_index: int) -> int:
        """Monotonic ns at which `sample_index` is captured in real time."""
        return self.t0_ns + sample_index * NS_PER_S // self.sample_rate

    def wait_until(self, sample_index: int) -> bool:
        """Wait until sample_index is due. False if stopped meanwhile."""
        delay_ns = self.time_of(sample_index) - time.monotonic_ns()
        if delay_ns > 0:
            self.stop.wait(delay_ns / NS_PER_S)
        return not self.stop.is_set()
