"""A clip replayed hop by hop through the incremental encoder, as the engine encodes a stream, so
`main.py eval --variants` can score "ours" the way it runs beside the whole-clip reference.

The engine (streamer/engine.py, context.encoder "incremental") takes a hop every hop_s of audio
(50 log-mel frames for 0.5 s), on a grid from the stream's start; the hop's window ends on the last
whole 160 ms column, and only the columns after the stream's cache are encoded
(`encode_new_columns`), against the keys/values of at most context_s of earlier columns. At the
stream's end the audio after the last hop is scored once more (`Engine._score_tail`): its whole
columns plus a partial column of half a column or more completed with silence, or one padded
column for a clip shorter than one (`frontend.scored_columns`), not committed to the cache.

Here the whole clip's log-mel is computed once and sliced into those hops: the front end is
causal, so frame i of `log_mel(pad_to_columns(x))` is the frame the stream's `StreamingLogMel`
gives, and the padded tail's frames are those of the silence the engine appends.

    columns, glob = stream_clip(backend, audio)   # (C, E) each column as its hop saw it, (E,) last hop

`window_clips` replays a clip through the engine's other path (context.encoder "window", the
engine before the incremental encoder): every hop re-encodes the last context_s of columns whole,
and with the detector's default lookback_s 0 each column is scored from the first window holding it
(the hop that brought it): the same audio each column's score is allowed to see as in the
incremental path, attended over again each hop.

Variants (`VARIANTS`): how "ours" is run, each one more system in the evaluation tables:
    window       full window re-encoded every hop, fp32: the speed changes' reference
    stream       incremental, fp32 (model.precision fp32)
    stream-int8  incremental, int8 weights (model.precision int8, the engine's default)
    stream-live  incremental, fp32, the clip-level global from the last hop instead of the
                 end-of-stream summary: what a live stream's hops carry between summaries
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from encoder.frontend import (
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    PATCH_FRAMES,
    log_mel,
    n_columns,
    pad_to_columns,
    scored_columns,
)
from encoder.runtime.stream_cache import StreamCache, encode_new_columns

HOP_S = 0.5  # = streamer.config ContextConfig.hop_s's default
CONTEXT_S = 10.0  # = ContextConfig.max_context_s's default
MAX_CONTEXT_S = 30.0  # = streamer.context.MAX_CONTEXT_S (the encoder's longest training clip)
BATCH = 16  # clips streamed side by side in evaluation: ~4x the clips per second of one at a time


def hop_ends(n_samples: int, hop_s: float = HOP_S, context_s: float = CONTEXT_S) -> list[int]:
    """The stream column after each encoder call the engine makes for a clip of n_samples: one per
    due hop, then the end-of-stream tail's when it adds a column. The last is
    `frontend.scored_columns(n_samples)`.

    Raises ValueError (one line) for a hop or context the engine's config would refuse."""
    window_frames = n_columns(round(context_s * FRAMES_PER_SECOND)) * PATCH_FRAMES
    hop_frames = round(hop_s * FRAMES_PER_SECOND)
    if not 0 < context_s <= MAX_CONTEXT_S or window_frames == 0:
        raise ValueError(f"context_s: expected {PATCH_FRAMES / FRAMES_PER_SECOND} to {MAX_CONTEXT_S} s, got {context_s}")
    if not PATCH_FRAMES <= hop_frames <= window_frames:
        raise ValueError(f"hop_s: expected {PATCH_FRAMES / FRAMES_PER_SECOND} s (one column) to context_s "
                         f"({context_s}), got {hop_s}")
    frames = n_samples // HOP_LENGTH  # complete log-mel frames of the real audio: hops fall due on them
    ends = [k * hop_frames // PATCH_FRAMES for k in range(1, frames // hop_frames + 1)]
    total = scored_columns(n_samples)
    if not ends or total > ends[-1]:
        ends.append(total)
    return ends


def column_hops(ends: list[int]) -> np.ndarray:
    """The encoder call that first encodes each column, from the calls' end columns (`hop_ends`):
    (ends[-1],) int64, columns [ends[k - 1], ends[k]) -> k. Given to the whole-window encoder
    (`AudioEncoder.forward(column_hop=...)`) it makes attention block-causal by hop, so one pass
    computes what the hop-by-hop encoder computes for a clip that fits its context."""
    sizes = np.diff(np.concatenate([[0], np.asarray(ends, np.int64)]))
    if (sizes <= 0).any():
        raise ValueError(f"hop ends must increase from above 0, got {list(ends)[:8]}")
    return np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)


def grid_ends(n_cols: int, phase_frames: int = 0, hop_s: float = HOP_S) -> list[int]:
    """The end columns of the hops over n_cols columns of a stream whose hop grid started
    phase_frames (0 <= phase < one hop) before the first column, the last call ending at n_cols:
    the hop structure of any stretch of a live stream, for training the streamed view."""
    hop_frames = round(hop_s * FRAMES_PER_SECOND)
    ends = [e for k in range(1, n_cols * PATCH_FRAMES // hop_frames + 2)
            if 0 < (e := (k * hop_frames - phase_frames) // PATCH_FRAMES) < n_cols]
    return sorted(set(ends)) + [n_cols]


def hop_grid(n_cols: list[int], rng: np.random.Generator, p_causal: float = 1.0) -> np.ndarray:
    """(B, max C) int64 `column_hop` rows for training views of n_cols columns each: with
    probability p_causal a view is block-causal by the hop grid at a random phase, half the time
    at a stream's start (phase 0, where every file `main.py tag` streams begins); otherwise its row
    is all 0, one hop, so every token sees the whole view."""
    hop_frames = round(HOP_S * FRAMES_PER_SECOND)
    out = np.zeros((len(n_cols), max(n_cols, default=0)), np.int64)
    for i, c in enumerate(n_cols):
        if c == 0 or rng.random() >= p_causal:
            continue
        phase = 0 if rng.random() < 0.5 else int(rng.integers(hop_frames))
        hops = column_hops(grid_ends(c, phase))
        out[i, :c] = hops
        out[i, c:] = hops[-1] + 1  # padding: never attended (seg -1), any later hop
    return out


def new_stream_cache(backend, max_columns: int) -> StreamCache:
    """An empty cache for one stream, as the engine makes it (Engine._stream)."""
    return StreamCache(max_columns, backend.cache_spec)


def stream_clip(backend, audio_16k: np.ndarray, hop_s: float = HOP_S,
                context_s: float = CONTEXT_S) -> tuple[np.ndarray, np.ndarray]:
    """audio_16k (N,) float32 16 kHz mono -> columns (C, E), each column's embedding from the hop
    that first encoded it, and global (E,), the last call's MAP pooling of the cached context and
    its new columns; neither normalised. C = scored_columns(N). backend: anything with
    `incremental` and a cache spec (OnnxBackend, fp32 or int8; TorchBackend)."""
    return stream_clips(backend, [audio_16k], hop_s, context_s, batch=1)[0]


# One encoder call for the clips of a group that still have a hop: (their rows in the group, their
# log-mels, each one's call end column) -> (each one's new columns (n_i, E), globals (rows, E)).
HopCall = Callable[[list[int], list[np.ndarray], list[int]], tuple[list[np.ndarray], np.ndarray]]


def _replay(audio: list[np.ndarray], hop_s: float, context_s: float, batch: int,
            group_call: Callable[[int], HopCall]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The hop-by-hop driver of `stream_clips` and `window_clips`: clips grouped by length (so the
    batches stay full), `batch` at a time, one call per `hop_ends` hop for the group's clips that
    still have one. group_call(n) starts a group of n clips (with its own per-clip state) and
    returns its HopCall. Returns, per clip, its columns in order and the last call's global."""
    calls = [hop_ends(len(x), hop_s, context_s) for x in audio]
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    order = sorted(range(len(audio)), key=lambda i: len(audio[i]))
    for lo in range(0, len(order), batch):
        group = order[lo : lo + batch]
        mels = [log_mel(pad_to_columns(audio[i])) for i in group]
        call = group_call(len(group))
        columns: list[list[np.ndarray]] = [[] for _ in group]
        for k in range(max(len(calls[i]) for i in group)):
            rows = [r for r, i in enumerate(group) if k < len(calls[i])]
            new, glob = call(rows, [mels[r] for r in rows], [calls[group[r]][k] for r in rows])
            for j, r in enumerate(rows):
                columns[r].append(new[j])
                if k == len(calls[group[r]]) - 1:
                    out[group[r]] = (np.concatenate(columns[r]), glob[j].copy())
    return [out[i] for i in range(len(audio))]


def window_batch(mels: list[np.ndarray], starts: list[int], ends: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Columns [starts[j], ends[j]) of each log-mel (N_MELS, T_j) as one zero-padded batch for the
    full-window encoder: mel (B, N_MELS, max frames) float32, lengths (B,) int64 frames."""
    lengths = np.array([(e - a) * PATCH_FRAMES for a, e in zip(starts, ends)], np.int64)
    mel = np.zeros((len(mels), mels[0].shape[0], int(lengths.max())), np.float32)
    for j, (m, a, e) in enumerate(zip(mels, starts, ends)):
        mel[j, :, : lengths[j]] = m[:, a * PATCH_FRAMES : e * PATCH_FRAMES]
    return mel, lengths


def stream_clips(backend, audio: list[np.ndarray], hop_s: float = HOP_S, context_s: float = CONTEXT_S,
                 batch: int = BATCH, summary: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """`stream_clip` of each clip, `batch` clips at a time as parallel streams, one encoder call per
    hop for all of them (as the engine batches its streams' due hops; a row's result equals the
    clip alone up to float rounding). Clips are grouped by length so that the batches stay full.
    summary: each clip's global is instead its end-of-stream summary's (`last_window_globals`)."""
    out = _stream_clips(backend, audio, hop_s, context_s, batch)
    if summary:
        out = [(cols, g) for (cols, _), g in zip(out, last_window_globals(backend, audio, context_s, batch))]
    return out


def last_window_globals(backend, audio: list[np.ndarray], context_s: float = CONTEXT_S,
                        batch: int = BATCH) -> list[np.ndarray]:
    """Each clip's end-of-stream summary global (E,), as the engine's `_summarise` computes it:
    the last context_s of columns up to `frontend.scored_columns` (the tail's partial column
    completed with silence), through the full-window encoder, `batch` clips per padded call."""
    max_columns = n_columns(round(context_s * FRAMES_PER_SECOND))
    out: dict[int, np.ndarray] = {}
    order = sorted(range(len(audio)), key=lambda i: len(audio[i]))
    for lo in range(0, len(order), batch):
        group = order[lo : lo + batch]
        ends = [scored_columns(len(audio[i])) for i in group]
        mels = [log_mel(pad_to_columns(audio[i])) for i in group]
        glob = backend.encode(*window_batch(mels, [max(0, e - max_columns) for e in ends], ends))[2]
        out.update({i: glob[j].copy() for j, i in enumerate(group)})
    return [out[i] for i in range(len(audio))]


def _stream_clips(backend, audio: list[np.ndarray], hop_s: float, context_s: float,
                  batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    max_columns = n_columns(round(context_s * FRAMES_PER_SECOND))

    def group_call(n_clips: int) -> HopCall:
        # a hop never brings more columns than the window holds, so the cache always continues it
        # (the engine's cache.clear for a window that does not is never taken within one clip)
        caches = [new_stream_cache(backend, max_columns) for _ in range(n_clips)]

        def call(rows: list[int], mels: list[np.ndarray], ends: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
            new = [end - caches[r].end_column for r, end in zip(rows, ends)]
            mel = np.zeros((len(rows), mels[0].shape[0], max(new) * PATCH_FRAMES), np.float32)
            for j, (m, end, n) in enumerate(zip(mels, ends, new)):
                mel[j, :, : n * PATCH_FRAMES] = m[:, (end - n) * PATCH_FRAMES : end * PATCH_FRAMES]
            # The engine scores the end-of-stream tail without committing it to the cache;
            # committing it here too changes nothing, as it is the clip's last call.
            cols, glob = encode_new_columns(backend, mel, np.array(new), [caches[r] for r in rows])
            return [cols[j, :n] for j, n in enumerate(new)], glob

        return call

    return _replay(audio, hop_s, context_s, batch, group_call)


def window_clips(backend, audio: list[np.ndarray], hop_s: float = HOP_S, context_s: float = CONTEXT_S,
                 batch: int = BATCH) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each clip as the engine's window mode encodes a stream (Engine._encode_windows, detector
    lookback 0): at every call of `hop_ends` the window of the last context_s of columns up to the
    call's end, whole, through the full-window encoder. Returns, per clip, columns (C, E), each from
    the first window that holds it, and global (E,), the last window's; neither normalised.
    `batch` clips' windows go through one padded call per hop."""
    max_columns = n_columns(round(context_s * FRAMES_PER_SECOND))

    def group_call(n_clips: int) -> HopCall:
        done = [0] * n_clips  # columns already scored, per clip

        def call(rows: list[int], mels: list[np.ndarray], ends: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
            starts = [max(0, end - max_columns) for end in ends]
            cols, _, glob = backend.encode(*window_batch(mels, starts, ends))
            new = [cols[j, done[r] - a : e - a] for j, (r, a, e) in enumerate(zip(rows, starts, ends))]
            for r, e in zip(rows, ends):
                done[r] = e
            return new, glob

        return call

    return _replay(audio, hop_s, context_s, batch, group_call)


def whole_clip(backend, audio_16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the whole clip in one window of the full-window encoder. A clip shorter than
    one column is padded to one. Returns columns (C, E) (the valid ones) and global (E,)."""
    mel = log_mel(pad_to_columns(audio_16k))[None]
    cols, valid, glob = backend.encode(mel, np.array([mel.shape[-1]], np.int64))
    return cols[0][valid[0]], glob[0]


# clips -> each clip's (columns (C, E), global (E,)), not normalised
ClipEncoder = Callable[[list[np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Variant:
    """Hop by hop as the engine runs: the incremental encoder, or the full window every hop
    (the full-window encoder is fp32 only). The clip-level global is the end-of-stream summary's
    (what the engine publishes when a file ends or a stream falls silent), or with summary False
    the last hop's, as a live stream's hops carry it."""

    name: str  # as given to --variants
    precision: str  # the encoder's weights: fp32 | int8
    encoder: str = "incremental"  # context.encoder: incremental | window
    summary: bool = True

    @property
    def system(self) -> str:
        """Its column in the tables and its key in --json."""
        return f"ours-{self.name}"


VARIANTS = {v.name: v for v in (Variant("window", "fp32", "window"), Variant("stream", "fp32"),
                                  Variant("stream-int8", "int8"), Variant("stream-live", "fp32", summary=False))}


def parse_variants(text: str | None) -> list[Variant]:
    """"stream,stream-int8" -> [Variant, ...] (empty for None or ""); ValueError (one line) for an
    unknown or repeated name."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: unknown variant {unknown[0]!r}; expected a comma-separated list of "
                         f"{', '.join(VARIANTS)}")
    if len(set(names)) < len(names):
        raise ValueError(f"--variants: a variant is named twice in {text!r}")
    return [VARIANTS[n] for n in names]


@dataclass(frozen=True)
class OurSystem:
    """One way of running our model: its backend (the text tower too) and its clip encoder."""

    backend: object
    encode: ClipEncoder


def open_systems(variants: list[Variant], model: str, cache_dir: str, threads: int) -> dict[str, OurSystem]:
    """{"ours": the whole-clip reference, then one system per variant}, on ONNX Runtime. The fp32
    variant shares the reference's backend (its incremental session opens on first use)."""
    from encoder.runtime import open_backend

    fp32 = open_backend("onnx", model, cache_dir, threads)
    systems = {"ours": OurSystem(fp32, lambda clips: [whole_clip(fp32, x) for x in clips])}
    for v in variants:
        b = fp32 if v.precision == "fp32" else open_backend("onnx", model, cache_dir, threads, precision=v.precision)
        if v.encoder == "window":  # its last window is already encoded whole: the summary's global
            systems[v.system] = OurSystem(b, lambda clips, b=b: window_clips(b, clips))
        else:
            systems[v.system] = OurSystem(b, lambda clips, b=b, s=v.summary: stream_clips(b, clips, summary=s))
    return systems
