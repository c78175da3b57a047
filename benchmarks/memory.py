"""Memory: the engine's peak resident memory at 1, 8 and 32 real-time streams, vs YAMNet.

    python main.py bench memory [--quick] [--backend onnx] [--streams 1 8 32] [--seconds 15]

For each N, a fresh engine process (benchmarks.engine_proc) takes N capture workers (one process
per stream, `file --realtime --loop`) for `--seconds` (at least a full context, so every stream's
window and state have reached their size); its peak RSS (VmHWM) is read at the end, with the
workers' RSS beside it. An engine that cannot keep up (real-time factor > 1) also holds a growing
backlog of frames, so its RTF is shown. Baseline: YAMNet streams (benchmarks.yamnet_stream) in a
fresh process of their own, same file, hop and thread count; ratios are ours / YAMNet's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import (
    ROOT,
    CpuMeter,
    EngineProcess,
    Progress,
    Workers,
    add_engine_args,
    bench_audio,
    machine,
    pyplot,
    worker_frame_ms,
    write_outputs,
)

STREAMS = (1, 8, 32)
MB = 1024 * 1024


def run_ours(n: int, args, audio: Path, progress: Progress) -> dict:
    progress(f"{args.backend} N={n}: starting a fresh engine")
    engine = EngineProcess(args.backend, model=args.model, threads=args.threads, context_s=args.context,
                           hop_s=args.hop, cache_dir=args.cache_dir).start()
    workers = Workers(engine.ingest, audio, worker_frame_ms(args))
    try:
        time.sleep(1.0)
        idle = engine.samples[-1]["rss"] if engine.samples else 0
        workers.resize(n)
        t0, meter = time.monotonic(), CpuMeter()
        progress.wait(args.seconds, f"{args.backend} N={n}: running")
        meter.stop()
        worker_rss = workers.rss()
        w = engine.window(t0 + args.context, time.monotonic())
    finally:
        workers.stop()
        engine.stop()
    return {"streams": n, "engine_idle_rss": idle, "engine_peak_rss": w.hwm, "engine_rss": w.rss,
            "workers_rss": worker_rss, "workers_rss_total": sum(worker_rss), "rtf": w.rtf, "load": w.busy_per_s,
            "skipped": w.skipped,
            "p99_end_to_end_s": w.end_to_end["p99"], "host_cpu_per_s": meter.host_per_s}


def run_baseline(n: int, args, audio: Path, progress: Progress) -> dict:
    progress(f"yamnet N={n}: a fresh process, {args.baseline_seconds:.0f} s")
    cmd = [sys.executable, "-m", "benchmarks.yamnet_stream", "--audio", str(audio), "--streams", str(n),
           "--seconds", str(args.baseline_seconds), "--hop", str(args.hop), "--threads", str(args.threads),
           "--cache-dir", str(args.cache_dir)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode != 0:
        raise RuntimeError(f"yamnet baseline failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"streams": n, "peak_rss": r["hwm"], "rss": r["rss"], "rtf": r["busy"] / (n * r["wall"]),
            "skipped": r["skipped"]}


def table(result: dict) -> str:
    base = {b["streams"]: b for b in result["baseline"]}
    first = min(result["ours"], key=lambda p: p["streams"])
    head = (f"{'N':>3s} {'engine peak MB':>14s} {'idle MB':>8s} {'marginal MB/stream':>18s} {'worker MB':>9s} "
            f"{'total MB':>9s} {'load':>5s} | {'yamnet peak MB':>14s} {'ratio engine':>12s} {'ratio total':>11s}")
    lines = [f"memory ({result['backend']}): peak RSS (VmHWM) of the engine process; total = engine peak + all "
             f"worker processes; {result['context_s']:g} s context, {result['hop_s']:g} s hop, {result['threads']} "
             f"threads, {result['machine']['cpus']} CPUs", head, "-" * len(head)]
    for p in result["ours"]:
        n, b = p["streams"], base.get(p["streams"])
        total = p["engine_peak_rss"] + p["workers_rss_total"]
        marginal = ((p["engine_peak_rss"] - first["engine_peak_rss"]) / (n - first["streams"]) / MB
                    if n > first["streams"] else None)
        worker = p["workers_rss_total"] / max(1, len(p["workers_rss"]))
        lines.append(f"{n:>3d} {p['engine_peak_rss'] / MB:>14.0f} {p['engine_idle_rss'] / MB:>8.0f} "
                     f"{'-' if marginal is None else f'{marginal:.1f}':>18s} {worker / MB:>9.0f} {total / MB:>9.0f} "
                     f"{p['load'] or 0:>5.2f} | {b['peak_rss'] / MB if b else 0:>14.0f} "
                     f"{p['engine_peak_rss'] / b['peak_rss'] if b else 0:>12.2f} {total / b['peak_rss'] if b else 0:>11.2f}")
    lines.append(f"idle = the engine after start-up, before any audio; marginal = (peak - peak at N={first['streams']}) "
                 f"per added stream; worker = mean RSS of one capture worker; load = engine seconds serving hops per "
                 f"wall second (>= 1: it falls behind, and its frame queues grow); yamnet: one process, every "
                 f"stream's 0.96 s context in it")
    return "\n".join(lines)


def figure(result: dict):
    plt = pyplot()
    import numpy as np

    ns = [p["streams"] for p in result["ours"]]
    x = np.arange(len(ns))
    base = {b["streams"]: b["peak_rss"] / MB for b in result["baseline"]}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.bar(x - 0.27, [p["engine_peak_rss"] / MB for p in result["ours"]], 0.27, label="SLAP engine (peak)")
    ax.bar(x, [(p["engine_peak_rss"] + p["workers_rss_total"]) / MB for p in result["ours"]], 0.27,
           label="SLAP engine + capture workers")
    ax.bar(x + 0.27, [base.get(n, 0) for n in ns], 0.27, label="YAMNet (in-process, peak)")
    ax.set_xticks(x, [str(n) for n in ns])
    ax.set_xlabel("concurrent real-time streams")
    ax.set_ylabel("resident memory (MB)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    ax.set_title(f"memory ({result['backend']}, {result['context_s']:g} s context, {result['threads']} threads)")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="main.py bench memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a context + 2 s per point (~1 min)")
    p.add_argument("--backend", default="onnx")
    p.add_argument("--streams", type=int, nargs="+", default=list(STREAMS))
    p.add_argument("--seconds", type=float, default=None, help="seconds per point (default context + 5, quick context + 2)")
    add_engine_args(p)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.seconds = args.seconds or args.context + (2.0 if args.quick else 5.0)
    args.baseline_seconds = 3.0 if args.quick else 5.0
    progress = Progress("memory")
    audio = bench_audio(args.cache_dir)
    try:
        ours = [run_ours(n, args, audio, progress) for n in args.streams]
        baseline = [run_baseline(n, args, audio, progress) for n in args.streams]
    except RuntimeError as e:
        print(f"bench memory: {e}", file=sys.stderr)
        return 2
    result = {"scenario": "memory", "backend": args.backend, "context_s": args.context, "hop_s": args.hop,
              "threads": args.threads, "seconds": args.seconds, "quick": args.quick, "audio": str(audio),
              "model": args.model, "machine": machine(), "ours": ours, "baseline": baseline}
    text = table(result)
    print(text)
    for path in write_outputs("memory", result, text, figure(result), args.out):
        print(f"wrote {path}")
    return 0
