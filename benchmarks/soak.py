"""Soak: N real-time streams for M minutes; does memory grow, are deadlines missed, is anything lost?

    python main.py bench soak [--streams 32] [--minutes 10] [--sample-s 10] [--json runs/bench/soak.json]

The engine runs in this process (its RSS is this process's), with N capture workers (`synth`,
real time, pink noise, one process per stream, started and restarted by the engine's
WorkerSupervisor), an event log in a temporary folder and one SUB subscriber reading every event.
Prompts: one that opens an event per stream and keeps it open, one that starts and ends events
every few seconds on the random-weights model (thresholds around its scores), two ordinary ones.

Every --sample-s seconds one line: RSS, hops, deadline misses, frames received / dropped /
rejected, queued frames, events published / received, event log writes / errors, and the CPU the
hypervisor took from the machine (steal, on a virtual machine: misses in the same stretch are
likely its). The summary compares RSS after the warm-up (the first quarter, at most 60 s:
contexts fill to their full length, caches settle) with the end, and fits a line through the
samples after the warm-up (MB per hour). A deadline miss is a window whose queue wait plus step
took longer than its hop.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    {"label": "always", "text": "a dog barking", "on_threshold": 0.001, "off_threshold": 0.0},
    {"label": "toggle", "text": "glass breaking", "on_threshold": 0.0055, "off_threshold": 0.005},
    {"label": "speech", "text": "a person speaking"},
    {"label": "siren", "text": "a siren wailing"},
]


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB; (0, 0) if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0.0
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    kb = [float(fields.get(k, "0 kB").split()[0]) for k in ("VmRSS", "VmHWM")]
    return kb[0] / 1024, kb[1] / 1024


class LatencyHistogram:
    """End-to-end latencies in 1 ms bins up to 30 s: percentiles within 1 ms in fixed memory, so
    the soak's own bookkeeping does not grow with the hops it counts (a list of every latency
    grew ~15 MB an hour at 64 streams, inside the RSS being measured)."""

    BIN_S = 1e-3
    BINS = 30_000

    def __init__(self):
        self.counts = np.zeros(self.BINS + 1, np.int64)  # the last bin: 30 s and more

    def extend(self, latencies_s) -> None:
        for x in latencies_s:
            self.counts[min(int(x / self.BIN_S), self.BINS)] += 1

    def __len__(self) -> int:
        return int(self.counts.sum())

    def percentile(self, q: float) -> float:
        """The upper edge of the bin holding the q-th percentile, seconds."""
        cum = np.cumsum(self.counts)
        return float((np.searchsorted(cum, q / 100 * cum[-1]) + 1) * self.BIN_S)


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    workers_rss_mb: float
    hops: int
    deadline_misses: int
    frames_received: int
    frames_dropped: int
    frames_rejected: int
    queued: int
    events_sent: int
    events_received: int
    log_writes: int
    log_errors: int
    steal_s: float = 0.0  # the machine's CPU taken by the hypervisor since the last sample (harness.steal_seconds)


@dataclass
class SoakResult:
    streams: int
    minutes: float
    samples: list[Sample] = field(default_factory=list)
    rss_start_mb: float = 0.0  # after the warm-up
    rss_end_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_slope_mb_per_h: float = 0.0
    hops: int = 0
    deadline_misses: int = 0
    e2e_p50_s: float = 0.0
    e2e_p99_s: float = 0.0
    frames_dropped: dict = field(default_factory=dict)
    frames_rejected: dict = field(default_factory=dict)
    events_sent: int = 0
    events_received: int = 0
    events_dropped: int = 0
    seq_gaps: int = 0
    worker_restarts: int = 0
    busy_per_audio: float = 0.0  # real-time factor of the engine
    steal_s: float = 0.0  # CPU seconds the hypervisor took from this machine during the soak


def soak(streams: int, minutes: float, sample_s: float = 10.0, model: str = "slap-tiny", backend_kind: str = "onnx",
         threads: int = 0, printer=print) -> SoakResult:
    from benchmarks.harness import steal_seconds
    from encoder.runtime import open_backend
    from streamer.cli import WorkerSupervisor, frame_ms_for_hop
    from streamer.config import EngineConfig
    from streamer.engine import Engine

    tmp = Path(tempfile.mkdtemp(prefix="slap-soak-"))
    sources = [{"kind": "synth", "name": f"s{i:02d}", "signal": "pink", "level_db": -40, "seed": i,
                "events": ["2.0:beep:0.8", "5.0:burst:0.5", "8.0:chirp:0.6"]} for i in range(streams)]
    cfg = EngineConfig.model_validate({
        "sources": sources, "prompts": PROMPTS,
        "detector": {"min_duration_s": 0.16, "merge_gap_s": 0.16, "smoothing": {"kind": "none"}},
        "model": {"path": model, "backend": backend_kind, "threads": threads, "cache_dir": str(ROOT / "cache")},
        "outputs": {"pub_endpoint": "tcp://127.0.0.1:0", "ingest_endpoint": "tcp://127.0.0.1:0",
                    "event_log": str(tmp / "events.db")},
        "metrics": {"enabled": False},
    })
    backend = open_backend(cfg.model.backend, cfg.model.path, cfg.model.cache_dir, cfg.model.threads or None)
    e2e = LatencyHistogram()

    def on_hop(stats) -> None:
        e2e.extend(stats.end_to_end_s)

    engine = Engine(cfg, backend, streams={s.name for s in cfg.sources}, on_hop=on_hop)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(engine.publisher.endpoint)
    sub.setsockopt(zmq.SUBSCRIBE, b"events.")
    supervisor = WorkerSupervisor(cfg.sources, engine.ingest_endpoint, engine.worker_args,
                                  frame_ms=frame_ms_for_hop(cfg.context.hop_s))
    supervisor.start_all()
    result = SoakResult(streams, minutes)
    steal0 = steal_seconds()
    received, last_seq, gaps = 0, {}, 0
    t0 = time.monotonic()
    end = t0 + minutes * 60
    next_sample = t0 + sample_s
    printer(f"{'t':>6} {'rss MB':>7} {'workers':>8} {'hops':>7} {'misses':>7} {'frames':>8} {'dropped':>8} "
            f"{'rejected':>8} {'queued':>6} {'events':>7} {'recv':>6} {'log w':>6} {'log err':>7} {'steal s':>7}")
    try:
        while time.monotonic() < end:
            engine.poll_once(20)
            supervisor.check()
            while sub.poll(0):
                topic, body = sub.recv_multipart()
                seq = json.loads(body)["seq"]
                gaps += seq != last_seq.get(topic, -1) + 1
                last_seq[topic] = seq
                received += 1
            now = time.monotonic()
            if now >= next_sample:
                next_sample += sample_s
                c, p, log = engine.counters, engine.publisher.stats, engine.publisher.event_log.stats
                s = Sample(round(now - t0, 1), rss_mb()[0], sum(rss_mb(pr.pid)[0] for pr in supervisor.procs.values()),
                           c.hops, c.deadline_misses, sum(c.frames_received.values()), sum(c.frames_dropped.values()),
                           sum(c.frames_rejected.values()), engine.queued_frames, p.events_sent, received,
                           log.writes, log.write_errors, steal_seconds() - steal0)
                steal0 += s.steal_s
                result.samples.append(s)
                printer(f"{s.t_s:>6.0f} {s.rss_mb:>7.1f} {s.workers_rss_mb:>8.0f} {s.hops:>7} {s.deadline_misses:>7} "
                        f"{s.frames_received:>8} {s.frames_dropped:>8} {s.frames_rejected:>8} {s.queued:>6} "
                        f"{s.events_sent:>7} {s.events_received:>6} {s.log_writes:>6} {s.log_errors:>7} {s.steal_s:>7.1f}")
    finally:
        supervisor.stop()
        c = engine.counters
        result.hops, result.deadline_misses = c.hops, c.deadline_misses
        result.frames_dropped, result.frames_rejected = dict(c.frames_dropped), dict(c.frames_rejected)
        result.busy_per_audio = c.busy_seconds / c.audio_seconds if c.audio_seconds else 0.0
        result.events_sent, result.events_dropped = engine.publisher.stats.events_sent, engine.publisher.stats.events_dropped
        result.events_received, result.seq_gaps = received, gaps
        result.worker_restarts = sum(supervisor.restarts.values())
        engine.close()
        sub.close(0)
    result.rss_peak_mb = rss_mb()[1]
    result.steal_s = sum(s.steal_s for s in result.samples)
    if len(e2e):
        result.e2e_p50_s, result.e2e_p99_s = e2e.percentile(50), e2e.percentile(99)
    warm = min(len(result.samples) // 4, max(1, int(60 / sample_s)))
    steady = result.samples[warm:]
    if steady:
        result.rss_start_mb, result.rss_end_mb = steady[0].rss_mb, steady[-1].rss_mb
        if len(steady) >= 2:
            t = np.array([s.t_s for s in steady]) / 3600
            result.rss_slope_mb_per_h = float(np.polyfit(t, [s.rss_mb for s in steady], 1)[0])
    return result


def summary(r: SoakResult) -> str:
    miss = r.deadline_misses / r.hops if r.hops else 0.0
    return "\n".join([
        f"soak: {r.streams} streams x {r.minutes:g} min",
        f"  RSS after warm-up {r.rss_start_mb:.1f} MB -> end {r.rss_end_mb:.1f} MB "
        f"(growth {r.rss_end_mb - r.rss_start_mb:+.1f} MB, fit {r.rss_slope_mb_per_h:+.1f} MB/h), peak {r.rss_peak_mb:.1f} MB",
        f"  hops {r.hops}, deadline misses {r.deadline_misses} ({miss:.1%}), engine busy/audio {r.busy_per_audio:.2f}, "
        f"end-to-end p50 {r.e2e_p50_s * 1e3:.0f} ms p99 {r.e2e_p99_s * 1e3:.0f} ms",
        f"  frames dropped {r.frames_dropped or 0}, rejected {r.frames_rejected or 0}, worker restarts {r.worker_restarts}",
        f"  hypervisor steal {r.steal_s:.0f} CPU s ({r.steal_s / max(r.minutes * 60 * (os.cpu_count() or 1), 1):.1%} "
        "of the machine; per sample in the steal column, to compare with when misses happen)",
        f"  events sent {r.events_sent}, dropped {r.events_dropped}, received by the subscriber {r.events_received} "
        f"(seq gaps {r.seq_gaps})",
    ])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="main.py bench soak", description=__doc__.split("\n")[0])
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--model", default="slap-tiny", help="weights file or config name (default: random weights)")
    p.add_argument("--backend", default="onnx")
    p.add_argument("--threads", type=int, default=0, help="encoder intra-op threads (0: the runtime's choice)")
    p.add_argument("--json", type=Path, help="write the samples and the summary here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    result = soak(args.streams, args.minutes, args.sample_s, args.model, args.backend, args.threads,
                  printer=lambda line: print(line, flush=True))
    print(summary(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(result), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
