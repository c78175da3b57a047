"""Publishing on real loopback sockets and real files: topics and payloads, the event log written
before each publish, restart closing open events, storage failures, drops, clips and retention."""

import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zmq

from streamer.publish import (
    ClipWriter,
    Event,
    EventLog,
    Publisher,
    event_topic,
    new_event_id,
    query_events,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "events.md"
T0 = 1_760_000_000.0  # a Unix time


def _event(kind="start", label="dog_bark", stream="cam1", event_id=None, **kw) -> Event:
    fields = dict(
        stream=stream, label=label, prompt="a dog barking", kind=kind, event_id=event_id or new_event_id(),
        onset=T0, offset=None, score=0.8, model="slap-tiny@abc123",
    )  # fmt: skip
    fields.update(kw)
    return Event(**fields)


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)  # closes the sockets a failed test left open


def _subscribe(ctx, pub: Publisher, prefix: str) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(pub.endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    deadline = time.monotonic() + 5
    while prefix not in pub.poll_subscriptions():  # the XPUB sees the subscription arrive
        assert time.monotonic() < deadline, "subscription never arrived"
        time.sleep(0.005)
    return sub


def _recv(sub: zmq.Socket) -> tuple[str, dict]:
    assert sub.poll(5000), "no message within 5 s"
    topic, body = sub.recv_multipart()
    return topic.decode(), json.loads(body)


def test_a_subscriber_receives_edges_on_their_topics_with_the_documented_payload(zctx, tmp_path):
    log = EventLog(tmp_path / "events.db")
    pub = Publisher("tcp://127.0.0.1:0", event_log=log, context=zctx)
    assert re.fullmatch(r"tcp://127\.0\.0\.1:\d+", pub.endpoint)
    sub = _subscribe(zctx, pub, "events.cam1.")
    eid = new_event_id()
    pub.publish_events([_event("start", event_id=eid), _event("start", label="siren", stream="cam2")])
    pub.publish_events([_event("end", event_id=eid, offset=T0 + 1.5, score=0.9, reason="off", clip="c.flac")])
    topic, start = _recv(sub)  # cam2 is not subscribed: only cam1's two edges arrive
    assert topic == event_topic("cam1", "dog_bark") == "events.cam1.dog_bark"
    topic, end = _recv(sub)
    assert (start["kind"], end["kind"]) == ("start", "end") and start["event_id"] == end["event_id"] == eid
    assert (start["seq"], end["seq"]) == (0, 1)  # per topic: a gap means a dropped message
    assert (
        end["onset"] == T0
        and end["offset"] == T0 + 1.5
        and end["reason"] == "off"
        and end["clip"] == "c.flac"
    )
    assert start["offset"] is None and start["reason"] is None
    documented = set(re.findall(r"^\| `(\w+)` \|", DOCS.read_text().split("## Scores")[0], re.M))
    assert set(start) == documented, "docs/events.md lists exactly the payload's fields"
    assert pub.stats.events_sent == 3 and pub.stats.events_dropped == 0
    sub.close()
    pub.close()


def test_the_log_has_the_row_before_the_edge_is_published(zctx, tmp_path):
    path = tmp_path / "events.db"
    seen_at_send: list[list] = []

    class Spy(Publisher):
        def _send(self, topic, payload):
            if topic.startswith("events."):  # another connection, as `python main.py events` would be
                seen_at_send.append([(r.id, r.reason) for r in query_events(path)])
            return super()._send(topic, payload)

    pub = Spy("tcp://127.0.0.1:0", event_log=EventLog(path), context=zctx)
    eid = new_event_id()
    pub.publish_events([_event("start", event_id=eid)])
    pub.publish_events([_event("end", event_id=eid, offset=T0 + 2, reason="off")])
    assert seen_at_send == [[(eid, None)], [(eid, "off")]]
    row = query_events(path)[0]
    assert (row.onset, row.offset, row.score, row.label) == (T0, T0 + 2, 0.8, "dog_bark")
    pub.close()


def test_a_restart_closes_the_events_left_open(tmp_path):
    path = tmp_path / "events.db"
    log = EventLog(path)
    done, left_open = new_event_id(), new_event_id()
    log.write([_event("start", event_id=done), _event("start", event_id=left_open, label="siren")])
    log.write([_event("end", event_id=done, offset=T0 + 1, reason="off")])
    log.close()  # the engine dies here, with `siren` open

    log = EventLog(path)
    closed = log.close_open_events("engine_restart")
    assert [(e.event_id, e.kind, e.reason, e.label) for e in closed] == [
        (left_open, "end", "engine_restart", "siren")
    ]
    assert log.close_open_events() == []
    rows = {r.id: r for r in log.query(since=T0 - 1, label="siren")}
    assert set(rows) == {left_open} and rows[left_open].reason == "engine_restart"
    assert [r.id for r in log.query(stream="cam1", since=T0 - 1, until=T0 + 1)] == sorted([done, left_open])
    assert log.query(stream="nope") == []


def test_an_unwritable_log_is_counted_reported_once_and_publishing_goes_on(zctx, tmp_path, caplog):
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log directory should be")  # like a read-only mount: writes fail
    log = EventLog(blocker / "events.db", retry_s=0.0, backlog_max=3)
    pub = Publisher("tcp://127.0.0.1:0", event_log=log, context=zctx)
    sub = _subscribe(zctx, pub, "events.")
    ids = [new_event_id() for _ in range(4)]
    with caplog.at_level(logging.ERROR, logger="streamer.publish"):
        for i, eid in enumerate(ids):
            pub.publish_events([_event("start", event_id=eid, onset=T0 + i)])
    assert [_recv(sub)[1]["event_id"] for _ in ids] == ids  # every edge still went out
    assert log.stats.write_errors >= 4 and log.stats.backlog == 3 and log.stats.backlog_dropped == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot write" in errors[0].getMessage()
    # the storage comes back: the backlog is written, oldest first, with the next edge
    blocker.unlink()
    blocker.mkdir()
    assert log.write([_event("end", event_id=ids[3], onset=T0 + 3, offset=T0 + 4, reason="off")])
    assert log.stats.backlog == 0
    assert [(r.id, r.reason) for r in log.query()] == [(ids[1], None), (ids[2], None), (ids[3], "off")]
    assert log.stats.writes == 4 and log.stats.backlog_dropped == 1
    sub.close()
    pub.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_read_only_log_directory_is_a_counted_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        log = EventLog(ro / "events.db", retry_s=0.0)
        assert not log.write([_event()]) and log.stats.write_errors >= 1 and log.stats.backlog == 1
    finally:
        ro.chmod(0o755)


def test_a_full_disk_is_a_counted_error_and_the_edges_wait_for_the_retry(tmp_path):
    log = EventLog(tmp_path / "events.db", retry_s=60.0)
    conn = log._connect()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    assert not log.write([_event(prompt="x" * 100_000)])
    assert log.stats.write_errors == 1 and log.stats.backlog == 1
    assert not log.write([_event()])  # within retry_s: held without trying again
    assert log.stats.write_errors == 1 and log.stats.backlog == 2


def test_drops_over_the_high_water_mark_are_counted(zctx):
    pub = Publisher("inproc://hwm", sndhwm=1, context=zctx)
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.connect("inproc://hwm")
    sub.setsockopt(zmq.SUBSCRIBE, b"events.")
    deadline = time.monotonic() + 5
    while "events." not in pub.poll_subscriptions():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    pub.publish_events([_event() for _ in range(10)])  # nobody reads: the queue fills up
    assert pub.stats.events_dropped > 0 and pub.stats.events_sent + pub.stats.events_dropped == 10
    sub.close()
    pub.close()


def test_scores_are_built_only_for_subscribers(zctx):
    pub = Publisher("tcp://127.0.0.1:0", context=zctx)
    kw = dict(
        model="m", labels=["a", "b"], columns=np.array([[0.1, 0.9], [0.2, 0.8]]), first_column=42, start=T0
    )
    assert not pub.publish_scores("cam1", **kw) and pub.stats.scores_skipped == 1
    sub = _subscribe(zctx, pub, "scores.cam1")
    assert pub.publish_scores("cam1", **kw, global_scores=np.array([0.3, 0.7]))
    topic, msg = _recv(sub)
    assert (
        topic == "scores.cam1" and msg["columns"] == [[0.1, 0.9], [0.2, 0.8]] and msg["global"] == [0.3, 0.7]
    )
    assert (msg["first_column"], msg["start"], msg["column_s"], msg["seq"]) == (42, T0, 0.16, 0)
    sub.close()
    pub.close()


def _tone(n: int, start: int) -> np.ndarray:
    t = np.arange(start, start + n)
    return (0.5 * np.sin(2 * np.pi * 440 * t / 16000)).astype(np.float32)


def test_clips_hold_the_event_with_pre_and_post_roll(tmp_path):
    clips = ClipWriter(tmp_path / "clips", pre_roll_s=0.5, post_roll_s=0.25, fmt="flac")
    written = []
    for k in range(40):  # 4 s in 100 ms chunks; the event is [1.0 s, 2.0 s)
        start = k * 1600
        if start == 19200:  # the start is confirmed a little after the onset
            path = clips.begin("cam1", "dog_bark", "e1", onset_sample=16000)
        if start == 33600:
            assert clips.end("e1", offset_sample=32000) == path
        written += clips.push("cam1", _tone(1600, start), start)
    assert written == [path] and path == tmp_path / "clips" / "cam1" / "dog_bark-e1.flac"
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 16000 and len(audio) == 8000 + 16000 + 4000  # pre-roll + event + post-roll
    np.testing.assert_allclose(audio, _tone(len(audio), 8000), atol=1.0 / 32768)
    assert clips.stats.written == 1 and not list(path.parent.glob("*.part"))


def test_flush_writes_what_there_is_and_retention_removes_old_then_oldest(tmp_path):
    clips = ClipWriter(tmp_path, pre_roll_s=0.1, post_roll_s=1.0, fmt="wav", max_total_mb=0.1, max_age_days=1)
    clips.push("s", _tone(16000, 0), 0)
    clips.begin("s", "siren", "e2", onset_sample=8000)
    (path,) = clips.flush("s")  # the stream ended before the post-roll
    assert sf.info(path).frames == 16000 - 8000 + 1600
    now = time.time()
    old = tmp_path / "s" / "siren-old.wav"
    sf.write(old, np.zeros(1600, np.float32), 16000)
    os.utime(old, (now - 3 * 86400, now - 3 * 86400))
    assert clips.enforce_retention(now) == 1 and not old.exists() and path.exists()
    for i in range(4):  # 32 KB each: over 0.1 MB, the oldest go first
        f = tmp_path / "s" / f"siren-{i}.wav"
        sf.write(f, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
        os.utime(f, (now - 100 + i, now - 100 + i))
    clips.enforce_retention(now)
    left = sorted(p.name for p in (tmp_path / "s").iterdir())
    total = sum(p.stat().st_size for p in (tmp_path / "s").iterdir())
    assert total <= 0.1 * 1024 * 1024 and "siren-0.wav" not in left and "siren-3.wav" in left
