"""Per-stream caches for the incremental encoder (encoder/incremental.py), numpy only.

A `StreamCache` holds a stream's two caches (see `encoder.incremental`): the local blocks' keys and
values of its newest `local_columns` columns ((4W, entry) per stream) and the global blocks' and
MAP head's of its newest `max_columns` ((G, 2, H, 4c, hd), head major), plus the stream column
after the newest (`end_column`). It never reallocates: every token is stored twice (as in
`streamer.context.Ring`), so the newest run is always one slice. `encode_new_columns` runs one
hop for a batch of streams: it left-pads their caches into the encoder's inputs (reused buffers,
so a hop costs one copy of each context and no page faults), computes the new tokens' RoPE angles
from their stream columns, and appends what the encoder returns.

Memory per stream (slap-tiny, 10 s): 2 x 248 x 3 x 512 x 4 bytes = 3.0 MB (global) + 0.2 MB (local).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FREQ_PATCHES = 4  # tokens per column (= encoder.frontend.FREQ_PATCHES)
PATCH_FRAMES = 16  # log-mel frames per column (= encoder.frontend.PATCH_FRAMES)


@dataclass(frozen=True)
class CacheSpec:
    """What a backend's incremental encoder needs cached, from its manifest or model config."""

    local_entry: int  # floats per token of the local cache
    global_groups: int  # G: global blocks + the MAP head
    heads: int
    head_dim: int
    local_columns: int  # columns a local block looks back
    rope_base: float

    @classmethod
    def from_manifest(cls, inc: dict) -> CacheSpec:
        return cls(int(inc["local_entry"]), int(inc["global_groups"]), int(inc["heads"]), int(inc["head_dim"]),
                   int(inc["local_columns"]), float(inc["rope_base"]))


class _Ring:
    """The newest `capacity` tokens along `axis` of an array, stored twice so they are one slice."""

    def __init__(self, capacity: int, shape: tuple[int, ...], axis: int):
        self.capacity, self.axis = capacity, axis
        full = list(shape)
        full[axis] = 2 * capacity
        self._data = np.zeros(full, np.float32)
        self.end = self.count = 0

    def _at(self, lo: int, hi: int) -> tuple:
        return (slice(None),) * self.axis + (slice(lo, hi),)

    def append(self, tokens: np.ndarray) -> None:
        cap, ax = self.capacity, self.axis
        t_all = tokens.shape[ax]
        tokens = tokens[self._at(max(0, t_all - cap), t_all)]
        t = tokens.shape[ax]
        head = self.end % cap
        first = min(t, cap - head)
        for lo, part in ((head, tokens[self._at(0, first)]), (0, tokens[self._at(first, t)])):
            n = part.shape[ax]
            self._data[self._at(lo, lo + n)] = part
            self._data[self._at(lo + cap, lo + cap + n)] = part
        self.end += t
        self.count = min(self.count + t, cap)

    def view(self) -> np.ndarray:
        lo = (self.end - self.count) % self.capacity
        out = self._data[self._at(lo, lo + self.count)]
        out.flags.writeable = False
        return out


class StreamCache:
    def __init__(self, max_columns: int, spec: CacheSpec):
        assert max_columns > 0, max_columns
        self.max_columns, self.spec = max_columns, spec
        self._local = _Ring(FREQ_PATCHES * min(spec.local_columns, max_columns), (0, spec.local_entry), axis=0)
        self._global = _Ring(FREQ_PATCHES * max_columns, (spec.global_groups, 2, spec.heads, 0, spec.head_dim), axis=3)
        self.clear(0)

    def clear(self, end_column: int) -> None:
        """Forget every entry; the next column appended is stream column `end_column`."""
        self.end_column = end_column
        self.columns = 0
        self._local.count = self._global.count = 0

    @property
    def first_column(self) -> int:
        return self.end_column - self.columns

    def append(self, new_local: np.ndarray, new_global: np.ndarray) -> None:
        """The n columns after end_column: new_local (4n, entry), new_global (G, 2, H, 4n, hd); the oldest fall out."""
        n_tok = new_global.shape[3]
        assert n_tok % FREQ_PATCHES == 0 and new_local.shape[0] == n_tok, (new_local.shape, new_global.shape)
        self._local.append(new_local)
        self._global.append(new_global)
        self.end_column += n_tok // FREQ_PATCHES
        self.columns = min(self.columns + n_tok // FREQ_PATCHES, self.max_columns)

    def views(self) -> tuple[np.ndarray, np.ndarray]:
        """(local (4W, entry), global (G, 2, H, 4c, hd)) read-only views, oldest first; valid until the next append."""
        return self._local.view(), self._global.view()

    @property
    def nbytes(self) -> int:
        return self._local._data.nbytes + self._global._data.nbytes


_buffers: dict[tuple, np.ndarray] = {}  # batch input buffers by per-stream shape, reused hop after hop


def _buffer(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 (B, ...) buffer, reused: zeros at first, later whatever the last batch left there
    (finite cache values), which the padding masks exclude exactly (softmax weight 0). One buffer
    per per-stream shape, as large as the largest batch seen, sliced on the leading axis (still
    contiguous), so its memory is bounded by the largest batch, not by the batch sizes seen."""
    buf = _buffers.get(shape[1:])
    if buf is None or buf.shape[0] < shape[0]:
        if len(_buffers) > 16:  # per-stream shapes seen once (start-up: caches still filling) must not pile up
            _buffers.clear()
        buf = _buffers[shape[1:]] = np.zeros(shape, np.float32)
    return buf[: shape[0]]


def _left_padded(views: list[np.ndarray], axis: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Stack views (tokens along `axis`) left padded: (B, ...) and valid (B, T) per column; T >= 1
    (one masked column for an empty cache: ONNX Runtime and TensorRT handle zero-length axes
    poorly, and a masked column costs nothing)."""
    T = max([v.shape[axis] // FREQ_PATCHES for v in views] + [1])
    full = list(shape)
    full[axis] = FREQ_PATCHES * T
    out = _buffer((len(views), *full))
    valid = np.zeros((len(views), T), bool)
    for i, v in enumerate(views):
        m = v.shape[axis]
        if m:
            out[(i,) + (slice(None),) * axis + (slice(FREQ_PATCHES * T - m, None),)] = v
            valid[i, T - m // FREQ_PATCHES :] = True
    return out, valid


def batch_inputs(caches: list[StreamCache]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """caches -> past_local, local_valid, past_global, global_valid (shapes in encoder/incremental.py)."""
    spec = caches[0].spec
    views = [c.views() for c in caches]
    past_local, local_valid = _left_padded([v[0] for v in views], 0, (0, spec.local_entry))
    past_global, global_valid = _left_padded([v[1] for v in views], 3,
                                             (spec.global_groups, 2, spec.heads, 0, spec.head_dim))
    return past_local, local_valid, past_global, global_valid


def rope_angles(first_columns: np.ndarray, n: int, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (B, 4n, head_dim / 2) of the tokens of n columns from stream column first_columns[b].

    Axial 2D RoPE as encoder.model.Rotary (time angles | frequency angles), with the same
    float32 frequencies, but the angle taken modulo 2 pi in float64: a stream's column number
    grows without bound, and in float32 its angle would lose precision within hours."""
    quarter = head_dim // 4
    inv_freq = (np.float32(base) ** (-np.arange(quarter, dtype=np.float32) / np.float32(quarter))).astype(np.float64)
    tok = np.arange(FREQ_PATCHES * n)
    pos_t = np.asarray(first_columns, np.int64)[:, None] + tok[None] // FREQ_PATCHES  # (B, 4n)
    pos_f = np.broadcast_to(tok % FREQ_PATCHES, pos_t.shape)
    ang = np.concatenate([np.mod(pos_t[..., None] * inv_freq, 2 * np.pi), pos_f[..., None] * inv_freq], -1)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def encode_new_columns(backend, mel: np.ndarray, new_columns: np.ndarray, caches: list[StreamCache],
                       commit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One incremental hop for a batch of streams; appends the new entries to each cache
    (commit=False: scores them only, e.g. a stream's padded last column).

    mel: (B, 64, 16 n) the new columns' log-mel, each stream's left aligned; new_columns: (B,)
    how many of the n columns are real per stream (>= 1). backend: anything with
    `incremental(mel, new_valid, rope_cos, rope_sin, past_local, local_valid, past_global,
    global_valid)` and a `cache_spec` (ONNX Runtime, torch).
    Returns columns (B, n, E) (row i valid up to new_columns[i]) and global_emb (B, E), the MAP
    pooling of each stream's whole cached context including the new columns."""
    spec = caches[0].spec
    n = mel.shape[-1] // PATCH_FRAMES
    new_valid = np.arange(n)[None] < np.asarray(new_columns)[:, None]
    cos, sin = rope_angles(np.array([c.end_column for c in caches]), n, spec.head_dim, spec.rope_base)
    columns, global_emb, new_local, new_global = backend.incremental(mel, new_valid, cos, sin, *batch_inputs(caches))
    for i, c in enumerate(caches if commit else []):
        k = int(new_columns[i]) * FREQ_PATCHES
        c.append(new_local[i, :k], new_global[i, :, :, :, :k])
    return columns, global_emb
