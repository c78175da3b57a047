"""Per-stream caches for the incremental encoder (encoder/incremental.py), numpy only.

A `StreamCache` holds the entries (keys and values of every layer and the MAP head, see
`encoder.incremental`) of a stream's newest `max_columns` encoded columns, as one contiguous
(4c, ENTRY) float32 view, and the stream column after its newest one (`end_column`). It never
reallocates: like `streamer.context.Ring`, every entry is stored twice so the newest run is one
view. `batch_inputs` left-pads the caches of a batch of streams into the encoder's inputs.

Memory per stream: 2 x 4 x max_columns x ENTRY x 4 bytes (slap-tiny, 10 s: 2 x 248 x 3584 x 4
= 7.1 MB).
"""

from __future__ import annotations

import numpy as np

FREQ_PATCHES = 4  # tokens per column (= encoder.frontend.FREQ_PATCHES)
PATCH_FRAMES = 16  # log-mel frames per column (= encoder.frontend.PATCH_FRAMES)


class StreamCache:
    def __init__(self, max_columns: int, entry: int):
        assert max_columns > 0 and entry > 0, (max_columns, entry)
        self.max_columns, self.entry = max_columns, entry
        cap = max_columns * FREQ_PATCHES
        self._data = np.zeros((2 * cap, entry), np.float32)
        self.clear(0)

    def clear(self, end_column: int) -> None:
        """Forget every entry; the next column appended is stream column `end_column`."""
        self.end_column = end_column
        self.columns = 0
        self._end = 0  # tokens written since the last clear

    @property
    def first_column(self) -> int:
        return self.end_column - self.columns

    def append(self, entries: np.ndarray) -> None:
        """entries: (4n, ENTRY) for the n columns after end_column; the oldest fall out."""
        n_tok = entries.shape[0]
        assert n_tok % FREQ_PATCHES == 0, n_tok
        cap = self._data.shape[0] // 2
        if n_tok > cap:
            entries = entries[-cap:]
        t = entries.shape[0]
        head = self._end % cap
        first = min(t, cap - head)
        for lo, part in ((head, entries[:first]), (0, entries[first:])):
            self._data[lo : lo + len(part)] = part
            self._data[lo + cap : lo + cap + len(part)] = part
        self._end += t
        self.end_column += n_tok // FREQ_PATCHES
        self.columns = min(self.columns + n_tok // FREQ_PATCHES, self.max_columns)

    def view(self) -> np.ndarray:
        """(4c, ENTRY) read-only view of the cached entries, oldest first; valid until the next append."""
        cap = self._data.shape[0] // 2
        n = self.columns * FREQ_PATCHES
        lo = (self._end - n) % cap
        out = self._data[lo : lo + n]
        out.flags.writeable = False
        return out

    @property
    def nbytes(self) -> int:
        return self._data.nbytes


def batch_inputs(caches: list[StreamCache]) -> tuple[np.ndarray, np.ndarray]:
    """caches -> cache (B, 4T, ENTRY) float32 left padded, cache_valid (B, T) bool, T = max columns.

    T is at least 1 (one invalid column for streams with nothing cached): ONNX Runtime and
    TensorRT handle zero-length axes poorly, and a masked column costs next to nothing."""
    T = max([c.columns for c in caches] + [1])
    entry = caches[0].entry
    if len(caches) == 1 and caches[0].columns == T:
        return caches[0].view()[None], np.ones((1, T), bool)  # no copy: ONNX Runtime reads the view
    cache = np.zeros((len(caches), T * FREQ_PATCHES, entry), np.float32)
    valid = np.zeros((len(caches), T), bool)
    for i, c in enumerate(caches):
        if c.columns:
            cache[i, (T - c.columns) * FREQ_PATCHES :] = c.view()
            valid[i, T - c.columns :] = True
    return cache, valid


def encode_new_columns(backend, mel: np.ndarray, new_columns: np.ndarray, caches: list[StreamCache],
                       commit: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One incremental hop for a batch of streams; appends the new entries to each cache
    (commit=False: scores them only, e.g. a stream's padded last column).

    mel: (B, 64, 16 n) the new columns' log-mel, each stream's left aligned; new_columns: (B,)
    how many of the n columns are real per stream (>= 1). backend: anything with
    `incremental(mel, new_valid, cache, cache_valid)` (ONNX Runtime, torch).
    Returns columns (B, n, E) (row i valid up to new_columns[i]) and global_emb (B, E), the MAP
    pooling of each stream's whole cached context including the new columns."""
    n = mel.shape[-1] // PATCH_FRAMES
    new_valid = np.arange(n)[None] < np.asarray(new_columns)[:, None]
    cache, cache_valid = batch_inputs(caches)
    columns, global_emb, new_cache = backend.incremental(mel, new_valid, cache, cache_valid)
    for i, c in enumerate(caches if commit else []):
        c.append(new_cache[i, : int(new_columns[i]) * FREQ_PATCHES])
    return columns, global_emb
