"""Metrics as specifications: what the engine's registry holds after a few hops, what a capture
worker serves, and what a real Prometheus (the Debian binary) scrapes from an end-to-end run on
loopback, including every query of the Grafana dashboard.

Random-weights model (slap-tiny): the values of the scores do not matter here, only that
counters and histograms move and the names, labels and queries hold.
"""

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from encoder.runtime import open_backend
from streamer.config import EngineConfig
from streamer.engine import Engine
from streamer.metrics import EngineMetrics, serve_metrics
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "cache"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PROMETHEUS = Path("/usr/bin/prometheus")  # Debian's `prometheus` package
DASHBOARD = ROOT / "configs" / "grafana" / "dashboards" / "slap-streamer.json"
PROMETHEUS_CONFIG = ROOT / "configs" / "prometheus.yml"
SR = 16000
PROMPTS = [{"label": "beep", "text": "a beep"}, {"label": "dog", "text": "a dog barking"}]


def config(tmp: Path | None, sources: list[dict]) -> EngineConfig:
    return EngineConfig.model_validate({
        "sources": sources,
        "prompts": PROMPTS,
        "context": {"max_context_s": 10, "hop_s": 0.5},
        "model": {"path": "slap-tiny", "backend": "onnx", "cache_dir": str(CACHE)},
        "outputs": {"pub_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "ingest_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "event_log": str(tmp / "events.db") if tmp else None},
        "metrics": {"enabled": False},
    })


@pytest.fixture(scope="module")
def backend():
    return open_backend("onnx", "slap-tiny", CACHE, threads=1)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """GET a /metrics page -> {(sample name, sorted labels): value}."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_engine_steps_move_the_counters_and_histograms_of_a_private_registry(backend):
    hops = []
    engine = Engine(config(None, [{"kind": "synth", "name": "a"}, {"kind": "synth", "name": "b"}]), backend,
                    streams={"a", "b"}, bind=False, on_hop=hops.append)
    metrics = EngineMetrics(engine)
    metrics.attach()
    value = metrics.registry.get_sample_value
    assert value("slap_hops_total") == 0
    assert value("slap_events_total", {"label": "beep"}) == 0  # pre-initialised from the config's prompts
    assert value("slap_stream_up", {"stream": "b"}) == 0  # configured, not started
    assert value("slap_frames_rejected_total", {"reason": "bad_magic"}) == 0

    rng = np.random.default_rng(0)
    for seq in range(30):  # 3 s of 100 ms frames, each one's newest sample captured 50 ms before it is fed
        chunk = (0.1 * rng.standard_normal((1600, 1))).astype(np.float32)
        engine.feed("a", chunk, SR, seq=seq, epoch=1, wall_ns=time.time_ns() - 150_000_000)
        while engine.step() is not None:
            pass
    engine.handle_message(b"junk")

    assert len(hops) == 6  # one hop per 0.5 s; the constructor's on_hop still runs
    assert value("slap_hops_total") == engine.counters.hops == 6
    assert value("slap_batch_size_count") == 6 and value("slap_batch_size_sum") == 6
    assert value("slap_end_to_end_seconds_count") == 6
    assert 0.05 < value("slap_end_to_end_seconds_sum") / 6 < 5.0  # at least those 50 ms
    assert value("slap_encode_seconds_count") == 6 and value("slap_encode_seconds_sum") > 0
    assert value("slap_capture_to_engine_seconds_count") == 6
    assert value("slap_audio_seconds_total") == pytest.approx(3.0)
    assert value("slap_real_time_factor") > 0
    assert value("slap_frames_received_total", {"stream": "a"}) == 30
    assert value("slap_frames_received_total", {"stream": "b"}) == 0
    assert value("slap_stream_up", {"stream": "a"}) == 1 and value("slap_active_streams") == 1
    assert value("slap_frames_rejected_total", {"reason": "bad_magic"}) == 1
    assert value("slap_events_total", {"label": "dog"}) == engine.counters.events["dog"]
    info = next(s.labels for fam in metrics.registry.collect() if fam.name == "slap_model" for s in fam.samples)
    assert info["model"] == engine.model_id and info["backend"] == "onnx"
    assert value("process_resident_memory_bytes") > 0
    metrics.detach()
    assert engine.on_hop == hops.append


def test_serve_metrics_chains_on_hop_serves_http_and_closes(backend):
    hops = []
    engine = Engine(config(None, []), backend, bind=False, on_hop=hops.append)
    server = serve_metrics(engine, "127.0.0.1", 0)
    assert server.port > 0
    for seq in range(10):
        engine.feed("x", np.zeros((1600, 1), np.float32), SR, seq=seq, epoch=1, wall_ns=time.time_ns())
        engine.step()
    samples = scrape(server.url)
    assert samples[("slap_hops_total", ())] == len(hops) == 2
    assert samples[("slap_batch_size_count", ())] == 2
    names = {name for name, _ in samples}
    assert all(n.startswith(("slap_", "process_")) for n in names), names
    server.close()
    assert engine.on_hop == hops.append
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)


def worker_metrics_url(worker: subprocess.Popen, timeout_s: float = 30.0) -> str:
    """The URL a worker started with --metrics-port 0 logs ("worker metrics on URL"); its stderr is
    drained on a thread from then on. A port picked here and bound there could be taken in
    between (an outgoing connection's ephemeral port), so the worker picks it."""
    found: list[str] = []
    seen = threading.Event()
    lines: list[str] = []

    def read() -> None:
        for line in worker.stderr:
            lines.append(line)
            if "worker metrics on " in line and not found:
                found.append(line.split("worker metrics on ", 1)[1].strip())
                seen.set()
        seen.set()

    threading.Thread(target=read, daemon=True).start()
    seen.wait(timeout_s)
    assert found, f"the worker logged no metrics URL in {timeout_s:.0f} s:\n{''.join(lines)}"
    return found[0]


def test_a_capture_worker_serves_its_counters(tmp_path):
    import zmq

    pull = zmq.Context.instance().socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    worker = subprocess.Popen([sys.executable, "-m", "streamer.capture", "synth", "--endpoint", f"tcp://127.0.0.1:{port}",
                               "--stream", "w1", "--duration", "30", "--realtime", "--metrics-port", "0"],
                              cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        url = worker_metrics_url(worker)
        sent = 0.0
        end = time.monotonic() + 20
        while sent < 3 and time.monotonic() < end:
            while pull.poll(100):
                pull.recv()
            samples = scrape(url)
            sent = samples.get(("slap_worker_frames_sent_total", (("stream", "w1"),)), 0.0)
        assert sent >= 3
        key = (("stream", "w1"),)
        assert samples[("slap_worker_audio_seconds_total", key)] == pytest.approx(sent * 0.1)
        assert samples[("slap_worker_frames_dropped_total", key)] == 0
        assert ("slap_worker_reconnects_total", key) in samples
    finally:
        worker.terminate()
        worker.wait(timeout=10)
        pull.close(0)


# ------------------------------------------------------------------------------------ Prometheus


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard, template variables replaced by what "All" sends."""
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for top in dash["panels"] for p in [top, *top.get("panels", [])]]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    subs = {"$__rate_interval": "1m", "$__range": "1m", "$stream": ".*", "$label": ".*"}
    out = []
    for e in exprs:
        for var, value in subs.items():
            e = e.replace(var, value)
        assert "$" not in e, e
        out.append(e)
    return out


class PromAPI:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}/api/v1/"

    def get(self, path: str, **params) -> dict:
        url = self.base + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
        try:
            body = urllib.request.urlopen(url, timeout=5).read()
        except urllib.error.HTTPError as e:  # a bad query: 400 with the error in the body
            body = e.read()
        return json.loads(body)

    def query(self, expr: str) -> list[dict]:
        r = self.get("query", query=expr)
        assert r["status"] == "success", (expr, r.get("error"))
        return r["data"]["result"]


def wait_until(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except (urllib.error.URLError, ConnectionError, KeyError, IndexError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_shipped_prometheus_config_is_valid():
    promtool = PROMETHEUS.with_name("promtool")
    if not promtool.exists():
        pytest.skip("needs promtool (Debian package prometheus)")
    out = subprocess.run([str(promtool), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(not PROMETHEUS.exists(), reason="needs the Debian package prometheus (/usr/bin/prometheus)")
def test_prometheus_scrapes_an_end_to_end_run_and_every_dashboard_query_has_data(backend, tmp_path):
    cfg = config(tmp_path, [{"kind": "synth", "name": "synth1"}])
    engine = Engine(cfg, backend, streams={"synth1"})
    server = serve_metrics(engine, "127.0.0.1", 0)
    stop = threading.Event()
    loop = threading.Thread(target=engine.run, args=(stop.is_set,), daemon=True)
    loop.start()
    worker = subprocess.Popen([sys.executable, "-m", "streamer.capture", "synth", "--endpoint", engine.ingest_endpoint,
                               "--stream", "synth1", "--signal", "pink", "--level-db", "-30", "--event", "1.0:beep:1.0",
                               "--event", "3.0:burst:1.0", "--duration", "60", "--realtime"],
                              cwd=ROOT, env=ENV, stderr=subprocess.DEVNULL)
    prom_cfg = yaml.safe_load(PROMETHEUS_CONFIG.read_text())  # the shipped config, pointed at this engine
    prom_cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    prom_cfg["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{server.port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
    prom_port = free_port()
    prom_log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen([str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=prom_log, stderr=subprocess.STDOUT)
    api = PromAPI(prom_port)
    try:
        # three scrapes after the first window was published: every rate() has points to work on
        wait_until(lambda: float(api.query("min_over_time(slap_end_to_end_seconds_count[1m])")[0]["value"][1]) > 0
                   and float(api.query("count_over_time(slap_end_to_end_seconds_count[1m])")[0]["value"][1]) >= 3,
                   60, "three scrapes with end-to-end observations")
        buckets = api.query("slap_end_to_end_seconds_bucket")
        assert {b["metric"]["le"] for b in buckets} >= {"0.5", "0.65", "1.0", "+Inf"}
        assert all(b["metric"]["job"] == "slap-engine" for b in buckets)
        p99 = float(api.query("histogram_quantile(0.99, sum by (le) (rate(slap_end_to_end_seconds_bucket[1m])))")[0]["value"][1])
        assert 0 < p99 < 5.0
        events = api.query("slap_events_total")
        assert {e["metric"]["label"] for e in events} == {p["label"] for p in PROMPTS}
        assert api.query('slap_stream_up{stream="synth1"}')[0]["value"][1] == "1"

        for expr in dashboard_queries():
            result = api.query(expr)
            assert result, f"no data: {expr}"
        dash = json.loads(DASHBOARD.read_text())
        for var in dash["templating"]["list"]:
            if var["type"] == "query":  # label_values(METRIC, LABEL): Grafana asks the series API
                metric, label = var["query"]["query"].removeprefix("label_values(").rstrip(")").split(", ")
                values = api.get(f"label/{label}/values", **{"match[]": metric})["data"]
                assert values, var["query"]
                assert not any(math.isnan(float(r["value"][1])) for r in api.query(f"count({metric})"))
    finally:
        worker.terminate()
        prom.terminate()
        worker.wait(timeout=10)
        prom.wait(timeout=20)
        prom_log.close()
        stop.set()
        loop.join(timeout=10)
        server.close()
        engine.close()
