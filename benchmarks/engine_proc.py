"""The engine under benchmark, as its own process: `python -m benchmarks.engine_proc [options]`.

The real engine (streamer.engine.Engine with its ZeroMQ sockets, SQLite event log and metrics
endpoint), configured from configs/default.yaml's prompts, accepting any stream id, bound to free
loopback ports. It reports on stdout, one JSON object a line, read by benchmarks.harness:

    {"ready": {...}}                       once bound: ingest endpoint, metrics port, backend info
    {"h": [t, batch, encode_s, match_s, detect_s, publish_s, [queue_wait_s], [end_to_end_s], misses]}
                                           every engine step (its HopStats), t = time.monotonic()
    {"s": {...}}                           every second: counters, RSS, peak RSS, CPU seconds
    {"profile": PATH}                      after "profile off PATH"

and reads commands on stdin, one a line: `profile on`, `profile off PATH` (cProfile of the engine
thread, written as pstats), `clear_hwm` (reset the peak RSS), `stop`.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

from streamer.config import EngineConfig, load_config

DEFAULT_CONFIG = Path("configs/default.yaml")
SAMPLE_EVERY_S = 1.0


def proc_status_bytes(pid: int | str, field: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM) in bytes; 0 where there is none."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def clear_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def bench_config(args: argparse.Namespace, workdir: Path) -> EngineConfig:
    base = load_config(args.config)
    return EngineConfig.model_validate({
        "prompts": [p.model_dump() for p in base.prompts],
        "context": {"max_context_s": args.context, "hop_s": args.hop, "encoder": args.encoder,
                    "batch_wait_s": args.batch_wait},
        "detector": base.detector.model_dump(),
        "model": {"path": args.model, "backend": args.backend, "threads": args.threads, "precision": args.precision,
                  "cache_dir": str(args.cache_dir)},
        "outputs": {"ingest_endpoint": "tcp://127.0.0.1:0", "pub_endpoint": "tcp://127.0.0.1:0",
                    "event_log": str(workdir / "events.db")},
        "metrics": {"enabled": args.metrics, "host": "127.0.0.1", "port": 9464},
    })


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine_proc", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="prompts and detector settings from here")
    p.add_argument("--model", default="slap-tiny")
    p.add_argument("--backend", default="onnx")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--context", type=float, default=10.0)
    p.add_argument("--hop", type=float, default=0.5)
    p.add_argument("--encoder", choices=("incremental", "window"), default="incremental")
    p.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    p.add_argument("--batch-wait", type=float, default=0.0, help="context.batch_wait_s, seconds")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--no-metrics", dest="metrics", action="store_false", help="no Prometheus endpoint")
    args = p.parse_args(argv)

    from encoder.runtime import open_backend
    from streamer.engine import Engine

    out_lock = threading.Lock()

    def emit(obj: dict) -> None:
        line = json.dumps(obj, separators=(",", ":"))
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def on_hop(h) -> None:
        emit({"h": [round(time.monotonic(), 6), h.batch_size, round(h.encode_s, 6), round(h.match_s, 6),
                    round(h.detect_s, 6), round(h.publish_s, 6), [round(q, 6) for q in h.queue_wait_s],
                    [round(e, 6) for e in h.end_to_end_s], h.deadline_misses]})

    workdir = Path(tempfile.mkdtemp(prefix="slap-bench-engine-"))
    cfg = bench_config(args, workdir)
    backend = open_backend(cfg.model.backend, cfg.model.path, cfg.model.cache_dir, cfg.model.threads or None,
                           precision=cfg.model.precision)
    if args.backend != "auto" and backend.info().get("backend") != args.backend:  # tensorrt falls back to onnx
        print(f"engine_proc: backend {args.backend} not available here (got {backend.info().get('backend')})",
              file=sys.stderr)
        return 2
    engine = Engine(cfg, backend, on_hop=on_hop)
    server = None
    if cfg.metrics.enabled:
        from streamer.metrics import serve_metrics

        server = serve_metrics(engine, "127.0.0.1", 0)
    commands: queue.Queue[str] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("stop")

    threading.Thread(target=read_stdin, daemon=True).start()
    state = {"stop": False, "next_sample": 0.0}
    profiler: list[cProfile.Profile] = []

    def sample() -> None:
        c = engine.counters
        streams = list(engine.streams.values())
        t = os.times()
        emit({"s": {
            "t": round(time.monotonic(), 6), "rss": proc_status_bytes("self", "VmRSS"),
            "hwm": proc_status_bytes("self", "VmHWM"), "cpu": t.user + t.system,
            "hops": c.hops, "skipped": c.hops_skipped, "misses": c.deadline_misses, "busy": c.busy_seconds,
            "audio": c.audio_seconds, "frames": sum(c.frames_received.values()), "streams": len(streams),
            "active": sum(1 for s in streams if not s.stale), "events": sum(c.events.values()),
            "gaps": sum(s.context.stats.gaps for s in streams),
            "missing": sum(s.context.stats.missing_chunks for s in streams),
            "dropped": sum(c.frames_dropped.values()), "rejected": sum(c.frames_rejected.values())}})

    def idle() -> None:
        while True:
            try:
                cmd = commands.get_nowait()
            except queue.Empty:
                break
            if cmd == "stop":
                state["stop"] = True
            elif cmd == "clear_hwm":
                clear_peak_rss()
            elif cmd == "profile on" and not profiler:
                profiler.append(cProfile.Profile())
                profiler[0].enable()
            elif cmd.startswith("profile off") and profiler:
                prof = profiler.pop()
                prof.disable()
                path = cmd.split(maxsplit=2)[2]
                prof.dump_stats(path)
                emit({"profile": path})
        now = time.monotonic()
        if now >= state["next_sample"]:
            state["next_sample"] = now + SAMPLE_EVERY_S
            sample()

    emit({"ready": {"ingest": engine.ingest_endpoint, "pub": engine.publisher.endpoint, "pid": os.getpid(),
                    "metrics_port": server.port if server else None, "backend": backend.info(),
                    "model": engine.model_id, "prompts": len(cfg.prompts)}})
    try:
        engine.run(lambda: state["stop"], idle)
    finally:
        sample()
        if server is not None:
            server.close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
