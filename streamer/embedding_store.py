"""The embedding store: one global embedding per hop per stream (fp16), and optionally the audio.

Written by the engine beside its event log (`outputs.embeddings`, default `events/embeddings.db`)
and read by `main.py search` and the web view, so a question nobody configured a prompt for ("when
did glass break yesterday?") can be asked of audio after it was heard (streamer/search.py).

    store = EmbeddingStore("events/embeddings.db", model="slap-tiny@dcd7cea0", hop_s=0.5, context_s=10)
    store.add(stream, global_emb (E,), first_column, n_columns, wall_start, wall_end)   # each hop
    store.push_audio(stream, samples (n,) float32 16 kHz, start_sample, wall_start)      # with `audio`
    store.tick(); store.close()
    hops = read_hops(path, model, since=, until=, stream=)    # Hops: arrays, for a brute-force scan
    audio = read_audio(path, stream, run, start_s, end_s)     # (n,) float32, zeros where none was kept

One SQLite file (WAL), three tables:
    runs   one row per engine start: the model, hop and context; stream clocks restart at 0 each run
    hops   stream, run, the window's columns [start_col, end_col) on the stream clock, their wall
           times, and the window's global embedding as fp16 bytes (E * 2 bytes: 512 for 256-d)
    audio  stream, run, start_sample, wall_start, FLAC bytes of up to AUDIO_CHUNK_S of 16 kHz audio

A hop's embedding is that of its whole window (up to context.max_context_s), so a sound is in every
window that overlaps it: search turns a run of matching windows into the time where they agree.

Writes are batched and committed at most every COMMIT_S (synchronous=NORMAL: a power cut may lose
the last second of embeddings, never the file; the event log, not this store, is the record of
events). Retention runs every RETENTION_EVERY_S: rows older than max_age_days go, then the oldest
until the embeddings fit max_total_mb and the audio audio_max_total_mb. Storage errors never
stop the engine: one error line, a counter, the batch is dropped, and writing is tried again.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from encoder.frontend import SAMPLE_RATE, SECONDS_PER_COLUMN

log = logging.getLogger("streamer.embedding_store")

COMMIT_S = 1.0  # seconds between commits: a few hops' rows share one transaction
RETENTION_EVERY_S = 60.0  # how often age and size limits are applied
AUDIO_CHUNK_S = 10.0  # seconds of audio per FLAC row (FLAC frames need a few seconds to pay off)
ROW_OVERHEAD_BYTES = 64  # a hop row's columns besides the embedding, for the size limit
BYTES_PER_MB = 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run       INTEGER PRIMARY KEY,   -- one per engine start
    model     TEXT NOT NULL,         -- name@hash: embeddings of another model mean nothing to this one
    hop_s     REAL NOT NULL,
    context_s REAL NOT NULL,
    started   REAL NOT NULL          -- Unix seconds
);
CREATE TABLE IF NOT EXISTS hops (
    stream     TEXT NOT NULL,
    run        INTEGER NOT NULL,
    start_col  INTEGER NOT NULL,     -- the window's first column on the stream clock (0.16 s each)
    end_col    INTEGER NOT NULL,     -- exclusive
    wall_start REAL NOT NULL,        -- Unix seconds of start_col (the run's start + stream time if unknown)
    wall_end   REAL NOT NULL,
    emb        BLOB NOT NULL         -- float16, little-endian, E values
);
CREATE INDEX IF NOT EXISTS hops_time ON hops (wall_end);
CREATE TABLE IF NOT EXISTS audio (
    stream       TEXT NOT NULL,
    run          INTEGER NOT NULL,
    start_sample INTEGER NOT NULL,   -- stream clock, 16 kHz samples
    n_samples    INTEGER NOT NULL,
    wall_start   REAL NOT NULL,
    flac         BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS audio_at ON audio (stream, run, start_sample);
"""


@dataclass
class EmbeddingStoreStats:
    hops_written: int = 0
    audio_chunks_written: int = 0
    write_errors: int = 0  # failed commits (each may hold many rows, which are dropped)
    deleted: int = 0  # rows removed by retention


@dataclass
class _AudioBuffer:
    run_start: int  # stream sample of the buffer's first sample
    wall_start: float
    parts: list[np.ndarray] = field(default_factory=list)
    n: int = 0


class EmbeddingStore:
    """The writer (one per engine); see the module docstring. Never raises for storage errors
    after the file was opened once (a bad path at startup raises sqlite3.Error / OSError)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model: str,
        hop_s: float,
        context_s: float,
        max_age_days: float = 7.0,
        max_total_mb: float = 512.0,
        audio: bool = False,
        audio_max_total_mb: float = 2048.0,
    ):
        self.path = Path(path)
        self.keep_audio = audio
        self.max_age_s = max_age_days * 86400.0
        self.max_hop_bytes = max_total_mb * BYTES_PER_MB
        self.max_audio_bytes = audio_max_total_mb * BYTES_PER_MB
        self.stats = EmbeddingStoreStats()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self.started = time.time()
        self.run = self._conn.execute(
            "INSERT INTO runs (model, hop_s, context_s, started) VALUES (?, ?, ?, ?)",
            (model, hop_s, context_s, self.started),
        ).lastrowid
        self._hop_rows: list[tuple] = []
        self._audio_rows: list[tuple] = []
        self._audio: dict[str, _AudioBuffer] = {}
        self._next_commit = time.monotonic() + COMMIT_S
        self._next_retention = 0.0
        self._failing = False
        self._hop_bytes, self._audio_bytes = self._sizes()

    def _sizes(self) -> tuple[float, float]:
        """Bytes held now (estimated for hops: rows x (embedding + overhead))."""
        n, emb = self._conn.execute("SELECT count(*), coalesce(max(length(emb)), 0) FROM hops").fetchone()
        audio = self._conn.execute("SELECT coalesce(sum(length(flac)), 0) FROM audio").fetchone()[0]
        return n * (emb + ROW_OVERHEAD_BYTES), float(audio)

    # -- writing ------------------------------------------------------------------------------
    def add(self, stream: str, emb: np.ndarray, first_column: int, n_columns: int,
            wall_start: float | None, wall_end: float | None) -> None:
        """One hop: emb (E,) the window's global embedding; its columns [first_column, + n_columns)."""
        start_s, end_s = first_column * SECONDS_PER_COLUMN, (first_column + n_columns) * SECONDS_PER_COLUMN
        wall_start = self.started + start_s if wall_start is None else wall_start
        wall_end = self.started + end_s if wall_end is None else wall_end
        blob = np.asarray(emb, dtype="<f2").tobytes()
        self._hop_rows.append((stream, self.run, first_column, first_column + n_columns, wall_start, wall_end, blob))
        self.tick()

    def push_audio(self, stream: str, samples: np.ndarray, start_sample: int, wall_start: float | None) -> None:
        """samples: (n,) float32 16 kHz from stream sample start_sample (nothing unless `audio`)."""
        if not self.keep_audio or not len(samples):
            return
        buf = self._audio.get(stream)
        if buf is not None and buf.run_start + buf.n != start_sample:  # a gap or a reset: a new chunk
            self._close_chunk(stream)
            buf = None
        if buf is None:
            wall = self.started + start_sample / SAMPLE_RATE if wall_start is None else wall_start
            buf = self._audio[stream] = _AudioBuffer(start_sample, wall)
        buf.parts.append(np.asarray(samples, np.float32).copy())
        buf.n += len(samples)
        if buf.n >= AUDIO_CHUNK_S * SAMPLE_RATE:
            self._close_chunk(stream)

    def _close_chunk(self, stream: str) -> None:
        buf = self._audio.pop(stream, None)
        if buf is None or not buf.n:
            return
        out = io.BytesIO()
        sf.write(out, np.concatenate(buf.parts), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        self._audio_rows.append((stream, self.run, buf.run_start, buf.n, buf.wall_start, out.getvalue()))

    def tick(self) -> None:
        """Commit what waits if COMMIT_S has passed; apply retention when due. Cheap: call every loop."""
        now = time.monotonic()
        if now >= self._next_commit:
            self.flush()
        if now >= self._next_retention:
            self._next_retention = now + RETENTION_EVERY_S
            self.enforce_retention()

    def flush(self) -> bool:
        """Commit the waiting rows now. False (rows dropped, counted) on a storage error."""
        self._next_commit = time.monotonic() + COMMIT_S
        hops, audio = self._hop_rows, self._audio_rows
        if not hops and not audio:
            return True
        self._hop_rows, self._audio_rows = [], []
        ok = self._try(lambda c: (
            c.executemany("INSERT INTO hops VALUES (?, ?, ?, ?, ?, ?, ?)", hops),
            c.executemany("INSERT INTO audio VALUES (?, ?, ?, ?, ?, ?)", audio)))
        if ok:
            self.stats.hops_written += len(hops)
            self.stats.audio_chunks_written += len(audio)
            self._hop_bytes += sum(len(r[6]) + ROW_OVERHEAD_BYTES for r in hops)
            self._audio_bytes += sum(len(r[5]) for r in audio)
        return ok

    def _try(self, action) -> bool:
        try:
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                action(self._conn)
        except (sqlite3.Error, OSError) as e:
            self.stats.write_errors += 1
            if not self._failing:
                self._failing = True
                log.error("embedding store %s: cannot write (%s); the engine goes on, search misses "
                          "this audio until it can", self.path, str(e).replace("\n", " "))
            return False
        if self._failing:
            self._failing = False
            log.warning("embedding store %s: writable again", self.path)
        return True

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete rows older than max_age_days, then the oldest past the size limits. Returns rows deleted."""
        cutoff = (time.time() if now is None else now) - self.max_age_s
        deleted = [0]

        def apply(c: sqlite3.Connection) -> None:
            deleted[0] += c.execute("DELETE FROM hops WHERE wall_end < ?", (cutoff,)).rowcount
            deleted[0] += c.execute("DELETE FROM audio WHERE wall_start < ?", (cutoff - AUDIO_CHUNK_S,)).rowcount
            n, emb = c.execute("SELECT count(*), coalesce(max(length(emb)), 0) FROM hops").fetchone()
            row = emb + ROW_OVERHEAD_BYTES
            excess = int(n - self.max_hop_bytes // row) if row and n * row > self.max_hop_bytes else 0
            if excess > 0:  # rowid order is insertion order: the oldest first
                deleted[0] += c.execute("DELETE FROM hops WHERE rowid IN (SELECT rowid FROM hops ORDER BY rowid "
                                        "LIMIT ?)", (excess,)).rowcount
            total = c.execute("SELECT coalesce(sum(length(flac)), 0) FROM audio").fetchone()[0]
            while total > self.max_audio_bytes:
                oldest = c.execute("SELECT rowid, length(flac) FROM audio ORDER BY rowid LIMIT 64").fetchall()
                if not oldest:
                    break
                drop, freed = [], 0
                for rowid, size in oldest:
                    if total - freed <= self.max_audio_bytes:
                        break
                    drop.append((rowid,))
                    freed += size
                c.executemany("DELETE FROM audio WHERE rowid = ?", drop)
                deleted[0] += len(drop)
                total -= freed

        self.flush()
        if self._try(apply):
            self.stats.deleted += deleted[0]
            self._hop_bytes, self._audio_bytes = self._sizes()
        return deleted[0]

    def close(self) -> None:
        for stream in list(self._audio):
            self._close_chunk(stream)
        self.flush()
        try:
            self._conn.close()
        except sqlite3.Error:
            pass


# ------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class Hops:
    """Stored hops, ordered by (stream, run, start_col). emb: (N, E) float16."""

    stream: np.ndarray  # (N,) str
    run: np.ndarray  # (N,) int64
    start_col: np.ndarray  # (N,) int64
    end_col: np.ndarray  # (N,) int64
    wall_start: np.ndarray  # (N,) float64
    wall_end: np.ndarray  # (N,) float64
    emb: np.ndarray  # (N, E) float16

    def __len__(self) -> int:
        return len(self.run)


def _connect_ro(path: str | os.PathLike) -> sqlite3.Connection:
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=2.0)


def read_hops(path: str | os.PathLike, model: str, *, since: float | None = None, until: float | None = None,
              stream: str | None = None) -> Hops:
    """The hops of `model`'s runs whose windows end in [since, until) (Unix s), opened read-only
    (beside a running engine). Raises sqlite3.Error when the file cannot be read."""
    where, args = ["run IN (SELECT run FROM runs WHERE model = ?)"], [model]
    for clause, value in (("wall_end >= ?", since), ("wall_end < ?", until), ("stream = ?", stream)):
        if value is not None:
            where.append(clause)
            args.append(value)
    conn = _connect_ro(path)
    try:
        # insertion order, sorted below: an ORDER BY would make SQLite sort the rows with their blobs
        rows = conn.execute("SELECT stream, run, start_col, end_col, wall_start, wall_end, emb FROM hops WHERE "
                            + " AND ".join(where), args).fetchall()
    finally:
        conn.close()
    if not rows:
        return Hops(np.array([], str), *(np.zeros(0, np.int64),) * 3, np.zeros(0), np.zeros(0),
                    np.zeros((0, 0), np.float16))
    stream_, run, start, end, ws, we, blobs = zip(*rows)
    emb = np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(rows), -1)
    names, run, start = np.array(stream_), np.array(run, np.int64), np.array(start, np.int64)
    order = np.lexsort((start, run, names))
    return Hops(names[order], run[order], start[order], np.array(end, np.int64)[order],
                np.array(ws, np.float64)[order], np.array(we, np.float64)[order], emb[order])


def other_models(path: str | os.PathLike, model: str) -> list[str]:
    """Models other than `model` that have runs in the store (their hops are not searched)."""
    conn = _connect_ro(path)
    try:
        return [m for (m,) in conn.execute("SELECT DISTINCT model FROM runs WHERE model != ?", (model,))]
    finally:
        conn.close()


def read_audio(path: str | os.PathLike, stream: str, run: int, start_s: float, end_s: float) -> np.ndarray:
    """(n,) float32 16 kHz audio of stream time [start_s, end_s) of one run; zeros where none was kept."""
    a, b = max(0, round(start_s * SAMPLE_RATE)), max(0, round(end_s * SAMPLE_RATE))
    out = np.zeros(max(0, b - a), np.float32)
    conn = _connect_ro(path)
    try:
        rows = conn.execute("SELECT start_sample, n_samples, flac FROM audio WHERE stream = ? AND run = ? AND "
                            "start_sample < ? AND start_sample + n_samples > ? ORDER BY start_sample",
                            (stream, run, b, a)).fetchall()
    finally:
        conn.close()
    for start, _, flac in rows:
        chunk, _ = sf.read(io.BytesIO(flac), dtype="float32")
        lo, hi = max(a, start), min(b, start + len(chunk))
        if hi > lo:
            out[lo - a:hi - a] = chunk[lo - start:hi - start]
    return out


def has_audio(path: str | os.PathLike) -> bool:
    conn = _connect_ro(path)
    try:
        return conn.execute("SELECT 1 FROM audio LIMIT 1").fetchone() is not None
    finally:
        conn.close()
