"""The soak benchmark's own bookkeeping: bounded, and what it reports is what happened."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.soak import LatencyHistogram, soak


def test_latency_percentiles_within_a_millisecond_in_fixed_memory():
    latencies = np.random.default_rng(0).exponential(0.05, 200_000)
    h = LatencyHistogram()
    size = h.counts.nbytes
    h.extend(latencies)
    h.extend([45.0])  # past the last bin: counted there, not lost
    assert len(h) == 200_001 and h.counts.nbytes == size
    for q in (50, 99):
        assert abs(h.percentile(q) - np.percentile(latencies, q)) <= LatencyHistogram.BIN_S


@pytest.mark.slow
def test_a_short_soak_delivers_every_event_and_reports_the_machine():
    """Two synth workers for 20 s through the real engine, supervisor and subscriber."""
    r = soak(2, 20 / 60, sample_s=5.0, printer=lambda line: None)
    assert r.hops > 0 and r.events_sent > 0
    assert r.events_received == r.events_sent and r.seq_gaps == 0
    assert not r.frames_dropped and not r.frames_rejected
    assert len(r.samples) >= 3 and r.steal_s >= 0 and r.rss_end_mb > 0
