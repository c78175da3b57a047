"""The detector: event grammar, hysteresis, minimum duration, merging, flush, and streaming == batch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.detector import EventDetector, EventEdge, Smoothing, detect, event_mask, seconds_to_frames

# (on, off, min_duration_frames, merge_gap_frames, smoothing); the low pair is silero-vad's trap:
# with a hidden `threshold - 0.15` an event at on=0.1 could never end.
PARAM_SETS = [
    (0.5, 0.35, 1, 0, Smoothing()),
    (0.5, 0.35, 3, 2, Smoothing("ema", alpha=0.6)),
    (0.1, 0.05, 2, 1, Smoothing("median", window=3)),
    (0.9, 0.2, 4, 0, Smoothing("ema", alpha=1.0)),
]


def _bursts(n: int, spans: list[tuple[int, int]], high: float = 0.9, low: float = 0.02) -> np.ndarray:
    x = np.full(n, low)
    for a, b in spans:
        x[a:b] = high
    return x


def _run(
    det: EventDetector, scores: np.ndarray, chunk: int, flush: str | None = "stream_end"
) -> list[EventEdge]:
    edges = []
    for i in range(0, len(scores), chunk):
        edges += det(scores[i : i + chunk], i)
    return edges + (det.flush(flush) if flush else [])


@pytest.mark.parametrize("on,off,min_dur,merge,smoothing", PARAM_SETS)
def test_start_and_end_alternate(on, off, min_dur, merge, smoothing):
    rng = np.random.default_rng(0)
    scores = np.clip(
        _bursts(400, [(20, 60), (100, 103), (150, 240), (300, 310)]) + rng.normal(0, 0.03, 400), 0, 1
    )
    det = EventDetector(on, off, min_dur, merge, smoothing)
    edges = _run(det, scores, chunk=3)
    assert edges, "the bursts are detected"
    assert [e.kind for e in edges] == ["start", "end"] * (len(edges) // 2)
    for start, end in zip(edges[::2], edges[1::2]):
        assert start.column < end.column and end.column - start.column >= min_dur
        assert start.decided_at >= start.column + min_dur - 1
        assert end.score >= start.score >= on


def test_hysteresis_needs_on_to_start_and_off_to_end():
    det = EventDetector(on_threshold=0.6, off_threshold=0.3)
    # 0.5 is between the thresholds: it cannot start an event, but it keeps one going
    scores = np.array([0.5, 0.5, 0.7, 0.5, 0.4, 0.31, 0.29, 0.5, 0.5])
    edges = det(scores, 0)
    assert edges == [EventEdge("start", 2, 0.7, 2), EventEdge("end", 6, 0.7, 6, "off")]
    # exactly on the thresholds: >= on starts, >= off stays on
    assert [(e.kind, e.column) for e in detect(np.array([0.6, 0.3, 0.2]), 0.6, 0.3)] == [
        ("start", 0),
        ("end", 2),
    ]


def test_minimum_duration_reports_the_true_onset():
    det = EventDetector(0.5, 0.3, min_duration_frames=4)
    assert _run(det, _bursts(20, [(5, 8)]), chunk=1) == []  # 3 frames: too short, nothing at all
    edges = _run(det, _bursts(20, [(5, 9)]), chunk=1)
    assert [(e.kind, e.column, e.decided_at) for e in edges] == [("start", 5, 8), ("end", 9, 9)]


def test_short_gaps_are_merged():
    gap2 = _bursts(30, [(5, 10), (12, 17)])  # below off at frames 10, 11
    merged = detect(gap2, 0.5, 0.3, merge_gap_frames=2)
    assert [(e.kind, e.column) for e in merged] == [("start", 5), ("end", 17)]
    assert merged[1].decided_at == 17 + 2  # an end waits out merge_gap
    split = detect(gap2, 0.5, 0.3, merge_gap_frames=1)
    assert [(e.kind, e.column) for e in split] == [("start", 5), ("end", 10), ("start", 12), ("end", 17)]
    # two bursts, each too short alone, form one event long enough
    assert [e.column for e in detect(_bursts(20, [(2, 4), (5, 7)]), 0.5, 0.3, 4, 1)] == [2, 7]


def test_flush_closes_an_open_event_with_its_reason():
    det = EventDetector(0.5, 0.3, min_duration_frames=2)
    edges = det(_bursts(10, [(6, 10)]), 0)
    assert [e.kind for e in edges] == ["start"]
    assert det.flush("stale") == [EventEdge("end", 10, 0.9, 9, "stale")]
    assert det.flush("stale") == []  # flushed state is fresh
    det(_bursts(10, [(9, 10)]), 0)  # one frame: not confirmed, so a flush says nothing
    assert det.flush("engine_restart") == []


def test_lookback_scores_columns_with_right_context_and_flush_uses_the_rest():
    det = EventDetector(0.5, 0.3, lookback_frames=2)
    scores = _bursts(8, [(6, 8)])
    assert det(scores[:8], 0) == []  # frames 6 and 7 are provisional (2 frames of look-back)
    assert det.next_frame == 6
    assert [(e.kind, e.column, e.reason) for e in det.flush("stream_end")] == [
        ("start", 6, None),
        ("end", 8, "stream_end"),
    ]


def test_each_column_is_final_in_the_first_window_where_it_has_lookback():
    """The engine re-scores overlapping windows; the detector must use each column's score from
    exactly one window: the first in which the column lies `lookback` columns before the end."""
    rng = np.random.default_rng(1)
    n_cols, window, hop, lookback = 120, 20, 3, 2
    truth = np.full(n_cols, np.nan)
    det = EventDetector(0.5, 0.3, 2, 1, Smoothing("ema", 0.7), lookback_frames=lookback)
    edges = []
    for end in range(hop, n_cols + 1, hop):
        start = max(0, end - window)
        scores = rng.uniform(0, 1, end - start)  # every window scores its columns anew
        for c in range(start, end - lookback):
            if np.isnan(truth[c]):
                truth[c] = scores[c - start]
        last = (start, scores)
        edges += det(scores, start)
    start, scores = last
    for c in range(n_cols):
        if np.isnan(truth[c]):
            truth[c] = scores[c - start]  # provisional columns of the last window, used by flush
    edges += det.flush("stream_end")
    assert edges == detect(truth, 0.5, 0.3, 2, 1, Smoothing("ema", 0.7))


def test_a_window_after_a_clock_jump_flushes_as_a_discontinuity():
    det = EventDetector(0.5, 0.3)
    det(_bursts(5, [(2, 5)]), 0)
    edges = det(np.zeros(4), 100)
    assert [(e.kind, e.column, e.reason) for e in edges] == [("end", 5, "discontinuity")]
    assert det.next_frame == 104


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError, match="off_threshold < on_threshold"):
        EventDetector(0.5, 0.5)
    with pytest.raises(ValueError, match="min_duration_frames"):
        EventDetector(0.5, 0.3, min_duration_frames=0)
    with pytest.raises(ValueError, match="alpha"):
        Smoothing("ema", alpha=0.0)
    with pytest.raises(ValueError, match="shape"):
        EventDetector(0.5, 0.3)(np.zeros((2, 3)), 0)


def test_seconds_convert_to_columns_at_the_edge():
    assert seconds_to_frames(0.32) == 2 and seconds_to_frames(0.5) == 3
    det = EventDetector.from_seconds(0.5, 0.3, min_duration_s=0.0, merge_gap_s=0.32, lookback_s=0.16)
    assert (det.min_duration_frames, det.merge_gap_frames, det.lookback_frames) == (1, 2, 1)


# Scores on a coarse grid make ties with the thresholds common.
_grid = st.sampled_from([i / 20 for i in range(21)])


@settings(max_examples=300, deadline=None)
@given(
    scores=st.lists(_grid, min_size=0, max_size=120),
    thresholds=st.tuples(_grid, _grid).filter(lambda t: t[1] < t[0]),
    min_dur=st.integers(1, 5),
    merge=st.integers(0, 4),
    lookback=st.integers(0, 3),
    smoothing=st.sampled_from([Smoothing(), Smoothing("ema", 0.5), Smoothing("median", window=3)]),
    cuts=st.lists(st.integers(1, 120), max_size=12),
    extra=st.integers(0, 10),
    reason=st.sampled_from(["stream_end", "stale"]),
)
def test_sequence_parity_streaming_equals_batch_for_any_chunking(
    scores, thresholds, min_dur, merge, lookback, smoothing, cuts, extra, reason
):
    """Like silero-vad's test_sequence_parity: overlapping windows ending at random cuts."""
    scores = np.array(scores, dtype=np.float64)
    on, off = thresholds
    ends = sorted({c for c in cuts if c < len(scores)} | {len(scores)}) if len(scores) else []
    width = max((b - a for a, b in zip([0, *ends], ends)), default=0) + lookback + extra
    det = EventDetector(on, off, min_dur, merge, smoothing, lookback)
    edges = []
    for end in ends:
        start = max(0, end - width)
        edges += det(scores[start:end], start)
    edges += det.flush(reason)
    assert edges == detect(scores, on, off, min_dur, merge, smoothing, flush_reason=reason)
    kinds = [e.kind for e in edges]
    assert kinds == ["start", "end"] * (len(kinds) // 2)


def _mask_of(edges: list[EventEdge], n: int) -> np.ndarray:
    mask = np.zeros(n, bool)
    for start, end in zip(edges[::2], edges[1::2]):
        mask[start.column : end.column] = True
    return mask


@settings(max_examples=200, deadline=None)
@given(
    tracks=st.lists(st.lists(_grid, min_size=40, max_size=40), min_size=1, max_size=6),
    thresholds=st.tuples(_grid, _grid).filter(lambda t: t[1] < t[0]),
    min_dur=st.integers(1, 5),
    merge=st.integers(0, 4),
    smoothing=st.sampled_from([Smoothing(), Smoothing("ema", 0.5), Smoothing("median", window=3)]),
)
def test_event_mask_covers_exactly_the_events_detect_finds_on_each_track(tracks, thresholds, min_dur, merge, smoothing):
    """The many-label form evaluation uses is the detector, not a look-alike."""
    scores = np.array(tracks, dtype=np.float64).T  # (T, P)
    on, off = thresholds
    mask = event_mask(scores, on, off, min_dur, merge, smoothing)
    for p in range(scores.shape[1]):
        edges = detect(scores[:, p], on, off, min_dur, merge, smoothing, flush_reason="stream_end")
        assert mask[:, p].tolist() == _mask_of(edges, len(scores)).tolist()


def test_event_mask_drops_a_blip_and_bridges_a_short_gap():
    x = np.stack([_bursts(30, [(3, 4)]), _bursts(30, [(5, 10), (12, 17)])], axis=1)
    mask = event_mask(x, 0.5, 0.3, min_duration_frames=2, merge_gap_frames=2)
    assert not mask[:, 0].any()  # one frame is shorter than the minimum
    assert np.flatnonzero(mask[:, 1]).tolist() == list(range(5, 17))  # one event over the 2-frame gap
