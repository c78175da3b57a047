"""Publishing: events and scores on ZeroMQ, a durable SQLite event log, and event clips.

Topics and payloads are specified in docs/events.md:
    events.<stream>.<label>   one JSON message per event edge (kind "start" or "end")
    scores.<stream>           per-hop column scores of every prompt (only while someone subscribes)

Order per hop: `EventLog.write(edges)` commits all the hop's edges in one transaction, then each
edge is sent. So an event a subscriber has seen is in the log, also after a power cut: the log runs
WAL with synchronous=FULL, which fsyncs the WAL at each commit. NORMAL would skip that fsync and
can lose the last commits on power loss (not on a crash of the engine), which breaks "logged before
published"; events are rare and a hop's edges share one commit, so FULL costs at most one fsync
(about 1-10 ms on an SSD) per hop that has edges.

Storage failures (read-only or full disk, a missing directory) never stop publishing: one error
line when the log starts failing, a counter per failed write, and the edges wait in a bounded
in-memory backlog (oldest dropped and counted past `backlog_max`) that is written, in order,
at the first write after `retry_s` that succeeds. Rows are keyed by event id, so a replayed edge
is idempotent.

Sockets: an XPUB with XPUB_NODROP and SNDHWM, sends with NOBLOCK. A message that would exceed the
high-water mark of a subscriber of its topic is dropped for every subscriber of that topic and
counted (PUB would drop it silently for the slow subscriber only, and nothing could count it).
Subscribers see drops as gaps in the per-topic `seq`; the event log has everything.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import zmq

from encoder.frontend import SAMPLE_RATE, SECONDS_PER_COLUMN
from streamer.context import Ring

log = logging.getLogger("streamer.publish")

SCHEMA_VERSION = 1  # the "v" field of every payload (docs/events.md)
EVENT_KINDS = ("start", "end")
# messages queued per subscriber before drops: hours of events, ~8 min of one stream's scores at 2 Hz
DEFAULT_SNDHWM = 1000
LINGER_MS = 500  # on close, time to deliver what is queued
BACKLOG_MAX = 10_000  # event edges held in memory while the log cannot be written
RETRY_S = 5.0  # seconds between attempts to write a failing log
SYNC_MODES = ("FULL", "NORMAL")
CLIP_FORMATS = {"flac": "FLAC", "wav": "WAV"}
BYTES_PER_MB = 1024 * 1024
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # the wire's stream-id rule, also for labels


def event_topic(stream: str, label: str) -> str:
    return f"events.{stream}.{label}"


def scores_topic(stream: str) -> str:
    return f"scores.{stream}"


def new_event_id() -> str:
    """24 hex digits: 12 of Unix milliseconds (ids sort by creation time), 12 random."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def _num(x: float | None, digits: int = 4) -> float | None:
    """A JSON-safe number: rounded, None for None / NaN / inf."""
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


@dataclass(frozen=True)
class Event:
    """One event edge as logged and published. Times are Unix seconds (wall clock)."""

    stream: str
    label: str
    prompt: str  # the prompt text; an ensemble's sentences joined with " | "
    kind: str  # "start" | "end"
    event_id: str  # shared by the start and end of one event
    onset: float
    offset: float | None  # end edges; None on a start, or when unknown (reason "engine_restart")
    score: float  # peak calibrated score of the event so far, in [0, 1]
    model: str  # model name and hash, e.g. "slap-tiny@3f2a9c1e"
    reason: str | None = None  # end edges: "off", "stream_end", "stale", "engine_restart", ...
    clip: str | None = None  # path of the event's audio clip, when clips are on
    # The same edges on the stream clock: seconds since the stream started (for a file, the
    # position in the file), at 160 ms column resolution.
    stream_onset: float | None = None
    stream_offset: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {EVENT_KINDS}, got {self.kind!r}")

    def payload(self, seq: int) -> dict:
        """The JSON object of docs/events.md."""
        return {
            "v": SCHEMA_VERSION,
            "type": "event",
            "stream": self.stream,
            "label": self.label,
            "prompt": self.prompt,
            "kind": self.kind,
            "event_id": self.event_id,
            "onset": _num(self.onset, 3),
            "offset": _num(self.offset, 3),
            "score": _num(self.score),
            "seq": seq,
            "model": self.model,
            "reason": self.reason,
            "clip": self.clip,
            "stream_onset": _num(self.stream_onset, 3),
            "stream_offset": _num(self.stream_offset, 3),
            "time": _num(time.time(), 3),
        }


# ------------------------------------------------------------------------------------ event log

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id      TEXT PRIMARY KEY,  -- event id, shared by the start and the end message
    stream  TEXT NOT NULL,
    label   TEXT NOT NULL,
    prompt  TEXT NOT NULL,
    model   TEXT NOT NULL,
    onset   REAL NOT NULL,     -- Unix seconds
    offset  REAL,              -- Unix seconds; NULL while open, or when unknown
    score   REAL NOT NULL,     -- peak calibrated score
    reason  TEXT,              -- NULL while open; then why it ended
    clip    TEXT,
    stream_onset  REAL,        -- seconds on the stream clock
    stream_offset REAL,
    updated REAL NOT NULL      -- Unix seconds of the last write
);
CREATE INDEX IF NOT EXISTS events_onset ON events (onset);
CREATE INDEX IF NOT EXISTS events_open ON events (id) WHERE reason IS NULL;
"""
_UPSERT = """
INSERT INTO events (id, stream, label, prompt, model, onset, offset, score, reason, clip, stream_onset,
                    stream_offset, updated)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    offset = coalesce(excluded.offset, offset),
    score = max(score, excluded.score),
    reason = coalesce(excluded.reason, reason),
    clip = coalesce(excluded.clip, clip),
    stream_offset = coalesce(excluded.stream_offset, stream_offset),
    updated = excluded.updated
"""
_COLUMNS = "id, stream, label, prompt, model, onset, offset, score, reason, clip, stream_onset, stream_offset"


def _row(e: Event, now: float) -> tuple:
    """An edge as the values of _UPSERT."""
    return (
        e.event_id,
        e.stream,
        e.label,
        e.prompt,
        e.model,
        e.onset,
        e.offset,
        e.score,
        e.reason,
        e.clip,
        e.stream_onset,
        e.stream_offset,
        now,
    )


@dataclass(frozen=True)
class EventRow:
    """One event in the log: an open event has reason None."""

    id: str
    stream: str
    label: str
    prompt: str
    model: str
    onset: float
    offset: float | None
    score: float
    reason: str | None
    clip: str | None
    stream_onset: float | None = None
    stream_offset: float | None = None


@dataclass
class EventLogStats:
    writes: int = 0  # edges committed
    write_errors: int = 0  # failed attempts to write (each may hold many edges)
    backlog_dropped: int = 0  # edges dropped from a full backlog, never logged
    backlog: int = 0  # edges waiting in memory now


def _query(
    conn: sqlite3.Connection,
    since: float | None,
    until: float | None,
    label: str | None,
    stream: str | None,
    limit: int,
) -> list[EventRow]:
    where, args = [], []
    for clause, value in (
        ("onset >= ?", since),
        ("onset < ?", until),
        ("label = ?", label),
        ("stream = ?", stream),
    ):
        if value is not None:
            where.append(clause)
            args.append(value)
    sql = f"SELECT {_COLUMNS} FROM events"
    sql += f" WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(sql + " ORDER BY onset, id LIMIT ?", (*args, limit)).fetchall()
    return [EventRow(*row) for row in rows]


def query_events(
    path: str | os.PathLike,
    since: float | None = None,
    until: float | None = None,
    label: str | None = None,
    stream: str | None = None,
    limit: int = 1000,
) -> list[EventRow]:
    """Events with onset in [since, until) (Unix seconds), oldest first, from a log opened read-only
    (for `python main.py events`, beside a running engine). Raises sqlite3.Error if unreadable."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=2.0)
    try:
        return _query(conn, since, until, label, stream, limit)
    finally:
        conn.close()


class EventLog:
    """The event log on SQLite: one row per event, written before each edge is published.

    write(edges) -> bool: True when they (and any backlog) are committed; never raises for storage.
    close_open_events(reason) -> list[Event]: at startup, end the events a previous run left open.
    query(since, until, label, stream, limit) -> list[EventRow].
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        synchronous: str = "FULL",
        backlog_max: int = BACKLOG_MAX,
        retry_s: float = RETRY_S,
    ):
        if synchronous not in SYNC_MODES:
            raise ValueError(f"synchronous must be one of {SYNC_MODES}, got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.retry_s = retry_s
        self._backlog: deque[Event] = deque()
        self.backlog_max = backlog_max
        self.stats = EventLogStats()
        self._conn: sqlite3.Connection | None = None
        self._failing = False
        self._retry_at = 0.0
        self._try(lambda conn: None)  # open now: a bad path is reported at startup

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)  # explicit transactions
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                conn.executescript(_SCHEMA)
            except sqlite3.Error:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _waiting(self) -> bool:
        """True while a failing log waits out retry_s before the next attempt."""
        return self._failing and time.monotonic() < self._retry_at

    def _try(self, action) -> bool:
        """Run action(conn) in a transaction; on a storage error: count, report once, retry later."""
        if self._waiting():
            return False
        try:
            conn = self._connect()
            with conn:  # BEGIN ... COMMIT, or ROLLBACK on error
                conn.execute("BEGIN IMMEDIATE")
                action(conn)
        except (sqlite3.Error, OSError) as e:
            self.stats.write_errors += 1
            self._retry_at = time.monotonic() + self.retry_s
            if not self._failing:
                self._failing = True
                log.error(
                    "event log %s: cannot write (%s); publishing goes on, up to %d events wait in memory, "
                    "retrying every %g s",
                    self.path,
                    str(e).replace("\n", " "),
                    self.backlog_max,
                    self.retry_s,
                )
            self._close_conn()
            return False
        if self._failing:
            self._failing = False
            log.warning("event log %s: writable again", self.path)
        return True

    def write(self, events: Sequence[Event]) -> bool:
        """Commit these edges (after any backlog), in one transaction. False: they wait in memory."""
        self._backlog.extend(events)
        ok = not self._backlog
        if not ok and not self._waiting():
            now = time.time()
            rows = [_row(e, now) for e in self._backlog]
            ok = self._try(lambda conn: conn.executemany(_UPSERT, rows))
            if ok:
                self._backlog.clear()
                self.stats.writes += len(rows)
        overflow = max(0, len(self._backlog) - self.backlog_max)
        for _ in range(overflow):  # the oldest go: the newest matter most to whoever reads the log
            self._backlog.popleft()
        self.stats.backlog_dropped += overflow
        self.stats.backlog = len(self._backlog)
        return ok

    def close_open_events(self, reason: str = "engine_restart") -> list[Event]:
        """End every event that has a start but no end; returns them as end edges (offset unknown)."""
        found: list[tuple] = []

        def close(conn: sqlite3.Connection) -> None:
            found.extend(conn.execute(f"SELECT {_COLUMNS} FROM events WHERE reason IS NULL").fetchall())
            conn.execute(
                "UPDATE events SET reason = ?, updated = ? WHERE reason IS NULL", (reason, time.time())
            )

        self.write([])  # anything held goes first
        if not self._try(close):
            return []
        rows = [EventRow(*r) for r in found]
        return [
            Event(
                r.stream, r.label, r.prompt, "end", r.id, r.onset, r.offset, r.score, r.model, reason, r.clip,
                r.stream_onset, r.stream_offset,
            )
            for r in rows
        ]

    def query(
        self,
        since: float | None = None,
        until: float | None = None,
        label: str | None = None,
        stream: str | None = None,
        limit: int = 1000,
    ) -> list[EventRow]:
        """Events with onset in [since, until) (Unix seconds), oldest first. Raises sqlite3.Error."""
        return _query(self._connect(), since, until, label, stream, limit)

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def close(self) -> None:
        self.write([])
        self._close_conn()


# ------------------------------------------------------------------------------------ publisher


@dataclass
class PublishStats:
    events_sent: int = 0
    events_dropped: int = 0  # over a subscriber's SNDHWM (XPUB_NODROP + NOBLOCK -> EAGAIN)
    scores_sent: int = 0
    scores_dropped: int = 0
    scores_skipped: int = 0  # not built: nobody subscribes to the stream's scores topic


class Publisher:
    """ZeroMQ XPUB publisher of event edges and scores; see the module docstring.

    endpoint: where to bind, e.g. tcp://127.0.0.1:5556 (port 0: any free port; see `endpoint`).
    event_log: written before each publish (None: publish only).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        event_log: EventLog | None = None,
        sndhwm: int = DEFAULT_SNDHWM,
        context: zmq.Context | None = None,
    ):
        self.event_log = event_log
        self.stats = PublishStats()
        self._seq: dict[str, int] = {}  # topic -> next seq
        self.subscriptions: set[str] = set()  # topic prefixes subscribed now
        self._sock = (context or zmq.Context.instance()).socket(zmq.XPUB)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        self._sock.setsockopt(zmq.XPUB_NODROP, 1)  # full queue -> EAGAIN (counted), not a silent drop
        self._sock.setsockopt(zmq.LINGER, LINGER_MS)
        self._sock.bind(endpoint)
        self.endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT).decode()

    def poll_subscriptions(self) -> set[str]:
        """Read pending (un)subscriptions (XPUB passes each topic's first and last); returns the prefixes."""
        subs = self.subscriptions
        while True:
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return subs
            if msg[:1] == b"\x01":
                subs.add(msg[1:].decode(errors="replace"))
            elif msg[:1] == b"\x00":
                subs.discard(msg[1:].decode(errors="replace"))

    def has_subscribers(self, topic: str) -> bool:
        return any(topic.startswith(prefix) for prefix in self.poll_subscriptions())

    def _send(self, topic: str, payload: dict) -> bool:
        try:
            self._sock.send_multipart(
                [topic.encode(), json.dumps(payload, separators=(",", ":")).encode()], flags=zmq.NOBLOCK
            )
        except zmq.Again:
            return False
        return True

    def _next_seq(self, topic: str) -> int:
        seq = self._seq.get(topic, 0)
        self._seq[topic] = seq + 1
        return seq

    def publish_events(self, events: Sequence[Event]) -> list[dict]:
        """Log the edges (one transaction), then send each on events.<stream>.<label>; returns the payloads."""
        if self.event_log is not None and events:
            self.event_log.write(events)
        self.poll_subscriptions()
        payloads = []
        for event in events:
            topic = event_topic(event.stream, event.label)
            payload = event.payload(self._next_seq(topic))
            if self._send(topic, payload):
                self.stats.events_sent += 1
            else:
                self.stats.events_dropped += 1
            payloads.append(payload)
        return payloads

    def publish_status(self, stream: str, status: str, reason: str | None = None) -> bool:
        """Send a stream's health change on stream.<status>.<stream> (status "stale" | "live")."""
        topic = f"stream.{status}.{stream}"
        payload = {"v": SCHEMA_VERSION, "type": "stream", "stream": stream, "status": status, "reason": reason,
                   "seq": self._next_seq(topic), "time": _num(time.time(), 3)}
        return self._send(topic, payload)

    def publish_scores(
        self,
        stream: str,
        *,
        model: str,
        labels: Sequence[str],
        columns: np.ndarray,
        first_column: int,
        start: float | None,
        global_scores: np.ndarray | None = None,
        column_s: float = SECONDS_PER_COLUMN,
        level_db: float | None = None,
        final: bool = False,
    ) -> bool:
        """Send one hop's scores on scores.<stream>, if anyone subscribes (else nothing is built).

        columns: (C, P) scores of the hop's new columns, P = len(labels); first_column: the stream
        column index of columns[0]; start: its Unix time; global_scores: (P,) or None;
        level_db: the hop's audio level (dB re full scale, RMS) or None; final: the stream's
        end-of-stream summary (its tail's columns, and the last window encoded whole).
        """
        topic = scores_topic(stream)
        if not self.has_subscribers(topic):
            self.stats.scores_skipped += 1
            return False
        payload = {
            "v": SCHEMA_VERSION,
            "type": "scores",
            "stream": stream,
            "seq": self._next_seq(topic),
            "model": model,
            "labels": list(labels),
            "first_column": int(first_column),
            "start": _num(start, 3),
            "column_s": column_s,
            "columns": np.round(np.asarray(columns, dtype=np.float64), 4).tolist(),
            "global": None
            if global_scores is None
            else np.round(np.asarray(global_scores, np.float64), 4).tolist(),
            "level_db": _num(level_db, 1),
            "final": bool(final),
            "time": _num(time.time(), 3),
        }
        if self._send(topic, payload):
            self.stats.scores_sent += 1
            return True
        self.stats.scores_dropped += 1
        return False

    def close(self) -> None:
        self._sock.close()  # waits up to LINGER_MS to deliver the last edges (e.g. stream_end)


# ------------------------------------------------------------------------------------ clips


@dataclass
class ClipStats:
    written: int = 0
    errors: int = 0  # clips not written (disk full, read-only, ...)
    deleted: int = 0  # removed by retention


@dataclass
class _Clip:
    stream: str
    path: Path
    start: int  # stream sample of the clip's first sample (onset - pre-roll)
    limit: int  # last sample + 1 if the event never ends (max_clip_s)
    stop: int | None = None  # offset + post-roll, once the event has ended

    @property
    def due(self) -> int:
        """The clip can be written once the stream's audio reaches this sample."""
        return self.limit if self.stop is None else min(self.stop, self.limit)


class ClipWriter:
    """Each event's audio, with pre- and post-roll, as FLAC or WAV under directory/<stream>/.

    push(stream, samples, start_sample): keep the stream's recent audio (stream-clock samples,
    `Push.start_sample` from the context), and write the clips whose audio is complete.
    begin(...) -> the clip's path (goes into both edges' payloads); end(event_id, offset_sample).
    An edge's column c is stream sample c * context.COLUMN_SAMPLES.
    A clip is written once its post-roll has arrived (write to .part, then rename: a reader never
    sees half a file), or by flush(stream) at a stream's end with what there is. Retention after
    each write: files older than max_age_days go, then the oldest until under max_total_mb.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        pre_roll_s: float = 1.0,
        post_roll_s: float = 1.0,
        fmt: str = "flac",
        max_age_days: float = 7.0,
        max_total_mb: float = 1024.0,
        max_clip_s: float = 30.0,
        max_delay_s: float = 10.0,
    ):
        if fmt not in CLIP_FORMATS:
            raise ValueError(f"clip format must be one of {sorted(CLIP_FORMATS)}, got {fmt!r}")
        self.directory = Path(directory)
        self.fmt = fmt
        self.pre_roll = round(pre_roll_s * SAMPLE_RATE)
        self.post_roll = round(post_roll_s * SAMPLE_RATE)
        self.max_clip = round(max_clip_s * SAMPLE_RATE)
        self.max_age_s = max_age_days * 86400.0
        self.max_total_bytes = int(max_total_mb * BYTES_PER_MB)
        # audio kept per stream: a whole clip plus the detector's delay in confirming a start
        self._capacity = self.pre_roll + self.max_clip + self.post_roll + round(max_delay_s * SAMPLE_RATE)
        self._rings: dict[str, Ring] = {}
        self._clips: dict[str, _Clip] = {}  # by event id
        self.stats = ClipStats()
        self._failing = False

    def path_for(self, stream: str, label: str, event_id: str) -> Path:
        """directory/<stream>/<label>-<event_id>.<fmt>; ValueError for a name that would leave the folder
        (the config and the engine refuse those before they get here)."""
        for name in (stream, label, event_id):
            if not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
                raise ValueError(f"clips: {name!r} is not a safe file name (1-64 of [A-Za-z0-9_.-], not . or ..)")
        return self.directory / stream / f"{label}-{event_id}.{self.fmt}"

    def push(self, stream: str, samples: np.ndarray, start_sample: int) -> list[Path]:
        """samples: (n,) float32 16 kHz from stream sample start_sample. Returns the clips written."""
        ring = self._rings.get(stream)
        if ring is None:
            ring = self._rings[stream] = Ring(self._capacity)
            ring.clear(start_sample)
        if start_sample < ring.end:  # overlap: keep only what is new
            samples = samples[ring.end - start_sample :]
            start_sample = ring.end
        elif start_sample > ring.end:  # the stream clock jumped (a gap or a reset)
            gap = start_sample - ring.end
            if gap >= ring.capacity:
                ring.clear(start_sample)
            else:
                ring.write(np.zeros(gap, np.float32))
        if len(samples):
            ring.write(np.asarray(samples, dtype=np.float32))
        due = [eid for eid, c in self._clips.items() if c.stream == stream and c.due <= ring.end]
        return [p for eid in due if (p := self._write(self._clips.pop(eid)))]

    def begin(self, stream: str, label: str, event_id: str, onset_sample: int) -> Path:
        path = self.path_for(stream, label, event_id)
        start = onset_sample - self.pre_roll
        self._clips[event_id] = _Clip(
            stream, path, start, start + self.pre_roll + self.max_clip + self.post_roll
        )
        return path

    def end(self, event_id: str, offset_sample: int) -> Path | None:
        """The event ended at offset_sample; its clip is written once the post-roll has arrived."""
        clip = self._clips.get(event_id)
        if clip is None:
            return None  # never begun, or already written at max_clip_s
        clip.stop = offset_sample + self.post_roll
        ring = self._rings.get(clip.stream)
        if ring is not None and clip.due <= ring.end:
            self._write(self._clips.pop(event_id))
        return clip.path

    def flush(self, stream: str | None = None) -> list[Path]:
        """Write the pending clips (of one stream, or all) now, with the audio there is."""
        due = [eid for eid, c in self._clips.items() if stream is None or c.stream == stream]
        return [p for eid in due if (p := self._write(self._clips.pop(eid)))]

    def _write(self, clip: _Clip) -> Path | None:
        ring = self._rings.get(clip.stream)
        if ring is None:
            return None
        start = max(clip.start, ring.start)  # a start confirmed very late loses some pre-roll
        stop = min(ring.end if clip.stop is None else clip.stop, clip.limit, ring.end)
        if stop <= start:
            return None
        audio = ring.view(start, stop)
        tmp = clip.path.with_name(clip.path.name + ".part")
        try:
            clip.path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(tmp, audio, SAMPLE_RATE, format=CLIP_FORMATS[self.fmt], subtype="PCM_16")
            os.replace(tmp, clip.path)
        except (OSError, RuntimeError) as e:  # soundfile's LibsndfileError is a RuntimeError
            self.stats.errors += 1
            if not self._failing:
                self._failing = True
                log.error("clips: cannot write %s (%s); events go on without clips", clip.path, e)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return None
        self._failing = False
        self.stats.written += 1
        self.enforce_retention()
        return clip.path

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete clips older than max_age_days, then the oldest until under max_total_mb."""
        now = time.time() if now is None else now
        files = []
        for suffix in CLIP_FORMATS:
            for p in self.directory.glob(f"*/*.{suffix}"):
                try:
                    st = p.stat()
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, p))
        files.sort()
        total = sum(size for _, size, _ in files)
        deleted = 0
        for mtime, size, p in files:
            if now - mtime <= self.max_age_s and total <= self.max_total_bytes:
                break
            try:
                p.unlink()
            except OSError:
                continue
            total -= size
            deleted += 1
        self.stats.deleted += deleted
        return deleted
