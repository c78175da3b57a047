"""Event detection for one (stream, label): smoothing, hysteresis, minimum duration, gap merging.

Input is one calibrated score in [0, 1] per patch column (`encoder.frontend.SECONDS_PER_COLUMN`,
160 ms); in this module a "frame" is one such score column and all times are integer frame
indices on the stream's column clock. Seconds appear only in `EventDetector.from_seconds`.

The rules, applied to the smoothed score y[t] (both thresholds explicit, no hidden offsets):
1. hysteresis: a segment starts at a frame with y >= on_threshold and runs while y >= off_threshold;
   its end (exclusive) is the first frame with y < off_threshold;
2. merging: a segment that starts at most `merge_gap_frames` after the previous one ended
   (next.onset - prev.offset <= merge_gap_frames) continues that event;
3. minimum duration: an event shorter than `min_duration_frames` (offset - onset) is dropped.
`detect` applies them to a whole array; `EventDetector` applies them frame by frame and emits
the same `EventEdge`s, however the scores are chunked (tests/test_detector.py checks this).
`event_mask` applies them to many labels' tracks at once and returns which frames lie inside an
event (evaluation scores the engine's events with it: `main.py eval`).

Streaming edges, in the manner of silero-vad's VADIterator:
- "start" is emitted once the event has lasted `min_duration_frames` (at frame onset + min - 1, or
  at the first frame after that where the score is back above off_threshold); it reports the true
  onset frame, so latency = `decided_at - column`;
- "end" is emitted once the score has stayed below the on threshold for `merge_gap_frames` frames
  after falling below off_threshold; it reports the offset (first frame after the event);
- starts and ends alternate; `flush(reason)` closes an open event (reason "stream_end", "stale",
  "engine_restart", ...) and forgets the state.

Which frames are final (caller-facing)
--------------------------------------
The engine re-encodes an overlapping sliding window every hop, so most columns are scored several
times, each time with more audio after them. Call the detector with *all* the window's column
scores and the window's first column index; the detector chooses:
- a column is final once it lies at least `lookback_frames` columns before the window's end; each
  final column is used exactly once, from the first window in which it is final, and any columns
  before `next_frame` (already final) are skipped;
- `lookback_frames=0` (default): each column is scored once, from the window that first contains
  it, i.e. with left context only and the lowest latency (the newest hop's columns);
- `lookback_frames=L`: a column is scored with L columns (L * 160 ms) of audio after it, which a
  bidirectional encoder can use, at L * 160 ms of extra latency;
- the newest L columns of the latest window are held as provisional scores; `flush` uses them, so
  the end of a stream is not lost.
If a window starts after `next_frame` (the context was reset and its clock jumped), the open event
is flushed with reason "discontinuity"; the caller should rather call `flush(reason)` itself when
the context reports a reset.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

import numpy as np

from encoder.frontend import SECONDS_PER_COLUMN

SECONDS_PER_FRAME = SECONDS_PER_COLUMN  # 0.16 s: one detector frame is one column of scores
SMOOTHING_KINDS = ("none", "ema", "median")
EDGE_KINDS = ("start", "end")


def seconds_to_frames(seconds: float) -> int:
    """Seconds -> whole detector frames (nearest; 0.32 s -> 2 frames)."""
    return int(round(seconds / SECONDS_PER_FRAME))


@dataclass(frozen=True)
class Smoothing:
    """Causal smoothing of the score before the thresholds.

    kind "ema": y[t] = alpha * x[t] + (1 - alpha) * y[t-1], y[0] = x[0] (alpha = 1: no smoothing).
    kind "median": y[t] = median(x[t - window + 1 .. t]) (fewer values at the stream start).
    """

    kind: str = "none"
    alpha: float = 0.5
    window: int = 3

    def __post_init__(self) -> None:
        if self.kind not in SMOOTHING_KINDS:
            raise ValueError(f"smoothing kind must be one of {SMOOTHING_KINDS}, got {self.kind!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"EMA alpha must be in (0, 1], got {self.alpha}")
        if not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"median window must be an int >= 1, got {self.window!r}")


class _Smoother:
    """Streaming state of a `Smoothing`; `detect` uses it too, so both paths smooth identically."""

    def __init__(self, smoothing: Smoothing):
        self.smoothing = smoothing
        self.reset()

    def reset(self) -> None:
        self._ema: float | None = None
        self._recent: deque[float] = deque(maxlen=self.smoothing.window)

    def __call__(self, x: float) -> float:
        kind = self.smoothing.kind
        if kind == "ema":
            a = self.smoothing.alpha
            self._ema = x if self._ema is None else a * x + (1.0 - a) * self._ema
            return self._ema
        if kind == "median":
            self._recent.append(x)
            return statistics.median(self._recent)
        return x


@dataclass(frozen=True)
class EventEdge:
    """One edge of an event, in detector frames (score columns).

    kind "start": column = onset (the event's first frame); score = peak smoothed score so far.
    kind "end": column = offset (first frame after the event, exclusive); score = peak of the event;
    reason = "off" (the score fell) or the `flush` reason.
    decided_at: the frame whose score settled the edge (the last frame seen, for a flush).
    """

    kind: str
    column: int
    score: float
    decided_at: int
    reason: str | None = None


def _check_params(on: float, off: float, min_duration: int, merge_gap: int, lookback: int) -> None:
    if not 0.0 <= off < on <= 1.0:
        raise ValueError(f"need 0 <= off_threshold < on_threshold <= 1, got off={off}, on={on}")
    for name, value, lo in (
        ("min_duration_frames", min_duration, 1),
        ("merge_gap_frames", merge_gap, 0),
        ("lookback_frames", lookback, 0),
    ):
        if not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")


class EventDetector:
    """Streaming hysteresis detector for one (stream, label); see the module docstring.

    __call__(column_scores (n,) float, first_column_index) -> list[EventEdge], oldest first.
    flush(reason) -> list[EventEdge]: uses the provisional columns, closes an open event, resets.
    reset(): forget everything (no edges).
    """

    def __init__(
        self,
        on_threshold: float,
        off_threshold: float,
        min_duration_frames: int = 1,
        merge_gap_frames: int = 0,
        smoothing: Smoothing | None = None,
        lookback_frames: int = 0,
    ):
        _check_params(on_threshold, off_threshold, min_duration_frames, merge_gap_frames, lookback_frames)
        self.on_threshold = float(on_threshold)
        self.off_threshold = float(off_threshold)
        self.min_duration_frames = int(min_duration_frames)
        self.merge_gap_frames = int(merge_gap_frames)
        self.lookback_frames = int(lookback_frames)
        self._smoother = _Smoother(smoothing or Smoothing())
        self.reset()

    @classmethod
    def from_seconds(
        cls,
        on_threshold: float,
        off_threshold: float,
        min_duration_s: float,
        merge_gap_s: float,
        smoothing: Smoothing | None = None,
        lookback_s: float = 0.0,
    ) -> EventDetector:
        """Durations in seconds, rounded to frames of 160 ms (min_duration at least 1 frame)."""
        return cls(
            on_threshold,
            off_threshold,
            max(1, seconds_to_frames(min_duration_s)),
            seconds_to_frames(merge_gap_s),
            smoothing,
            seconds_to_frames(lookback_s),
        )

    def reset(self) -> None:
        self.active = False  # inside an event, confirmed or not
        self.confirmed = False  # its start edge has been emitted
        self.onset = 0  # first frame of the current event
        self.gap_start: int | None = None  # first frame below off_threshold while waiting out merge_gap
        self.peak = 0.0  # peak smoothed score of the current event
        self.next_frame: int | None = None  # next frame to finalise; None: the first frame given
        self._provisional = np.zeros(0)  # scores of frames next_frame.. not final yet (lookback)
        self._smoother.reset()

    def __call__(self, column_scores: np.ndarray, first_column_index: int) -> list[EventEdge]:
        """column_scores: (n,) scores of frames [first_column_index, first_column_index + n)."""
        scores = np.asarray(column_scores, dtype=np.float64)
        if scores.ndim != 1:
            raise ValueError(f"expected column scores of shape (n,), got shape {scores.shape}")
        first = int(first_column_index)
        end = first + scores.size
        edges: list[EventEdge] = []
        if self.next_frame is None:
            self.next_frame = first
        elif first > self.next_frame:
            edges += self.flush("discontinuity")
            self.next_frame = first
        if end <= self.next_frame:
            return edges  # nothing newer than what is already final
        final_end = end - self.lookback_frames
        for t in range(self.next_frame, final_end):
            self._step(float(scores[t - first]), t, edges)
        self.next_frame = max(self.next_frame, final_end)
        self._provisional = scores[self.next_frame - first :].copy()
        return edges

    def flush(self, reason: str = "stream_end") -> list[EventEdge]:
        """Finalise the provisional frames, close an open (confirmed) event with `reason`, reset."""
        edges: list[EventEdge] = []
        if self.next_frame is not None:
            for i, x in enumerate(self._provisional):
                self._step(float(x), self.next_frame + i, edges)
            last = self.next_frame + self._provisional.size - 1
            if self.active and self.confirmed:
                offset = self.gap_start if self.gap_start is not None else last + 1
                edges.append(EventEdge("end", offset, self.peak, last, reason))
        self.reset()
        return edges

    def _step(self, x: float, t: int, edges: list[EventEdge]) -> None:
        y = self._smoother(x)
        if not self.active:
            if y >= self.on_threshold:
                self.active, self.confirmed, self.onset, self.peak, self.gap_start = True, False, t, y, None
                self._maybe_confirm(t, edges)
            return
        if (
            self.gap_start is None
            and y >= self.off_threshold
            or self.gap_start is not None
            and y >= self.on_threshold
        ):
            self.gap_start = None  # still on, or back on within merge_gap: the same event
            self.peak = max(self.peak, y)
            self._maybe_confirm(t, edges)
            return
        if self.gap_start is None:
            self.gap_start = t
        if t - self.gap_start >= self.merge_gap_frames:
            if self.confirmed:
                edges.append(EventEdge("end", self.gap_start, self.peak, t, "off"))
            self.active, self.confirmed, self.gap_start = False, False, None

    def _maybe_confirm(self, t: int, edges: list[EventEdge]) -> None:
        if not self.confirmed and t + 1 - self.onset >= self.min_duration_frames:
            self.confirmed = True
            edges.append(EventEdge("start", self.onset, self.peak, t))


def detect(
    scores: np.ndarray,
    on_threshold: float,
    off_threshold: float,
    min_duration_frames: int = 1,
    merge_gap_frames: int = 0,
    smoothing: Smoothing | None = None,
    flush_reason: str | None = "stream_end",
) -> list[EventEdge]:
    """The edges of a whole score track, equal to `EventDetector`'s for any chunking.

    scores: (T,) float, one per frame from frame 0. flush_reason: the reason given to an event still
    open at the end (as `EventDetector.flush(flush_reason)`); None leaves it open (no end edge).
    Written as whole-array passes (segments, then merging, then the duration filter), not as the
    streaming state machine, so that the parity test compares two implementations.
    """
    _check_params(on_threshold, off_threshold, min_duration_frames, merge_gap_frames, 0)
    smoother = _Smoother(smoothing or Smoothing())
    y = np.array([smoother(float(x)) for x in np.asarray(scores, dtype=np.float64)])
    n = y.size
    segments: list[tuple[int, int]] = []  # hysteresis segments [onset, offset)
    t = 0
    while t < n:
        if y[t] >= on_threshold:
            below = np.flatnonzero(y[t:] < off_threshold)
            end = t + int(below[0]) if below.size else n
            segments.append((t, end))
            t = end
        t += 1
    events: list[list[tuple[int, int]]] = []  # merged events, each a list of its segments
    for seg in segments:
        if events and seg[0] - events[-1][-1][1] <= merge_gap_frames:
            events[-1].append(seg)
        else:
            events.append([seg])
    edges: list[EventEdge] = []
    for segs in events:
        onset, offset = segs[0][0], segs[-1][1]
        if offset - onset < min_duration_frames:
            continue
        target = onset + min_duration_frames - 1  # first frame at which the event is long enough
        confirm = next(max(a, target) for a, b in segs if b > target)  # ... that is above off_threshold
        edges.append(EventEdge("start", onset, float(y[onset : confirm + 1].max()), confirm))
        peak = float(y[onset:offset].max())
        if offset < n and offset + merge_gap_frames <= n - 1:
            edges.append(EventEdge("end", offset, peak, offset + merge_gap_frames, "off"))
        elif flush_reason is not None:
            edges.append(EventEdge("end", offset, peak, n - 1, flush_reason))
    return edges


def event_mask(
    scores: np.ndarray,
    on_threshold: float,
    off_threshold: float,
    min_duration_frames: int = 1,
    merge_gap_frames: int = 0,
    smoothing: Smoothing | None = None,
) -> np.ndarray:
    """(T, P) scores, one track per label -> (T, P) bool: frame t lies inside one of the events
    `detect` finds on track p (onset <= t < offset, an event still open at the end runs to T).

    The smoothing and hysteresis run over all P tracks at once (a loop over T only), so scoring
    hundreds of labels over hundreds of clips at a grid of thresholds stays cheap; merging and the
    duration filter then work on each track's runs. Equal to `detect` track by track
    (tests/test_detector.py).
    """
    _check_params(on_threshold, off_threshold, min_duration_frames, merge_gap_frames, 0)
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected scores of shape (T, P), got shape {x.shape}")
    smoothing = smoothing or Smoothing()
    y = _smooth_tracks(x, smoothing)
    on = np.zeros(x.shape, bool)
    prev = np.zeros(x.shape[1], bool)
    for t in range(x.shape[0]):  # hysteresis: start at >= on, run while >= off
        prev = (y[t] >= on_threshold) | (prev & (y[t] >= off_threshold))
        on[t] = prev
    for p in np.flatnonzero(on.any(0)):
        edges = np.diff(np.concatenate([[0], on[:, p].astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # runs [start, end)
        keep = np.concatenate([[True], starts[1:] - ends[:-1] > merge_gap_frames])  # a run not merged back
        onsets, offsets = starts[keep], np.concatenate([ends[:-1][keep[1:]], ends[-1:]])
        on[:, p] = False
        for a, b in zip(onsets, offsets):
            if b - a >= min_duration_frames:
                on[a:b, p] = True
    return on


def _smooth_tracks(x: np.ndarray, smoothing: Smoothing) -> np.ndarray:
    """`_Smoother` over each column of x (T, P), all columns at once."""
    if smoothing.kind == "ema":
        y = np.empty_like(x)
        a = smoothing.alpha
        for t in range(x.shape[0]):
            y[t] = x[t] if t == 0 else a * x[t] + (1.0 - a) * y[t - 1]
        return y
    if smoothing.kind == "median":
        return np.stack([np.median(x[max(0, t - smoothing.window + 1) : t + 1], axis=0) for t in range(x.shape[0])]) \
            if x.shape[0] else x.copy()
    return x.copy()
