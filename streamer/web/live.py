"""The web view's live side: one ZeroMQ SUB to the engine's PUB, fanned out to the pages.

    hub = LiveHub("tcp://127.0.0.1:5556")
    task = asyncio.create_task(hub.run())     # subscribes to scores., events., stream.
    queue = hub.listen(); ...; hub.forget(queue)   # (kind, payload) tuples for one page's SSE
    hub.snapshot()                             # every stream: health, level, labels, recent scores and events

The SUB socket reconnects by itself (ZeroMQ), so when the engine restarts the pages go stale and
come back live without a reload; a restarted engine's stream clock starts again at column 0, and
the stream's history is cleared then. Health: a stream is `live` while its scores arrive (within
STALE_AFTER_S), `stale` after the engine says so (stream.stale.<name>) or when they stop. Scores
reach the web view only with the engine's `outputs.scores_topic: true` (`main.py --web` turns it on).
A page that cannot keep up loses its oldest messages (bounded queue), never the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

log = logging.getLogger("streamer.web.live")

STALE_AFTER_S = 3.0  # no scores for this long: the stream is shown stale (the engine's own rule is 2 s)
HISTORY_S = 60.0  # seconds of scores kept per stream for a page that opens now
EVENTS_KEPT = 50  # recent events per stream in the snapshot
QUEUE_MAX = 500  # messages waiting per page
HEALTH_EVERY_S = 1.0


@dataclass
class StreamView:
    name: str
    status: str = "live"
    last_scores: float = 0.0  # monotonic seconds
    level_db: float | None = None
    labels: list[str] = field(default_factory=list)
    last_column: int = -1
    scores: deque = field(default_factory=deque)  # scores payloads, oldest first
    events: deque = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))

    def health(self, now: float) -> str:
        if self.status == "stale" or now - self.last_scores > STALE_AFTER_S:
            return "stale"
        return "live"

    def summary(self, now: float) -> dict:
        return {"stream": self.name, "status": self.health(now), "level_db": self.level_db, "labels": self.labels,
                "last_column": self.last_column, "age_s": round(now - self.last_scores, 1) if self.last_scores else None}


class LiveHub:
    def __init__(self, endpoint: str, context: zmq.asyncio.Context | None = None):
        self.endpoint = endpoint
        self.ctx = context or zmq.asyncio.Context.instance()
        self.streams: dict[str, StreamView] = {}
        self._queues: set[asyncio.Queue] = set()
        self.messages = 0
        self.bad_messages = 0

    def _view(self, name: str) -> StreamView:
        view = self.streams.get(name)
        if view is None:
            view = self.streams[name] = StreamView(name)
        return view

    def handle(self, payload: dict) -> None:
        """One engine message: update the stream's view and pass it to every page."""
        kind = payload.get("type")
        name = payload.get("stream")
        if not isinstance(name, str):
            return
        view = self._view(name)
        now = time.monotonic()
        if kind == "scores":
            first = int(payload.get("first_column", 0))
            if first < view.last_column - 1:  # the clock went back: a restarted engine, a new history
                view.scores.clear()
                view.events.clear()
            view.last_column = first + len(payload.get("columns") or []) - 1
            view.last_scores, view.status = now, "live"
            view.level_db, view.labels = payload.get("level_db"), list(payload.get("labels") or [])
            view.scores.append(payload)
            column_s = float(payload.get("column_s") or 0.16)
            while view.scores and (view.last_column - view.scores[0]["first_column"]) * column_s > HISTORY_S:
                view.scores.popleft()
        elif kind == "event":
            view.events.append(payload)
        elif kind == "stream":
            view.status = payload.get("status", view.status)
        else:
            return
        self._broadcast(kind, payload)

    def _broadcast(self, kind: str, payload: dict) -> None:
        for q in self._queues:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()  # the page is behind: its oldest message goes
            q.put_nowait((kind, payload))

    def listen(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self._queues.add(q)
        return q

    def forget(self, q: asyncio.Queue) -> None:
        self._queues.discard(q)

    def snapshot(self) -> dict:
        now = time.monotonic()
        return {"streams": [dict(v.summary(now), scores=list(v.scores), events=list(v.events))
                            for v in sorted(self.streams.values(), key=lambda v: v.name)]}

    def health(self) -> list[dict]:
        now = time.monotonic()
        return [v.summary(now) for v in sorted(self.streams.values(), key=lambda v: v.name)]

    async def run(self) -> None:
        """Receive until cancelled; every HEALTH_EVERY_S the pages get each stream's health."""
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 10_000)
        sub.connect(self.endpoint)
        for topic in (b"scores.", b"events.", b"stream."):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        next_health = time.monotonic()
        try:
            while True:
                timeout = max(0.0, next_health - time.monotonic())
                if await sub.poll(int(timeout * 1000) + 1):
                    _, body = await sub.recv_multipart()
                    try:
                        payload = json.loads(body)
                    except ValueError:
                        continue
                    if isinstance(payload, dict):
                        self.messages += 1
                        try:
                            self.handle(payload)
                        except (TypeError, ValueError, KeyError) as e:  # a payload of another version: skip it
                            self.bad_messages += 1
                            log.warning("skipped a message the web view cannot read (%s) [%d so far]",
                                        e, self.bad_messages)
                if time.monotonic() >= next_health:
                    next_health = time.monotonic() + HEALTH_EVERY_S
                    self._broadcast("health", {"streams": self.health()})
        finally:
            sub.close(0)
