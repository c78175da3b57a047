"""The stream context: grows then slides, equals the batch log-mel, hop cadence, gaps, epochs."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encoder import frontend as fe
from streamer.context import ContextStats, Ring, StreamContext, Window

CHUNK = 1600  # 100 ms at 16 kHz
CHUNK_NS = 100_000_000


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


def _feed(ctx: StreamContext, audio: np.ndarray, seq0: int = 0, epoch: int = 7, t0_ns: int = 0):
    """Push audio in 100 ms chunks with consecutive seqs; returns the windows handed out, copied
    (a window is a view, valid until the next push), with the context's end frame at the time."""
    windows = []
    for i in range(0, len(audio), CHUNK):
        k = i // CHUNK
        ctx.push(audio[i : i + CHUNK], seq=seq0 + k, epoch=epoch, mono_ns=t0_ns + k * CHUNK_NS)
        w = ctx.next_window()
        if w is not None:
            windows.append((Window(w.mel.copy(), w.start_frame), ctx.end_frame))
    return windows


def test_window_grows_then_slides_and_equals_the_batch_log_mel():
    audio = _noise(15 * fe.SAMPLE_RATE)
    ctx = StreamContext(max_context_s=10.0, hop_s=0.5)
    windows = _feed(ctx, audio)
    batch = fe.log_mel(audio)
    lengths = [w.mel.shape[1] for w, _ in windows]
    assert lengths[0] == 48  # 0.5 s = 50 frames -> 3 whole columns
    assert lengths == sorted(lengths) and max(lengths) == ctx.window_frames == 992  # 62 columns: 9.92 s
    assert lengths.count(992) > 5  # full, and then it slides
    for w, end_frame in windows:
        assert w.start_frame % fe.PATCH_FRAMES == 0 and w.mel.shape[1] % fe.PATCH_FRAMES == 0
        assert w.end_frame <= end_frame < w.end_frame + fe.PATCH_FRAMES  # the newest whole columns
        np.testing.assert_allclose(w.mel, batch[:, w.start_frame : w.end_frame], atol=1e-5)
    last = ctx.window()
    assert last.end_frame == 1488 and last.first_column == (1488 - 992) // 16  # the last 9.92 s of 15 s
    assert not last.mel.flags.writeable  # a view into the ring, not a copy


def test_hop_cadence_and_skipped_hops():
    ctx = StreamContext(max_context_s=4.0, hop_s=0.5)
    windows = _feed(ctx, _noise(3 * fe.SAMPLE_RATE))
    assert len(windows) == 6 and ctx.stats.hops == 6  # every 5 chunks of 100 ms
    assert [w.end_frame for w, _ in windows] == [48, 96, 144, 192, 240, 288]  # ends on the column grid
    ctx.push(_noise(2 * fe.SAMPLE_RATE, 1), seq=30, epoch=7)  # 2 s at once: 4 hops fall due
    assert ctx.hop_due and ctx.next_window() is not None and not ctx.hop_due
    assert ctx.stats.hops_skipped == 3
    ctx.push(_noise(CHUNK * 4, 2), seq=31, epoch=7)  # 0.4 s: not yet the next hop (grid kept)
    assert ctx.next_window() is None


def test_duplicates_and_late_chunks_are_dropped_and_counted():
    ctx = StreamContext()
    audio = _noise(CHUNK * 10)
    _feed(ctx, audio)
    before = ctx.window().mel.copy()
    for seq in (9, 3):
        push = ctx.push(_noise(CHUNK, 5), seq=seq, epoch=7)
        assert not push.accepted
    assert ctx.stats.dropped_late == 2 and ctx.stats.chunks == 10
    np.testing.assert_array_equal(ctx.window().mel, before)


def test_a_short_gap_is_zero_filled_so_the_window_stays_continuous():
    ctx = StreamContext(max_context_s=10.0, hop_s=0.5, gap_policy="zero_fill", max_gap_s=1.0)
    a, b = _noise(CHUNK * 20, 1), _noise(CHUNK * 20, 2)
    _feed(ctx, a)
    # seqs 20..22 are lost: 300 ms, measured on the capture clock
    push = ctx.push(b[:CHUNK], seq=23, epoch=7, mono_ns=23 * CHUNK_NS)
    _feed(ctx, b[CHUNK:], seq0=24, t0_ns=24 * CHUNK_NS)
    assert push.accepted and push.reset is None and push.filled_samples == 3 * CHUNK
    assert push.start_sample == 23 * CHUNK
    assert (ctx.stats.gaps, ctx.stats.missing_chunks, ctx.stats.filled_samples) == (1, 3, 3 * CHUNK)
    expected = fe.log_mel(np.concatenate([a, np.zeros(3 * CHUNK, np.float32), b]))
    w = ctx.window()
    np.testing.assert_allclose(w.mel, expected[:, w.start_frame : w.end_frame], atol=1e-5)


def test_a_long_gap_or_the_reset_policy_resets_and_the_clock_moves_on():
    for policy, gap_chunks in (("zero_fill", 30), ("reset", 1)):
        ctx = StreamContext(max_context_s=10.0, hop_s=0.5, gap_policy=policy, max_gap_s=2.0)
        _feed(ctx, _noise(CHUNK * 20))
        end_before = ctx.end_sample
        seq = 20 + gap_chunks
        push = ctx.push(_noise(CHUNK, 3), seq=seq, epoch=7, mono_ns=seq * CHUNK_NS)
        assert push.reset == "gap" and ctx.stats.resets == 1
        # the clock skips the lost audio, rounded up to a whole column: the column grid holds
        assert push.start_sample >= end_before + gap_chunks * CHUNK
        assert push.start_sample % (fe.PATCH_FRAMES * fe.HOP_LENGTH) == 0
        w = ctx.window()
        assert w.start_frame == push.start_sample // fe.HOP_LENGTH and w.n_columns == CHUNK // 160 // 16
        np.testing.assert_allclose(w.mel, fe.log_mel(_noise(CHUNK, 3))[:, : w.mel.shape[1]], atol=1e-5)


def test_a_new_epoch_resets_and_stale_epochs_are_dropped():
    ctx = StreamContext()
    wall0 = 1_700_000_000_000_000_000
    for k in range(10):
        ctx.push(_noise(CHUNK, k), seq=k, epoch=1, wall_ns=wall0 + k * CHUNK_NS)
    end_before = ctx.end_sample
    assert ctx.wall_time(ctx.end_frame) == pytest.approx((wall0 + 10 * CHUNK_NS) / 1e9)
    # the worker restarts 5 s later with a new epoch, seq from 0
    push = ctx.push(_noise(CHUNK, 11), seq=0, epoch=2, wall_ns=wall0 + 15 * CHUNK_NS + 5_000_000_000)
    assert push.reset == "epoch" and ctx.stats.epochs == 1
    assert push.start_sample >= end_before + 5 * fe.SAMPLE_RATE  # the clock follows the wall clock
    assert ctx.wall_time(push.start_sample // fe.HOP_LENGTH) == pytest.approx(wall0 / 1e9 + 6.5)
    assert not ctx.push(_noise(CHUNK), seq=10, epoch=1).accepted  # a late chunk of the old worker
    assert ctx.stats.dropped_stale_epoch == 1 and ctx.stats.resets == 1


def test_stats_start_at_zero_and_bad_settings_are_refused():
    assert StreamContext().stats == ContextStats()
    with pytest.raises(ValueError, match="max_context_s"):
        StreamContext(max_context_s=31)
    with pytest.raises(ValueError, match="hop_s"):
        StreamContext(hop_s=0.1)
    with pytest.raises(ValueError, match="gap_policy"):
        StreamContext(gap_policy="drop")


@settings(max_examples=50, deadline=None)
@given(
    capacity=st.integers(1, 40),
    sizes=st.lists(st.integers(0, 90), max_size=15),
    start=st.integers(0, 10**6),
)
def test_ring_views_equal_the_tail_of_everything_written(capacity, sizes, start):
    ring = Ring(capacity, rows=2, dtype=np.int64)
    ring.clear(start)
    written = np.zeros((2, 0), np.int64)
    for n in sizes:
        block = np.arange(written.shape[1], written.shape[1] + n)[None].repeat(2, 0) * [[1], [-1]]
        ring.write(block)
        written = np.concatenate([written, block], axis=1)
        held = min(written.shape[1], capacity)
        assert (ring.end, ring.count) == (start + written.shape[1], held)
        for lo in {ring.start, ring.end - held // 2, ring.end}:
            np.testing.assert_array_equal(ring.view(lo, ring.end), written[:, lo - start :])
    with pytest.raises(IndexError):
        ring.view(ring.start - 1, ring.end)


def test_the_engine_modules_never_import_torch():
    code = (
        "import sys; import streamer.config, streamer.context, streamer.detector, streamer.matcher, "
        "streamer.publish; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("n", [1, 1600, 2560, 3000, 3900, 20_000, 170_000])
def test_the_tail_window_is_the_padded_clip_and_leaves_the_context_as_it_was(n):
    audio = _noise(n)
    ctx = StreamContext(max_context_s=10.0, hop_s=0.5)
    _feed(ctx, audio)
    end_sample, end_frame = ctx.end_sample, ctx.end_frame
    tail = ctx.tail_window()
    batch = fe.log_mel(fe.pad_to_columns(audio))
    end = batch.shape[1] // fe.PATCH_FRAMES * fe.PATCH_FRAMES  # whole columns of the padded clip
    assert tail.end_frame == end and tail.n_columns == min(end, ctx.window_frames) // fe.PATCH_FRAMES
    np.testing.assert_allclose(tail.mel, batch[:, tail.start_frame : end], atol=1e-5)
    assert (ctx.end_sample, ctx.end_frame) == (end_sample, end_frame)  # the padding never entered the stream
    more = _noise(4 * CHUNK, seed=1)  # the stream goes on: its audio follows the clip's, not the padding
    _feed(ctx, more, seq0=-(-n // CHUNK))
    w = ctx.window()
    assert w.n_columns >= 2
    np.testing.assert_allclose(w.mel, fe.log_mel(np.concatenate([audio, more]))[:, w.start_frame : w.end_frame],
                               atol=1e-5)
