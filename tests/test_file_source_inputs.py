"""Every kind of input a user has (tests/input_sweep.py) as the file sources of one running engine:
`main.py --config` with one real file worker subprocess per input, real sockets on loopback, its
metrics over HTTP and its event log on disk.

The engine stays up the whole time; every readable file is analysed to its end (the "always"
prompt gives each one an event, a clip shorter than one 160 ms column included: its tail is
padded when the stream goes quiet); each refused file is counted once in
slap_source_failures_total{stream, reason} and not played again; the exit status says that some
files failed. Mechanics only: seeded random weights (slap-tiny).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from streamer.publish import query_events
from tests.input_sweep import INPUTS, make_inputs
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "cache"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ALWAYS = {"label": "always", "text": "a door slamming", "on_threshold": 0.001, "off_threshold": 0.0}
DETECTOR = {"min_duration_s": 0.16, "merge_gap_s": 0.16, "smoothing": {"kind": "none"}}
REASON = {"refused": "source_error", "partial": "failed"}  # streamer.engine.SOURCE_FAILURE_REASONS


def engine_config(tmp: Path, paths: list[Path], metrics_port: int) -> dict:
    return {
        "sources": [{"kind": "file", "name": item.stream, "path": str(path), "realtime": False}
                    for item, path in zip(INPUTS, paths)],
        "prompts": [ALWAYS],
        "detector": DETECTOR,
        "model": {"path": "slap-tiny", "backend": "onnx", "cache_dir": str(CACHE), "threads": 1},
        "outputs": {"pub_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "ingest_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "event_log": str(tmp / "events.db")},
        "metrics": {"enabled": True, "port": metrics_port},
    }


def source_failures(url: str) -> dict[tuple[str, str], float]:
    """slap_source_failures_total by (stream, reason); {} while the engine does not answer yet."""
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except (urllib.error.URLError, ConnectionError):
        return {}
    return {(s.labels["stream"], s.labels["reason"]): s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == "slap_source_failures_total"}


def streams_with_events(db: Path) -> set[str]:
    return {row.stream for row in query_events(db, limit=100_000)} if db.exists() else set()


@pytest.mark.slow
def test_a_running_engine_plays_every_readable_file_and_counts_each_refused_one(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    paths = make_inputs(inputs)
    port = free_port()
    cfg_path = tmp_path / "engine.yaml"
    cfg_path.write_text(yaml.safe_dump(engine_config(tmp_path, paths, port), sort_keys=False))
    log = tmp_path / "engine.log"
    engine = subprocess.Popen([sys.executable, "main.py", "--config", str(cfg_path)], cwd=ROOT, env=ENV,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    for path, item in zip(paths, INPUTS):
        if item.vanishes:
            path.unlink()  # in the config, gone before its worker opens it (the engine loads its model first)
    played = {item.stream for item in INPUTS if item.outcome != "refused"}
    failed = {(item.stream, REASON[item.outcome]) for item in INPUTS if item.outcome != "scored"}
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert engine.poll() is None, f"the engine exited: {log.read_text()[-3000:]}"
            counts = source_failures(url)
            if {k for k, v in counts.items() if v} == failed and played <= streams_with_events(tmp_path / "events.db"):
                break
            time.sleep(0.5)
        time.sleep(1.0)  # a refused file's worker would have been restarted by now (backoff 0.5 s)
        assert engine.poll() is None, "the engine exited"
        counts = source_failures(url)
        assert {k: v for k, v in counts.items() if v} == {k: 1.0 for k in failed}, log.read_text()[-3000:]
        assert set(counts) >= {(item.stream, "source_error") for item in INPUTS}  # 0 before it happens
        missing = played - streams_with_events(tmp_path / "events.db")
        assert not missing, f"no event for {sorted(missing)}"
    finally:
        if engine.poll() is None:
            engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    for item in INPUTS:
        if item.outcome != "scored":
            assert sum(item.reason in line and item.name in line for line in text.splitlines()) == 1, item.name
    assert engine.returncode == 1  # some files could not be played
