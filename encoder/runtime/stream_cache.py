"""Per-stream caches for the incremental encoder (encoder/incremental.py), numpy only.

A `StreamCache` holds a stream's two caches (see `encoder.incremental`): the local blocks' keys and
values of its newest `local_columns` columns and the global blocks' and MAP head's of its newest
`max_columns`, each one contiguous (4c, entry) float32 view, plus the stream column after the
newest (`end_column`). It never reallocates: every entry is stored twice (as in
`streamer.context.Ring`), so the newest run is always one view. `encode_new_columns` runs one
hop for a batch of streams: it left-pads their caches into the encoder's inputs, computes the new
tokens' RoPE angles from their stream columns, and appends what the encoder returns.

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

    local_entry: int
    global_entry: int
    local_columns: int  # columns a local block looks back
    head_dim: int
    rope_base: float

    @classmethod
    def from_manifest(cls, inc: dict) -> CacheSpec:
        return cls(int(inc["local_entry"]), int(inc["global_entry"]), int(inc["local_columns"]),
                   int(inc["head_dim"]), float(inc["rope_base"]))


class _Ring:
    """The newest `capacity` rows of a (rows, entry) stream, stored twice so they are one view."""

    def __init__(self, capacity: int, entry: int):
        self.capacity = capacity
        self._data = np.zeros((2 * capacity, entry), np.float32)
        self.end = self.count = 0

    def append(self, rows: np.ndarray) -> None:
        cap = self.capacity
        rows = rows[-cap:]
        t = rows.shape[0]
        head = self.end % cap
        first = min(t, cap - head)
        for lo, part in ((head, rows[:first]), (0, rows[first:])):
            self._data[lo : lo + len(part)] = part
            self._data[lo + cap : lo + cap + len(part)] = part
        self.end += t
        self.count = min(self.count + t, cap)

    def view(self) -> np.ndarray:
        lo = (self.end - self.count) % self.capacity
        out = self._data[lo : lo + self.count]
        out.flags.writeable = False
        return out


class StreamCache:
    def __init__(self, max_columns: int, spec: CacheSpec):
        assert max_columns > 0, max_columns
        self.max_columns, self.spec = max_columns, spec
        self._local = _Ring(FREQ_PATCHES * min(spec.local_columns, max_columns), spec.local_entry)
        self._global = _Ring(FREQ_PATCHES * max_columns, spec.global_entry)
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
        """Entries (4n, entry) of the n columns after end_column; the oldest fall out."""
        n_tok = new_global.shape[0]
        assert n_tok % FREQ_PATCHES == 0 and new_local.shape[0] == n_tok, (new_local.shape, new_global.shape)
        self._local.append(new_local)
        self._global.append(new_global)
        self.end_column += n_tok // FREQ_PATCHES
        self.columns = min(self.columns + n_tok // FREQ_PATCHES, self.max_columns)

    def views(self) -> tuple[np.ndarray, np.ndarray]:
        """(local (4W, entry), global (4c, entry)) read-only views, oldest first; valid until the next append."""
        return self._local.view(), self._global.view()

    @property
    def nbytes(self) -> int:
        return self._local._data.nbytes + self._global._data.nbytes


def _left_padded(views: list[np.ndarray], entry: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, 4T, entry) left padded, (B, T) valid; T >= 1 (one masked column for an empty cache:
    ONNX Runtime and TensorRT handle zero-length axes poorly, and a masked column costs nothing)."""
    T = max([len(v) // FREQ_PATCHES for v in views] + [1])
    if len(views) == 1 and len(views[0]) == FREQ_PATCHES * T:
        return views[0][None], np.ones((1, T), bool)  # no copy: ONNX Runtime reads the view
    out = np.zeros((len(views), FREQ_PATCHES * T, entry), np.float32)
    valid = np.zeros((len(views), T), bool)
    for i, v in enumerate(views):
        if len(v):
            out[i, FREQ_PATCHES * T - len(v) :] = v
            valid[i, T - len(v) // FREQ_PATCHES :] = True
    return out, valid


def batch_inputs(caches: list[StreamCache]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """caches -> past_local, local_valid, past_global, global_valid (shapes in encoder/incremental.py)."""
    spec = caches[0].spec
    views = [c.views() for c in caches]
    past_local, local_valid = _left_padded([v[0] for v in views], spec.local_entry)
    past_global, global_valid = _left_padded([v[1] for v in views], spec.global_entry)
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
        c.append(new_local[i, :k], new_global[i, :k])
    return columns, global_emb
