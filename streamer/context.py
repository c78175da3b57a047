"""Per-stream context: 16 kHz audio chunks -> a sliding log-mel window, handed out once per hop.

`StreamContext` is fed float32 16 kHz mono chunks with their wire sequence numbers and epoch,
runs `encoder.frontend.StreamingLogMel` and keeps the log-mel frames in a fixed-size ring that
grows to `max_context_s` and then slides. Every `hop_s` of new audio a hop falls due and
`next_window()` returns the window: the newest whole patch columns, at most max_context_s.

Time is integer log-mel frames (10 ms) on the stream clock; seconds only in `seconds` and
`wall_time`. Windows start and end on patch-column boundaries (multiples of PATCH_FRAMES), so
column c of any window is stream column `window.first_column + c`: every hop's columns lie on one
grid and the detector can tell which ones it has already seen.

Sequence numbers and epochs (what the context does with them):
- seq <= the last seq of the current epoch: a late or duplicate chunk: dropped and counted;
- a seq jump within an epoch: a gap (frames lost on the wire or in a full queue), counted. Its
  length comes from the capture monotonic clock when given (else missing chunks x the last
  chunk's length). gap_policy "zero_fill" inserts that much silence, up to max_gap_s, so the
  window stays continuous and the stream clock exact; a longer gap, or policy "reset", resets;
- a new epoch (the worker restarted): reset. Chunks of an epoch already replaced are dropped.
A reset clears the mel state and the window and moves the stream clock forward by the time that
passed (wall clock across epochs, capture clock within one), rounded up to a whole column: the
clock never goes back, so event times stay ordered within an engine run. `push` reports a reset;
the caller should then flush the stream's detectors (their open events ended at the old clock).
A net worker that reconnects keeps its epoch and seq (see streamer/capture/net.py): the audio is
spliced without a gap, and the wall-clock mapping follows, as it is re-anchored on every chunk.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass

import numpy as np

from encoder.frontend import (
    COLUMN_SAMPLES,
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_MELS,
    PATCH_FRAMES,
    SAMPLE_RATE,
    StreamingLogMel,
    n_columns,
)

GAP_POLICIES = ("zero_fill", "reset")
MAX_CONTEXT_S = 30.0  # the encoder's longest training clip
RETIRED_EPOCHS = 8  # epochs remembered as replaced, so their late chunks cannot reset the context


class Ring:
    """A fixed-size ring over the last axis of an array, indexed by absolute position.

    Every element is stored twice (at i % capacity and i % capacity + capacity), so any run of the
    newest `capacity` elements is one contiguous view: a write costs two copies, a read none,
    and nothing is ever reallocated (no np.append growth).
    """

    def __init__(self, capacity: int, rows: int | None = None, dtype: type = np.float32):
        assert capacity > 0, capacity
        self.capacity = capacity
        shape = (2 * capacity,) if rows is None else (rows, 2 * capacity)
        self._data = np.zeros(shape, dtype)
        self.clear()

    def clear(self, end: int = 0) -> None:
        """Empty the ring; the next element written gets absolute position `end`."""
        self.end = end  # absolute position after the newest element
        self.count = 0  # elements held, <= capacity

    @property
    def start(self) -> int:
        """Absolute position of the oldest element held."""
        return self.end - self.count

    def write(self, block: np.ndarray) -> None:
        """block: (..., t) elements for positions [end, end + t); the oldest fall out."""
        t = block.shape[-1]
        cap = self.capacity
        if t > cap:
            self.end += t - cap
            block, t = block[..., -cap:], cap
        head = self.end % cap
        first = min(t, cap - head)
        for lo, part in ((head, block[..., :first]), (0, block[..., first:])):
            n = part.shape[-1]
            self._data[..., lo : lo + n] = part
            self._data[..., lo + cap : lo + cap + n] = part
        self.end += t
        self.count = min(self.count + t, cap)

    def view(self, start: int, stop: int) -> np.ndarray:
        """Read-only view of positions [start, stop), which must be held; valid until the next write."""
        if not self.start <= start <= stop <= self.end:
            raise IndexError(
                f"positions [{start}, {stop}) are not all held (ring holds [{self.start}, {self.end}))"
            )
        lo = start % self.capacity
        out = self._data[..., lo : lo + stop - start]
        out.flags.writeable = False
        return out


@dataclass
class ContextStats:
    """Counters since the context was made; the engine maps them onto metrics."""

    chunks: int = 0  # chunks accepted
    samples: int = 0  # samples accepted (zero fill not included)
    dropped_late: int = 0  # chunks with seq <= the last seq (duplicates, reordering), dropped
    dropped_stale_epoch: int = 0  # chunks from an epoch already replaced, dropped
    gaps: int = 0  # sequence gaps within an epoch
    missing_chunks: int = 0  # chunks lost in those gaps
    filled_samples: int = 0  # silence inserted for gaps
    resets: int = 0  # context cleared (new epoch, or a gap not zero-filled)
    epochs: int = 0  # epoch changes
    hops: int = 0  # windows handed out
    hops_skipped: int = 0  # hops that fell due while an earlier one was still untaken (caller behind)


@dataclass(frozen=True)
class Push:
    """What `StreamContext.push` did with one chunk."""

    accepted: bool  # False: late, duplicate or stale-epoch chunk, dropped
    reset: str | None = None  # "epoch" | "gap": the context was cleared before this chunk
    filled_samples: int = 0  # silence inserted before this chunk
    start_sample: int = 0  # stream-clock sample of the chunk's first sample (accepted chunks)


@dataclass(frozen=True)
class Window:
    """The log-mel window of one hop.

    mel: (N_MELS, T) float32, read-only view into the ring, valid until the next push (copy to keep);
    T = PATCH_FRAMES * n_columns. start_frame: stream frame of mel[:, 0], a multiple of PATCH_FRAMES.
    """

    mel: np.ndarray
    start_frame: int

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.mel.shape[1]

    @property
    def first_column(self) -> int:
        """Stream column index of the window's first column."""
        return self.start_frame // PATCH_FRAMES

    @property
    def n_columns(self) -> int:
        return self.mel.shape[1] // PATCH_FRAMES


class StreamContext:
    """Sliding log-mel context of one stream; see the module docstring.

    push(samples, seq=, epoch=, mono_ns=, wall_ns=) -> Push; hop_due; next_window() -> Window | None;
    window() -> Window (no hop bookkeeping); seconds(frame); wall_time(frame); stats.
    """

    def __init__(
        self,
        max_context_s: float = 10.0,
        hop_s: float = 0.5,
        gap_policy: str = "zero_fill",
        max_gap_s: float = 2.0,
    ):
        if not 0 < max_context_s <= MAX_CONTEXT_S:
            raise ValueError(f"max_context_s must be in (0, {MAX_CONTEXT_S}], got {max_context_s}")
        if gap_policy not in GAP_POLICIES:
            raise ValueError(f"gap_policy must be one of {GAP_POLICIES}, got {gap_policy!r}")
        # whole columns only: 10 s -> 62 columns = 992 frames
        self.window_frames = n_columns(round(max_context_s * FRAMES_PER_SECOND)) * PATCH_FRAMES
        self.hop_frames = round(hop_s * FRAMES_PER_SECOND)  # 50 for 0.5 s
        if not PATCH_FRAMES <= self.hop_frames <= self.window_frames:
            raise ValueError(
                f"hop_s must be {PATCH_FRAMES / FRAMES_PER_SECOND} s (one column) to max_context_s, got {hop_s}"
            )
        self.gap_policy = gap_policy
        self.max_gap_samples = round(max_gap_s * SAMPLE_RATE)
        # + one column of room for the newest partial column, so a full window always fits
        self._ring = Ring(self.window_frames + PATCH_FRAMES, rows=N_MELS)
        self._mel = StreamingLogMel()
        self.stats = ContextStats()
        self._epoch: int | None = None
        self._seq = -1
        self._retired: deque[int] = deque(maxlen=RETIRED_EPOCHS)
        self._last_chunk = 0  # samples in the last chunk (gap estimate without timestamps)
        self._next_mono: int | None = None  # capture clock (ns) expected for the next chunk
        self._next_wall: int | None = None
        self._anchor: tuple[int, int] | None = None  # (stream sample, wall ns) of the newest chunk
        self._start_segment(0)

    def _start_segment(self, sample0: int) -> None:
        """Start an empty context whose first sample is stream sample `sample0` (column aligned)."""
        self._sample0 = sample0
        self._segment_samples = 0  # samples fed to the mel since sample0 (fill included)
        self._mel.reset()
        frame0 = sample0 // HOP_LENGTH
        self._ring.clear(frame0)
        self._next_hop = frame0 + self.hop_frames

    @property
    def end_sample(self) -> int:
        """Stream sample after the newest sample received (the stream clock, in samples)."""
        return self._sample0 + self._segment_samples

    @property
    def end_frame(self) -> int:
        """Stream frame after the newest complete log-mel frame."""
        return self._ring.end

    @property
    def hop_due(self) -> bool:
        return self.end_frame >= self._next_hop

    def push(
        self,
        samples: np.ndarray,
        *,
        seq: int,
        epoch: int,
        mono_ns: int | None = None,
        wall_ns: int | None = None,
    ) -> Push:
        """Feed one chunk: samples (n,) float32 16 kHz mono; seq/epoch from the wire frame;
        mono_ns/wall_ns: capture clocks of its first sample (Frame.capture_mono_ns, capture_wall_ns)."""
        reset: str | None = None
        fill = 0
        if self._epoch is not None and epoch != self._epoch:
            if epoch in self._retired:
                self.stats.dropped_stale_epoch += 1
                return Push(False)
            self.stats.epochs += 1
            self._retired.append(self._epoch)
            elapsed = 0 if wall_ns is None or self._next_wall is None else wall_ns - self._next_wall
            self._reset(_ns_to_samples(elapsed))
            reset = "epoch"
        elif self._epoch is not None and seq <= self._seq:
            self.stats.dropped_late += 1
            return Push(False)
        elif self._epoch is not None and seq > self._seq + 1:
            self.stats.gaps += 1
            self.stats.missing_chunks += seq - self._seq - 1
            if mono_ns is not None and self._next_mono is not None:
                gap = _ns_to_samples(mono_ns - self._next_mono)
            else:
                gap = (seq - self._seq - 1) * self._last_chunk
            if self.gap_policy == "zero_fill" and gap <= self.max_gap_samples:
                fill = gap
                self._feed(np.zeros(gap, np.float32))
                self.stats.filled_samples += gap
            else:
                self._reset(gap)
                reset = "gap"
        self._epoch, self._seq = epoch, seq
        start = self.end_sample
        n = int(np.size(samples))
        self._feed(samples)
        self.stats.chunks += 1
        self.stats.samples += n
        self._last_chunk = n
        duration_ns = n * 1_000_000_000 // SAMPLE_RATE
        self._next_mono = None if mono_ns is None else mono_ns + duration_ns
        self._next_wall = None if wall_ns is None else wall_ns + duration_ns
        if wall_ns is not None:
            self._anchor = (start, wall_ns)
        return Push(True, reset, fill, start)

    def _reset(self, elapsed_samples: int) -> None:
        self.stats.resets += 1
        resume = self.end_sample + max(0, elapsed_samples)
        self._start_segment(-(-resume // COLUMN_SAMPLES) * COLUMN_SAMPLES)  # round up to a column

    def _feed(self, samples: np.ndarray) -> None:
        if np.size(samples) == 0:
            return
        frames = self._mel(samples)  # (N_MELS, t) new frames
        self._segment_samples += samples.size
        if frames.shape[1]:
            self._ring.write(frames)

    def window(self) -> Window:
        """The newest whole columns, at most window_frames; does not take a hop."""
        end = self.end_frame - self.end_frame % PATCH_FRAMES
        start = max(end - self.window_frames, self._ring.start + (-self._ring.start) % PATCH_FRAMES)
        start = min(start, end)
        return Window(self._ring.view(start, end), start)

    def tail_window(self) -> Window:
        """`window()` plus the newest partial column, completed with silence when it holds at least
        half a column, or when the segment has no whole column yet (`frontend.scored_columns`): at a
        stream's end, the audio after the last whole column is scored too. The context is unchanged
        (the silence goes through a copy of the mel state), so the stream clock never moves for it."""
        partial = self.end_frame % PATCH_FRAMES * HOP_LENGTH + self._mel.pending_samples  # samples
        whole = self.window()
        if partial == 0 or (whole.n_columns and partial < COLUMN_SAMPLES // 2):
            return whole
        mel = copy.copy(self._mel)  # its buffer is replaced, never written in place: a shallow copy is enough
        frames = mel(np.zeros(COLUMN_SAMPLES - partial, np.float32))  # (N_MELS, t): the column's missing frames
        end = self.end_frame + frames.shape[1]
        start = max(end - self.window_frames, self._ring.start + (-self._ring.start) % PATCH_FRAMES)
        mel_frames = np.concatenate([self._ring.view(start, self.end_frame), frames], axis=1)
        mel_frames.flags.writeable = False
        return Window(mel_frames, start)

    def next_window(self) -> Window | None:
        """The window if a hop is due (and take the hop), else None.

        Hops fall due on a fixed grid of hop_frames from the segment start; if several fell due
        since the last call, one window is returned and the others are counted as skipped.
        """
        if not self.hop_due:
            return None
        missed = (self.end_frame - self._next_hop) // self.hop_frames
        self.stats.hops_skipped += missed
        self._next_hop += (missed + 1) * self.hop_frames
        self.stats.hops += 1
        return self.window()

    @staticmethod
    def seconds(frame: int) -> float:
        """Stream frame -> seconds on the stream clock."""
        return frame / FRAMES_PER_SECOND

    def wall_time(self, frame: int) -> float | None:
        """Stream frame -> Unix seconds (from the newest chunk's capture wall clock), None if unknown."""
        if self._anchor is None:
            return None
        sample, wall_ns = self._anchor
        return (wall_ns + (frame * HOP_LENGTH - sample) * 1_000_000_000 // SAMPLE_RATE) / 1e9


def _ns_to_samples(ns: int) -> int:
    return max(0, round(ns * SAMPLE_RATE / 1_000_000_000))
