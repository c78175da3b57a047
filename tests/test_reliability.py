"""Reliability and security, each shown with real processes and real sockets on loopback (random
ports): wire fuzzing, a killed worker, network faults, a killed engine, back-pressure, storage
faults, bad configs, CURVE authentication and names that could inject into topics or paths.

Events from the random-weights model (slap-tiny) are driven by thresholds set around its scores:
"always" (on 0.001, off 0.0) starts at the first column and never ends by itself; "toggle"
(on 0.0055, off 0.005, no smoothing) starts and ends every few seconds on the synth source's pink
noise. The slowest tests are marked slow (and still run by a plain `pytest`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
import zmq
import zmq.auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_bench import CI_MESSAGES, Generator, make_engine, report, run_fuzz
from encoder.runtime import open_backend
from streamer.config import ConfigError, EngineConfig, load_config
from streamer.engine import DROP_REASONS, REJECT_REASONS, Engine
from streamer.publish import ClipWriter
from streamer.wire import MAGIC, WIRE_VERSION, Frame, WireError
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "cache"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SR = 16000
ALWAYS = {"label": "always", "text": "a dog barking", "on_threshold": 0.001, "off_threshold": 0.0}
TOGGLE = {"label": "toggle", "text": "glass breaking", "on_threshold": 0.0055, "off_threshold": 0.005}
DETECTOR = {"min_duration_s": 0.16, "merge_gap_s": 0.16, "smoothing": {"kind": "none"}}
SYNTH = {"kind": "synth", "name": "synth", "signal": "pink", "level_db": -40,
         "events": ["2.0:beep:0.8", "5.0:burst:0.5", "8.0:chirp:0.6"]}


def config(tmp: Path, prompts=(ALWAYS,), sources=(), **outputs) -> dict:
    return {
        "sources": list(sources),
        "prompts": list(prompts),
        "detector": DETECTOR,
        "model": {"path": "slap-tiny", "backend": "onnx", "cache_dir": str(CACHE)},
        "outputs": {"pub_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "ingest_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "event_log": str(tmp / "events.db"), **outputs},
        "metrics": {"enabled": False},
    }


@pytest.fixture(scope="module")
def backend():
    return open_backend("onnx", "slap-tiny", CACHE, threads=1)


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def subscriber(ctx: zmq.Context, endpoint: str, *prefixes: str) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(endpoint)
    for prefix in prefixes:
        sub.setsockopt_string(zmq.SUBSCRIBE, prefix)
    return sub


def wait_subscribed(engine: Engine, *prefixes: str) -> None:
    deadline = time.monotonic() + 5
    while not set(prefixes) <= engine.publisher.poll_subscriptions():
        assert time.monotonic() < deadline, "subscription never arrived"
        time.sleep(0.005)


def drain(sub: zmq.Socket, into: list, timeout_ms: int = 0) -> list:
    """Append every waiting (topic, payload) to `into`; returns it."""
    while sub.poll(timeout_ms):
        topic, body = sub.recv_multipart()
        into.append((topic.decode(), json.loads(body)))
        timeout_ms = min(timeout_ms, 50)  # what follows is already on its way
    return into


def run_until(engine: Engine, cond, timeout: float, sub: zmq.Socket | None = None, got: list | None = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        engine.poll_once(20)
        if sub is not None:
            drain(sub, got)
        if cond():
            return True
    return False


def start_worker(*args: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamer.capture", *args], cwd=ROOT, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


# ------------------------------------------------------------------------------------ wire fuzzing


def _accounted(engine: Engine) -> int:
    c = engine.counters
    return sum(c.frames_rejected.values()) + sum(c.frames_dropped.values()) + sum(c.frames_received.values())


def _craft(stream_id: bytes, n: int = 160) -> bytes:
    """A frame whose stream id bytes are whatever we say (bypassing Frame's validation)."""
    head = struct.pack("<4sBBHIB", MAGIC, WIRE_VERSION, 1, 1, SR, len(stream_id))
    return head + stream_id + struct.pack("<IQQQI", 1, 0, 0, 0, n) + bytes(2 * n)


FUZZ_KINDS = ("random", "bitflip", "truncated", "oversize", "valid")
GEN = Generator(0)  # reseeded per message: hypothesis draws the kind and the seed


@pytest.fixture(scope="module")
def fuzz_engine():
    engine = make_engine(bind=False)
    yield engine
    engine.close()


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(FUZZ_KINDS), st.integers(0, 2**32 - 1)), min_size=1, max_size=20)
       | st.lists(st.binary(max_size=120).map(lambda b: ("raw", b)), min_size=1, max_size=20))
def test_fuzzed_messages_never_crash_the_receive_path_and_each_is_counted_once(fuzz_engine, messages):
    engine = fuzz_engine
    before = _accounted(engine)
    for kind, arg in messages:
        if kind == "raw":
            buf = arg
        else:
            GEN.rng.seed(arg)
            buf = GEN.message(kind)
        engine.handle_message(buf)  # never raises
        with pytest.raises(WireError) if kind in ("truncated", "oversize") else contextlib.suppress(WireError):
            Frame.decode(buf)  # decode raises WireError only, and always for these two kinds
    assert _accounted(engine) - before == len(messages)
    assert engine.counters.frames_rejected["internal_error"] == 0
    assert set(engine.counters.frames_rejected) <= set(REJECT_REASONS)
    assert set(engine.counters.frames_dropped) <= set(DROP_REASONS)


def test_a_slice_of_the_fuzz_benchmark_in_process():
    result = run_fuzz(CI_MESSAGES, seed=1)
    print(report(result))
    assert result.crashes == 0 and result.accounted == result.messages == CI_MESSAGES
    assert result.by_kind["valid"]["received"] == CI_MESSAGES // 5  # the control stream: every frame
    for kind in ("random", "truncated", "oversize"):
        assert result.by_kind[kind]["received"] == 0
    assert result.by_kind["oversize"]["rejected:too_large"] == CI_MESSAGES // 5


def test_a_slice_of_the_fuzz_benchmark_through_a_real_socket():
    result = run_fuzz(5_000, seed=2, socket=True)
    print(report(result))
    assert result.crashes == 0 and result.accounted == result.messages == 5_000
    assert result.by_kind["valid"]["received"] == 1_000


def test_float_frames_past_full_scale_are_clipped_not_poisoning_the_context(backend):
    cfg = EngineConfig.model_validate({"prompts": [ALWAYS], "outputs": {"event_log": None}})
    engine = Engine(cfg, backend, bind=False)
    for seq in range(2):  # 2 x 0.5 s of float32 at 3e38: finite, so the wire takes it; mel of it is inf
        frame = Frame.from_samples(np.zeros((8000, 1), np.float32), stream_id="loud", epoch=1, seq=seq,
                                   capture_mono_ns=seq * 500_000_000, capture_wall_ns=0, sample_rate=SR,
                                   sample_format=2)
        engine.handle_message(frame.encode()[: -8000 * 4] + np.full(8000, 3e38, "<f4").tobytes())
    assert engine.counters.frames_received["loud"] == 2
    assert np.isfinite(engine.streams["loud"].context.window().mel).all()
    stats = engine.step()
    assert stats is not None and engine.counters.frames_rejected["internal_error"] == 0


# ------------------------------------------------------------------------------------ names


BAD_NAMES = ["../x", "a.b\n", "events.*", "a/b", "", "x" * 65, "caf\u00e9", "a b", "..", "."]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_a_name_that_could_reach_a_topic_or_a_path_is_refused_everywhere(tmp_path, fuzz_engine, name):
    # config: a source name and a prompt label are one line each, naming the file and the field
    for text, field in (
        (f"sources:\n  - {{kind: synth, name: {json.dumps(name)}}}\nprompts:\n  - {{label: a, text: x}}\n",
         "sources[0].name"),
        (f"prompts:\n  - {{label: {json.dumps(name)}, text: x}}\n", "prompts[0].label"),
    ):
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "\n" not in str(info.value) and str(info.value).startswith(f"{path}:")
        assert f": {field}: expected" in str(info.value)
    # the engine's receive path: the frame is refused and counted, no stream and no file is made
    before = dict(fuzz_engine.counters.frames_rejected)
    fuzz_engine.handle_message(_craft(name.encode("utf-8")))
    after = fuzz_engine.counters.frames_rejected
    reason = "unknown_stream" if name in (".", "..") else "bad_stream_id"  # a list of sources: only those
    assert after[reason] == before.get(reason, 0) + 1
    assert name not in fuzz_engine.streams
    engine = make_engine(bind=False)  # and without a list of sources (tag, tests)
    engine.allowed = None
    engine.handle_message(_craft(name.encode("utf-8")))
    assert sum(engine.counters.frames_rejected.values()) == 1 and not engine.streams
    engine.close()
    # clips: never outside their folder
    if name in (".", ".."):
        with pytest.raises(ValueError):
            ClipWriter(tmp_path / "clips").path_for(name, "a", "0" * 24)
    else:  # the wire refuses to build the frame at all
        with pytest.raises(WireError, match="bad_stream_id"):
            Frame.from_samples(np.zeros(16, np.int16), stream_id=name, epoch=0, seq=0, capture_mono_ns=0,
                               capture_wall_ns=0, sample_rate=SR)


@pytest.mark.parametrize("name", ["../x", "events.*", "a.b\n"], ids=repr)
def test_a_worker_refuses_a_bad_stream_name_before_connecting(name):
    proc = subprocess.run([sys.executable, "-m", "streamer.capture", "synth", "--stream", name, "--duration", "1"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "1-64 characters of [A-Za-z0-9_.-]" in proc.stderr


# ------------------------------------------------------------------------------------ security


def _listening_hosts(ports: set[int]) -> set[str]:
    """Local addresses of the TCP sockets listening on these ports (from /proc/net/tcp{,6})."""
    hosts = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            host, port = local.split(":")
            if state == "0A" and int(port, 16) in ports:  # 0A: LISTEN
                raw = bytes.fromhex(host)
                if width == 8:
                    hosts.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    hosts.add(socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
    return hosts


def test_every_socket_binds_loopback_unless_configured_otherwise(backend, tmp_path, zctx, caplog):
    for path in (ROOT / "configs" / "default.yaml", ROOT / "configs" / "example.yaml"):
        data = yaml.safe_load(path.read_text())
        outputs, metrics = data.get("outputs", {}), data.get("metrics", {})
        for key in ("pub_endpoint", "ingest_endpoint"):
            assert outputs.get(key, "tcp://127.0.0.1:x").startswith("tcp://127.0.0.1:"), (path, key)
        assert metrics.get("host", "127.0.0.1") == "127.0.0.1", path
    defaults = EngineConfig.model_validate({"prompts": [ALWAYS]})
    assert defaults.outputs.pub_endpoint.startswith("tcp://127.0.0.1:")
    assert defaults.outputs.ingest_endpoint.startswith("tcp://127.0.0.1:")
    assert defaults.metrics.host == "127.0.0.1"
    from streamer.capture.cli import build_parser

    assert build_parser().parse_args(["synth", "--stream", "x"]).endpoint.startswith("tcp://127.0.0.1:")
    # the defaults, on any free ports: what the kernel shows listening
    outputs = defaults.outputs.model_dump() | {"event_log": None,
                                               "pub_endpoint": defaults.outputs.pub_endpoint.rsplit(":", 1)[0] + ":0",
                                               "ingest_endpoint": defaults.outputs.ingest_endpoint.rsplit(":", 1)[0] + ":0"}
    cfg = EngineConfig.model_validate(defaults.model_dump() | {"outputs": outputs})
    engine = Engine(cfg, backend, context=zctx)
    ports = {int(engine.ingest_endpoint.rsplit(":", 1)[1]), int(engine.publisher.endpoint.rsplit(":", 1)[1])}
    servers = []
    try:
        from streamer.metrics import serve_metrics  # another part's module: checked where it exists

        servers.append(serve_metrics(engine, cfg.metrics.host, 0))
        ports.add(servers[0].port)
    except ImportError:
        pass
    try:
        assert _listening_hosts(ports) == {"127.0.0.1"}
    finally:
        for server in servers:
            server.close()
        engine.close()
    # configured otherwise: it binds there, and says that anyone who reaches it can send audio
    outputs |= {"ingest_endpoint": "tcp://0.0.0.0:0", "pub_endpoint": "tcp://127.0.0.1:0"}
    cfg = EngineConfig.model_validate(defaults.model_dump() | {"outputs": outputs})
    with caplog.at_level(logging.WARNING, logger="streamer.engine"):
        engine = Engine(cfg, backend, context=zctx)
        engine.close()
    assert any("without authentication" in r.getMessage() for r in caplog.records)


def _keys(tmp: Path) -> dict[str, tuple[str, str]]:
    """CURVE key pairs (public file, secret file): the engine's, an admitted worker's, a stranger's."""
    (tmp / "authorized").mkdir()
    (tmp / "private").mkdir()
    server = zmq.auth.create_certificates(tmp / "private", "engine")
    admitted = zmq.auth.create_certificates(tmp / "private", "admitted")
    stranger = zmq.auth.create_certificates(tmp / "private", "stranger")
    (tmp / "authorized" / "admitted.key").write_bytes(Path(admitted[0]).read_bytes())  # its public half only
    return {"server": server, "admitted": admitted, "stranger": stranger}


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve_admits_only_the_workers_whose_keys_are_authorized(backend, tmp_path, zctx):
    keys = _keys(tmp_path)
    curve = {"server_secret_key_file": keys["server"][1], "authorized_keys_dir": str(tmp_path / "authorized")}
    sources = [{"kind": "synth", "name": n, "signal": "pink"} for n in ("local", "admitted", "stranger", "plain")]
    cfg = EngineConfig.model_validate(config(tmp_path, sources=sources, curve=curve, event_log=None))
    engine = Engine(cfg, backend, streams={s.name for s in cfg.sources}, context=zctx)
    server_public = zmq.auth.load_certificate(keys["server"][1])[0].decode()
    workers = {
        name: start_worker("synth", "--stream", name, "--endpoint", engine.ingest_endpoint, "--duration", "2",
                           *flags, stderr=subprocess.PIPE)
        for name, flags in (
            ("admitted", ["--curve-server-key", keys["server"][0], "--curve-secret-key-file", keys["admitted"][1]]),
            ("stranger", ["--curve-server-key", server_public, "--curve-secret-key-file", keys["stranger"][1]]),
            ("plain", []),
        )
    }
    from streamer.cli import WorkerSupervisor

    supervisor = WorkerSupervisor([cfg.sources[0]], engine.ingest_endpoint, engine.worker_args)  # the engine's own
    supervisor.start_all()
    try:
        assert run_until(engine, lambda: all(w.poll() is not None for w in workers.values()), 30)
        assert run_until(engine, lambda: engine.counters.frames_received["local"] >= 20, 10)
    finally:
        supervisor.stop()
        errs = {name: stop(w) for name, w in workers.items()}
        engine.close()
    received = engine.counters.frames_received
    assert received["admitted"] == 20  # 2 s in 100 ms frames, every one
    assert received["stranger"] == 0 and received["plain"] == 0
    assert engine.counters.auth_refused >= 1  # the stranger's key, refused by the ZAP handler
    assert "dropped 20 frame" in errs["stranger"] + errs["plain"] or "engine not taking frames" in errs["stranger"]
    assert not Path(engine.worker_args[1].split("=", 1)[1]).exists()  # the local workers' key pair goes with the engine


def test_a_curve_config_with_a_bad_key_file_is_one_line(tmp_path):
    keys = _keys(tmp_path)
    for curve, field in (
        ({"server_secret_key_file": keys["server"][0], "authorized_keys_dir": str(tmp_path / "authorized")},
         "outputs.curve.server_secret_key_file"),  # the public half: no secret key in it
        ({"server_secret_key_file": keys["server"][1], "authorized_keys_dir": str(tmp_path / "nowhere")},
         "outputs.curve.authorized_keys_dir"),
    ):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"prompts": [ALWAYS], "outputs": {"curve": curve}}))
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert "\n" not in str(info.value) and f"{path}:" in str(info.value) and field in str(info.value)
        assert "expected" in str(info.value)


# ------------------------------------------------------------------------------------ config


def _leaves(model, prefix: tuple = ()) -> typing.Iterator[tuple[tuple, object]]:
    """(path, annotation) of every field of a config model, nested models included."""
    from pydantic import BaseModel

    for name, info in model.model_fields.items():
        ann = info.annotation
        inner = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            inner = [ann]
        yield prefix + (name,), ann
        for sub in inner:
            yield from _leaves(sub, prefix + (name,))


def _every_field_case() -> list[tuple[str, dict]]:
    from streamer.config import (
        SOURCE_KINDS,
        ContextConfig,
        DetectorConfig,
        FileSource,
        MetricsConfig,
        MicSource,
        ModelConfig,
        NetSource,
        OutputsConfig,
        PromptConfig,
        SynthSource,
    )

    minimal = {"file": {"path": "x.wav"}, "mic": {}, "net": {"url": "rtsp://h/x"}, "synth": {}}
    cases = []
    sections = {"context": ContextConfig, "detector": DetectorConfig, "model": ModelConfig,
                "outputs": OutputsConfig, "metrics": MetricsConfig}
    for section, model in sections.items():
        for path, _ in _leaves(model):
            cases.append((".".join((section, *path)), {section: _nest(path, {"bad": [1]})}))
    for model in (PromptConfig,):
        for path, _ in _leaves(model):
            prompt = {"label": "a", "text": "x"} | _nest(path, {"bad": [1]})
            cases.append(("prompts[0]." + ".".join(path), {"prompts": [prompt]}))
    for kind, model in zip(SOURCE_KINDS, (FileSource, MicSource, NetSource, SynthSource)):
        for path, _ in _leaves(model):
            if path == ("kind",):
                continue
            source = {"kind": kind, "name": "s"} | minimal[kind] | _nest(path, {"bad": [1]})
            cases.append(("sources[0]." + ".".join(path), {"sources": [source]}))
    return cases


def _nest(path: tuple, value) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


@pytest.mark.parametrize("field,data", _every_field_case(), ids=[c[0] for c in _every_field_case()])
def test_every_invalid_field_is_one_line_naming_file_field_and_expectation(tmp_path, field, data):
    data = {"prompts": [{"label": "a", "text": "x"}]} | data
    if field.startswith("outputs.curve."):  # the other (required) curve field: valid
        keys = _keys(tmp_path)
        valid = {"server_secret_key_file": keys["server"][1], "authorized_keys_dir": str(tmp_path / "authorized")}
        data["outputs"]["curve"] = valid | data["outputs"]["curve"]
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert re.match(rf"{re.escape(str(path))}:\d+: {re.escape(field)}(\.\w+)?: ", message), message
    assert any(w in message for w in ("expected", "unknown field", "required field is missing")), message


# ------------------------------------------------------------------------------------ worker faults


def test_a_killed_worker_goes_stale_and_its_events_close_then_a_new_worker_resumes(backend, tmp_path, zctx, caplog):
    cfg = EngineConfig.model_validate(config(tmp_path))
    engine = Engine(cfg, backend, streams={"cam"}, context=zctx)
    sub = subscriber(zctx, engine.publisher.endpoint, "events.", "stream.")
    wait_subscribed(engine, "events.", "stream.")
    got: list = []
    worker = start_worker("synth", "--stream", "cam", "--signal", "pink", "--endpoint", engine.ingest_endpoint)
    try:
        assert run_until(engine, lambda: any(p["kind"] == "start" for _, p in got), 20, sub, got)
        started = next(p for _, p in got if p["kind"] == "start")
        with caplog.at_level(logging.WARNING, logger="streamer.engine"):
            worker.send_signal(signal.SIGKILL)  # mid-stream, no goodbye
            t_kill = time.monotonic()
            assert run_until(engine, lambda: engine.counters.stale_transitions == 1, 5, sub, got)
            stale_after = time.monotonic() - t_kill
        drain(sub, got, 200)
        assert stale_after <= 2.0 + 0.5, stale_after  # STALE_AFTER_S of silence, counted from the last frame
        assert any("stream cam: stale" in r.getMessage() for r in caplog.records)
        topics = [t for t, _ in got]
        assert "stream.stale.cam" in topics
        end = next(p for t, p in got if p.get("kind") == "end")
        assert end["event_id"] == started["event_id"] and end["reason"] == "stale"
        assert topics.index("events.cam.always") < topics.index("stream.stale.cam")
        # a new worker run (a new epoch) brings the stream back
        received = engine.counters.frames_received["cam"]
        hops = engine.counters.hops
        worker = start_worker("synth", "--stream", "cam", "--signal", "pink", "--endpoint", engine.ingest_endpoint)
        assert run_until(engine, lambda: "stream.live.cam" in [t for t, _ in got], 10, sub, got)
        assert run_until(engine, lambda: engine.counters.frames_received["cam"] >= received + 10
                         and engine.counters.hops > hops, 10, sub, got)
        assert run_until(engine, lambda: sum(p.get("kind") == "start" for _, p in got) == 2, 10, sub, got)
        restarted = [p for _, p in got if p.get("kind") == "start"][1]
        assert restarted["event_id"] != started["event_id"] and not engine.streams["cam"].stale
        print(f"stale {stale_after:.2f} s after kill -9")
    finally:
        stop(worker)
        engine.close()


# ------------------------------------------------------------------------------------ network sources
# tests/test_capture.py covers: a server restart (one reconnect, same epoch), a listener that never
# answers (stall before any audio), redaction. Here: repeated failures (the backoff grows and is
# capped), a feed that stalls after delivering audio, and a feed with a video track.

needs_ffmpeg = pytest.mark.skipif(subprocess.run(["which", "ffmpeg"], capture_output=True).returncode != 0,
                                  reason="needs ffmpeg")


@pytest.fixture
def pull(zctx):
    sock = zctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


def receive(sock: zmq.Socket, seconds: float, timeout: float = 15.0) -> list[Frame]:
    """Frames until they hold `seconds` of 16 kHz audio."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while sum(f.sample_count for f in frames) < seconds * SR:
        assert time.monotonic() < deadline, f"only {len(frames)} frames after {timeout} s"
        if sock.poll(100):
            frames.append(Frame.decode(sock.recv()))
    return frames


def ffmpeg_server(port: int, *inputs: str, fmt: str = "nut") -> subprocess.Popen:
    """ffmpeg serving lavfi inputs over HTTP (-listen 1: one client), at real-time rate."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re"]
    for spec in inputs:
        cmd += ["-f", "lavfi", "-i", spec]
    cmd += ["-c:a", "pcm_s16le"] + (["-c:v", "mpeg4"] if len(inputs) > 1 else []) + ["-f", fmt, "-listen", "1",
                                                                                      f"http://127.0.0.1:{port}/live"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def peak_hz(frames: list[Frame]) -> float:
    x = np.concatenate([f.samples()[:, 0] for f in frames])
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SR / len(x))


@needs_ffmpeg
def test_net_backoff_grows_to_its_cap_while_the_server_is_down_then_audio_resumes(pull):
    sock, endpoint = pull
    port = free_port()
    server = ffmpeg_server(port, "sine=frequency=440:sample_rate=16000")
    time.sleep(0.3)
    worker = start_worker("net", "--url", f"http://127.0.0.1:{port}/live", "--stream", "cam", "--endpoint", endpoint,
                          "--backoff-base", "0.1", "--backoff-cap", "0.4", stderr=subprocess.PIPE)
    try:
        before = receive(sock, 0.5)
        server.kill()
        server.wait()
        time.sleep(3.0)  # connection refused, again and again
        server = ffmpeg_server(port, "sine=frequency=440:sample_rate=16000")
        after = receive(sock, 0.5, timeout=20)
    finally:
        server.kill()
        server.wait()
        err = stop(worker)
    delays = [(int(n), float(d)) for n, d in re.findall(r"reconnect attempt (\d+) in ([\d.]+) s", err)]
    assert len(delays) >= 5, err
    assert [n for n, _ in delays] == list(range(1, len(delays) + 1))
    for n, d in delays:  # base * 2^(n-1), capped, times a jitter in [0.5, 1]
        nominal = min(0.4, 0.1 * 2 ** (n - 1))
        assert 0.5 * nominal - 0.01 <= d <= nominal + 0.01, (n, d)
    assert max(d for _, d in delays) <= 0.4 + 0.01 and any(d > 0.2 for _, d in delays[3:])
    frames = before + after
    assert len({f.epoch for f in frames}) == 1  # one worker run: the outage is a time gap, not a restart
    assert [f.seq for f in frames] == sorted(f.seq for f in frames)
    assert abs(peak_hz(after) - 440) < 5


class StallingFeed:
    """An HTTP server of a NUT stream (a 600 Hz tone, 16 kHz mono, made by ffmpeg), paced in real
    time: the first connection gets `first_s` of it and then silence on an open socket; later
    connections get all of it."""

    SECONDS = 10

    def __init__(self, tmp: Path, first_s: float = 1.5):
        path = tmp / "tone.nut"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"sine=frequency=600:sample_rate={SR}:duration={self.SECONDS}", "-c:a", "pcm_s16le",
                        "-f", "nut", str(path)], check=True)
        self.data = path.read_bytes()
        self.rate = len(self.data) / self.SECONDS  # bytes per second of audio
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.first_s = first_s
        self.connections = 0
        self.closed = threading.Event()
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.clients.append(conn)
            threading.Thread(target=self._stream, args=(conn, self.connections == 1), daemon=True).start()

    def _stream(self, conn: socket.socket, stall: bool) -> None:
        try:
            conn.recv(65536)  # the request
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
            end = int(self.first_s * self.rate) if stall else len(self.data)
            t0, sent, step = time.monotonic(), 0, int(self.rate / 10)
            while sent < end and not self.closed.is_set():
                chunk = self.data[sent:min(sent + step, end)]
                conn.sendall(chunk)
                sent += len(chunk)
                time.sleep(max(0.0, t0 + sent / self.rate - 0.2 - time.monotonic()))  # 0.2 s ahead
            self.closed.wait()  # stalled (or done): connected, silent
        except OSError:
            pass

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for c in self.clients:
            c.close()


@needs_ffmpeg
def test_net_feed_that_stalls_mid_stream_is_detected_and_reconnected(pull, tmp_path):
    sock, endpoint = pull
    feed = StallingFeed(tmp_path, first_s=1.5)
    worker = start_worker("net", "--url", f"http://127.0.0.1:{feed.port}/live", "--stream", "cam", "--endpoint",
                          endpoint, "--stall-timeout", "0.8", "--backoff-base", "0.1", stderr=subprocess.PIPE)
    try:
        before = receive(sock, 1.0)
        after = receive(sock, 1.5, timeout=20)  # the rest of the first 1.5 s, then audio of the 2nd connection
    finally:
        err = stop(worker)
        feed.close()
    assert "stalled: no audio for 0.8 s" in err and "reconnect attempt 1" in err, err
    assert feed.connections >= 2
    frames = before + after
    assert len({f.epoch for f in frames}) == 1
    mono = np.array([f.capture_mono_ns for f in frames])
    assert np.diff(mono).max() > 0.8e9  # the stall is a gap in capture time, not a new stream
    assert abs(peak_hz(after[-5:]) - 600) < 20


@needs_ffmpeg
@pytest.mark.parametrize("fmt", ["nut", "matroska"])
def test_net_feed_with_a_video_track_decodes_its_audio_only(pull, fmt):
    sock, endpoint = pull
    port = free_port()
    server = ffmpeg_server(port, "testsrc=size=320x240:rate=25", "sine=frequency=1000:sample_rate=44100", fmt=fmt)
    time.sleep(0.3)
    worker = start_worker("net", "--url", f"http://127.0.0.1:{port}/live", "--stream", "cam", "--endpoint", endpoint,
                          stderr=subprocess.PIPE)
    try:
        frames = receive(sock, 1.0)
    finally:
        err = stop(worker)
        server.kill()
        server.wait()
    assert {(f.sample_rate, f.channels) for f in frames} == {(SR, 1)}  # 44.1 kHz audio -> 16 kHz mono
    assert abs(peak_hz(frames) - 1000) < 10
    assert "ffmpeg:" not in err, err  # no decoder complaints about the video


# ------------------------------------------------------------------------------------ engine faults


def start_engine(path: Path, log: Path, *args: str) -> subprocess.Popen:
    """`python main.py --config path` with its log (stderr) in a file."""
    return subprocess.Popen([sys.executable, "main.py", "--config", str(path), *args], cwd=ROOT, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def collect_until(sub: zmq.Socket, got: list, cond, timeout: float, proc: subprocess.Popen) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        drain(sub, got, 100)
        if cond():
            return True
        assert proc.poll() is None, "the engine exited"
    return False


def rows(db: Path) -> dict[str, tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {r[0]: r[1:] for r in conn.execute("SELECT id, stream, label, onset, offset, score, reason FROM events")}
    finally:
        conn.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (child of a dead parent, not yet reaped) is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_killed_engine_loses_no_published_event_and_closes_the_open_ones_on_restart(tmp_path, zctx):
    cfg = config(tmp_path, prompts=(ALWAYS, TOGGLE), sources=[SYNTH])
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    db = tmp_path / "events.db"
    sub = subscriber(zctx, cfg["outputs"]["pub_endpoint"], "events.")
    got: list = []
    engine = start_engine(path, tmp_path / "run1.log")
    try:
        def enough() -> bool:  # an event left open (always) and toggles that started and ended
            kinds = [(p["label"], p["kind"]) for _, p in got]
            return ("always", "start") in kinds and kinds.count(("toggle", "end")) >= 2
        assert collect_until(sub, got, enough, 40, engine), got
        engine.send_signal(signal.SIGKILL)  # mid-stream: hops, log writes and sends in flight
        engine.wait()
    finally:
        if engine.poll() is None:
            engine.kill()
    drain(sub, got, 300)  # whatever was sent before the kill
    log1 = (tmp_path / "run1.log").read_text()
    worker_pid = int(re.search(r"worker synth \(synth\) started, pid (\d+)", log1).group(1))
    deadline = time.monotonic() + 5
    while alive(worker_pid):  # its engine is gone: the worker stops by itself
        assert time.monotonic() < deadline, "the capture worker outlived its engine"
        time.sleep(0.1)

    logged = rows(db)  # integrity_check: ok
    received = [p for _, p in got]
    assert received and all(p["event_id"] in logged for p in received)  # every event seen is in the log
    for p in received:
        if p["kind"] == "end":
            assert logged[p["event_id"]][5] == p["reason"]  # and its end too
    open_at_kill = {eid for eid, r in logged.items() if r[5] is None}
    assert any(logged[eid][1] == "always" for eid in open_at_kill)
    assert all(r[2] is not None and r[4] is not None for r in logged.values())  # no half-written row

    restart = start_engine(path, tmp_path / "run2.log", "--duration", "3")
    restart.wait(timeout=60)
    log2 = (tmp_path / "run2.log").read_text()
    assert restart.returncode == 0, log2[-2000:]
    assert f"closed {len(open_at_kill)} events left open by the previous run (reason engine_restart)" in log2
    after = rows(db)
    assert all(after[eid][5] == "engine_restart" and after[eid][3] is None for eid in open_at_kill)
    assert set(logged) <= set(after) and not [eid for eid, r in after.items() if r[5] is None]
    print(f"{len(received)} edges received before kill -9, {len(logged)} events in the log, "
          f"{len(open_at_kill)} open at the kill, closed engine_restart on restart; 0 lost")


@pytest.mark.slow
def test_a_bad_hot_reload_keeps_the_running_config_and_events_keep_flowing(tmp_path, zctx):
    cfg = config(tmp_path, prompts=(TOGGLE,), sources=[SYNTH])
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    sub = subscriber(zctx, cfg["outputs"]["pub_endpoint"], "events.")
    got: list = []
    log = tmp_path / "engine.log"
    engine = start_engine(path, log)
    try:
        assert collect_until(sub, got, lambda: len(got) >= 1, 40, engine)
        bad = dict(cfg, prompts=[dict(TOGGLE, on_threshold=1.5)])
        path.write_text(yaml.safe_dump(bad, sort_keys=False))
        assert collect_until(sub, got, lambda: "config reload refused" in log.read_text(), 10, engine)
        seen = len(got)
        assert collect_until(sub, got, lambda: len(got) >= seen + 2, 30, engine)  # still the old thresholds
    finally:
        stop(engine)
    line = next(x for x in log.read_text().splitlines() if "config reload refused" in x)
    assert re.search(rf"{re.escape(str(path))}:\d+: prompts\[0\]\.on_threshold: expected <= 1 \(got 1\.5\)", line)
    assert {p["label"] for _, p in got} == {"toggle"}


# ------------------------------------------------------------------------------------ back-pressure


@pytest.mark.slow
def test_a_subscriber_that_stops_reading_never_stalls_the_engine(backend, tmp_path, zctx):
    # many scores messages: 64 prompts, 32 streams, one-column windows (cheap hops)
    prompts = [{"label": f"p{i}", "text": f"sound number {i}"} for i in range(64)]
    cfg = EngineConfig.model_validate(config(tmp_path, prompts=prompts, scores_topic=True, event_log=None)
                                      | {"context": {"max_context_s": 0.32, "hop_s": 0.16}})
    engine = Engine(cfg, backend, context=zctx)
    stuck = zctx.socket(zmq.SUB)  # subscribes, then never reads
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.connect(engine.publisher.endpoint)
    stuck.setsockopt(zmq.SUBSCRIBE, b"scores.")
    wait_subscribed(engine, "scores.")
    chunk = (0.05 * np.random.default_rng(0).standard_normal((2560, 1))).astype(np.float32)  # one column
    step_s: list[float] = []
    stats = engine.publisher.stats

    def hop_round() -> None:  # a new column for each of the 32 streams, and the hops it makes due
        for s in range(32):
            engine.feed(f"s{s}", chunk, SR, seq=len(step_s), epoch=1)
        t = time.monotonic()
        while engine.step() is not None:
            pass
        step_s.append(time.monotonic() - t)

    try:
        deadline = time.monotonic() + 60
        while stats.scores_dropped == 0:  # SNDHWM (1000) and the kernel's buffers fill up first
            assert time.monotonic() < deadline, f"no drop after {stats.scores_sent} messages"
            hop_round()
        hops_at_first_drop, n_before = engine.counters.hops, len(step_s)
        for _ in range(50):  # and on: every hop still served while the subscriber sits there
            hop_round()
    finally:
        stuck.close()
        engine.close()
    assert engine.counters.hops == hops_at_first_drop + 50 * 32 and engine.counters.hops_skipped == 0
    assert stats.scores_dropped > 0 and stats.scores_sent + stats.scores_dropped == engine.counters.hops
    early, late = np.median(step_s[n_before - 30:n_before]), np.median(step_s[n_before:])
    assert late < 3 * early + 0.005, (early, late)  # sending never waits for the subscriber
    print(f"{stats.scores_sent} scores sent, {stats.scores_dropped} dropped for the stuck subscriber; "
          f"step {early * 1e3:.1f} ms before, {late * 1e3:.1f} ms after")


FLOOD = """
import sys, time, zmq, numpy as np
from streamer.wire import Frame
sock = zmq.Context().socket(zmq.PUSH)
sock.setsockopt(zmq.SNDHWM, 200)
sock.connect(sys.argv[1])
payload = (0.1 * np.random.default_rng(0).standard_normal((16000, 1))).astype(np.float32)
seq, t0 = 0, time.monotonic_ns()
while True:  # 1 s frames, as fast as the socket takes them, never waiting
    frame = Frame.from_samples(payload, stream_id="flood", epoch=9, seq=seq, capture_mono_ns=t0 + seq * 10**9,
                               capture_wall_ns=time.time_ns(), sample_rate=16000)
    try:
        sock.send(frame.encode(), zmq.NOBLOCK)
    except zmq.Again:
        time.sleep(0.001)
    seq += 1
"""


@pytest.mark.slow
def test_a_flooding_stream_loses_its_own_frames_and_cannot_starve_the_others(backend, tmp_path, zctx):
    cfg = EngineConfig.model_validate(config(tmp_path, event_log=None))
    engine = Engine(cfg, backend, streams={"live", "flood"}, context=zctx, queue_frames=64)
    flood = subprocess.Popen([sys.executable, "-c", FLOOD, engine.ingest_endpoint], cwd=ROOT, env=ENV)
    lag: list[float] = []
    try:
        assert run_until(engine, lambda: engine.counters.frames_received["flood"] > 0, 10)
        live = start_worker("synth", "--stream", "live", "--signal", "pink", "--duration", "4", "--endpoint",
                            engine.ingest_endpoint)

        def sample() -> bool:  # how old the live stream's newest audio in its context is
            state = engine.streams.get("live")
            if state is not None and state.newest_wall is not None and live.poll() is None:
                lag.append(time.time() - state.newest_wall)
            return live.poll() is not None
        assert run_until(engine, sample, 30)
        run_until(engine, lambda: False, 0.5)
    finally:
        flood.kill()
        flood.wait()
        stop(live)
        engine.close()
    c = engine.counters
    assert c.frames_received["live"] == 40  # 4 s in 100 ms frames: every one, none dropped
    assert engine.queues["live"].dropped == 0
    assert engine.queues["flood"].dropped > 0 and c.frames_dropped["queue_full"] == engine.queues["flood"].dropped
    assert engine.streams["live"].context.stats.hops >= 7  # a hop every 0.5 s
    steady = lag[len(lag) // 4:]
    assert max(steady) < 1.0, max(steady)  # the live stream's audio reaches its context as it arrives
    print(f"flood: {c.frames_received['flood']} frames taken, {engine.queues['flood'].dropped} dropped (queue_full); "
          f"live: 40/40 frames, lag max {max(steady):.2f} s")


# ------------------------------------------------------------------------------------ storage faults


def _engine_with_log(backend, tmp: Path, db: Path, zctx) -> Engine:
    # the embedding store would sit beside the log on the same failing storage, with its own error line
    cfg = EngineConfig.model_validate(config(tmp, prompts=(TOGGLE,), event_log=str(db), embeddings={"enabled": False}))
    engine = Engine(cfg, backend, streams={"s"}, context=zctx)
    engine.publisher.event_log.retry_s = 0.3  # EventLog's pace between tries (RETRY_S = 5 s in service)
    return engine


def _play(engine: Engine, sub: zmq.Socket, got: list, seconds: float, on_frame=None) -> None:
    """A synth worker sends `seconds` of audio as fast as the engine reads; then the stream goes stale."""
    worker = start_worker("synth", "--stream", "s", "--signal", "pink", "--level-db", "-40", "--fast",
                          "--duration", str(seconds), "--endpoint", engine.ingest_endpoint,
                          *[a for e in SYNTH["events"] for a in ("--event", e)])
    try:
        assert run_until(engine, lambda: (on_frame is None or on_frame()) and worker.poll() is not None, 60, sub, got)
        assert run_until(engine, lambda: engine.streams["s"].stale, 5, sub, got)
        deadline = time.monotonic() + 5  # the last edges are on their way to the subscriber
        while len(got) < engine.publisher.stats.events_sent and time.monotonic() < deadline:
            drain(sub, got, 100)
    finally:
        stop(worker)


def _check_log_has(db: Path, got: list) -> None:
    logged = rows(db)  # integrity_check: ok
    for _, p in got:
        assert p["event_id"] in logged
        if p["kind"] == "end":
            assert logged[p["event_id"]][5] == p["reason"]


def test_an_unwritable_event_log_is_one_error_and_a_counter_and_publishing_goes_on(backend, tmp_path, zctx, caplog):
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log's folder should be: every write fails")
    db = blocker / "events.db"
    with caplog.at_level(logging.WARNING, logger="streamer.publish"):
        engine = _engine_with_log(backend, tmp_path, db, zctx)
        sub = subscriber(zctx, engine.publisher.endpoint, "events.")
        wait_subscribed(engine, "events.")
        got: list = []
        try:
            _play(engine, sub, got, 12)
            log = engine.publisher.event_log
            assert len(got) >= 3 and engine.publisher.stats.events_sent == len(got)  # published all the same
            assert log.stats.write_errors >= 1 and log.stats.backlog == len(got) and log.stats.writes == 0
            blocker.unlink()  # the storage comes back; no new edge is needed for the retry
            blocker.mkdir()
            assert run_until(engine, lambda: log.stats.backlog == 0, 5, sub, got)
            assert log.stats.writes == len(got)
        finally:
            engine.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot write" in errors[0] and "publishing goes on" in errors[0], errors
    assert any("writable again" in r.getMessage() for r in caplog.records)
    _check_log_has(db, got)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and the mount capability, else skip)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(mnt: Path) -> Path:
    filler = mnt / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            pass
    return filler


def test_a_full_disk_is_one_error_and_a_counter_and_the_log_catches_up_once_there_is_room(
        backend, tmp_path, zctx, caplog, small_disk):
    db = small_disk / "events.db"
    with caplog.at_level(logging.WARNING, logger="streamer.publish"):
        engine = _engine_with_log(backend, tmp_path, db, zctx)
        log = engine.publisher.event_log
        sub = subscriber(zctx, engine.publisher.endpoint, "events.")
        wait_subscribed(engine, "events.")
        got: list = []
        filler: list[Path] = []

        def fill_after_first_write() -> bool:
            if log.stats.writes and not filler:
                filler.append(_fill(small_disk))  # the disk fills up mid-stream
            return True
        try:
            _play(engine, sub, got, 15, fill_after_first_write)
            assert filler and log.stats.write_errors >= 1 and log.stats.backlog > 0
            assert engine.publisher.stats.events_sent == len(got)  # every edge went out meanwhile
            written = log.stats.writes
            filler[0].unlink()
            assert run_until(engine, lambda: log.stats.backlog == 0, 5, sub, got)
            assert log.stats.writes > written
        finally:
            engine.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "disk is full" in errors[0], errors
    _check_log_has(db, got)
    print(f"{len(got)} edges, {log.stats.write_errors} failed writes while full, backlog written after")


@pytest.mark.parametrize("lossless", [True, False])
def test_a_lossless_stream_waits_where_a_live_one_would_lose_frames(backend, tmp_path, zctx, lossless):
    cfg = EngineConfig.model_validate(config(tmp_path, event_log=None))
    engine = Engine(cfg, backend, streams={"file"}, lossless={"file"} if lossless else None, context=zctx,
                    queue_frames=16)
    worker = start_worker("synth", "--stream", "file", "--fast", "--duration", "30", "--signal", "pink",
                          "--endpoint", engine.ingest_endpoint)  # as fast as the engine reads: 300 frames
    c = engine.counters
    try:
        assert run_until(engine, lambda: c.frames_received["file"] + c.frames_dropped["queue_full"] == 300, 60)
    finally:
        stop(worker)
        engine.close()
    if lossless:  # the worker was held back (ZeroMQ back-pressure) instead
        assert c.frames_received["file"] == 300 and not c.frames_dropped
    else:  # the same sender as a live stream: it outruns the engine, its oldest frames go
        assert c.frames_dropped["queue_full"] == engine.queues["file"].dropped > 0
    assert max(len(q) for q in engine.queues.values()) <= 16


def test_without_a_list_of_sources_the_number_of_streams_is_bounded():
    from streamer.engine import MAX_STREAMS

    engine = make_engine(bind=False)
    engine.allowed = None
    for i in range(MAX_STREAMS + 10):
        engine.handle_message(Frame.from_samples(np.zeros(160, np.int16), stream_id=f"x{i}", epoch=1, seq=0,
                                                 capture_mono_ns=0, capture_wall_ns=0, sample_rate=SR).encode())
    engine.close()
    assert len(engine.streams) == MAX_STREAMS and engine.counters.frames_rejected["too_many_streams"] == 10
