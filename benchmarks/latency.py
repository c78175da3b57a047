"""Latency: end-to-end percentiles at 1 and 8 real-time streams, and where the time goes, vs YAMNet.

    python main.py bench latency [--quick] [--backends onnx] [--streams 1 8] [--seconds 20]

Capture workers (one process per stream, `file --realtime --loop`) push the bench file to one
engine process; after a warm-up that fills every context, the engine's per-window end-to-end
latency (capture wall clock of the window's newest sample -> its events published) is collected
for `--seconds`, with its parts: capture -> engine (derived), queue wait, encode, match, detect,
publish. Target: p99 <= hop + 150 ms at 8 streams. Baseline: YAMNet streams in this process
(benchmarks.yamnet_stream), same file, hop and thread count; ratios are ours / YAMNet's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.harness import (
    DEADLINE_MARGIN_S,
    CpuMeter,
    EngineProcess,
    Progress,
    Workers,
    add_engine_args,
    bench_audio,
    machine,
    ms,
    percentiles,
    pyplot,
    worker_frame_ms,
    write_outputs,
    yamnet_streams,
)

STREAMS = (1, 8)


def run_ours(backend: str, args, audio: Path, progress: Progress) -> dict:
    progress(f"{backend}: starting the engine")
    engine = EngineProcess(backend, model=args.model, threads=args.threads, context_s=args.context,
                           hop_s=args.hop, cache_dir=args.cache_dir).start()
    workers = Workers(engine.ingest, audio, worker_frame_ms(args))
    points = []
    try:
        for n in args.streams:
            workers.resize(n)
            progress.wait(args.context + 2.0, f"{backend} N={n}: warm-up, every context filled")
            cpu0, t0, meter = workers.cpu_seconds(), time.monotonic(), CpuMeter()
            progress.wait(args.seconds, f"{backend} N={n}: measuring")
            t1 = time.monotonic()
            meter.stop()
            workers_cpu = (workers.cpu_seconds() - cpu0) / (t1 - t0)
            w = engine.window(t0, t1)
            e = w.end_to_end
            other = meter.other_per_s((w.cpu_per_s or 0) + workers_cpu)
            progress(f"{backend} N={n}: p50 {ms(e['p50'])} p95 {ms(e['p95'])} p99 {ms(e['p99'])} ms "
                     f"(other processes: {other:.2f} CPU s/s)")
            points.append({"streams": n, "window": w, "workers_cpu_per_s": workers_cpu, "other_cpu_per_s": other,
                           "samples_ms": [round(1e3 * x, 2) for x in w.e2e_samples]})
    finally:
        workers.stop()
        engine.stop()
    return {"backend": backend, "info": engine.ready.get("backend"), "points": points}


def run_baseline(args, audio: Path, progress: Progress) -> dict:
    sim = yamnet_streams(args.cache_dir, audio, args.threads, args.hop)
    points = []
    for n in args.streams:
        progress.wait(0, f"yamnet N={n}: measuring {args.seconds:.0f} s")
        meter = CpuMeter()
        r = sim.run(n, args.seconds)
        meter.stop()
        lat = percentiles(r["latencies"])
        progress(f"yamnet N={n}: p50 {ms(lat['p50'])} p95 {ms(lat['p95'])} p99 {ms(lat['p99'])} ms")
        points.append({"streams": n, "end_to_end": lat, "skipped": r["skipped"], "other_cpu_per_s": meter.other_per_s(),
                       "samples_ms": [round(1e3 * x, 2) for x in r["latencies"]]})
    return {"backend": "yamnet", "context_s": sim.context / 16000, "points": points}


def table(result: dict) -> str:
    deadline = result["deadline_s"]
    base = {p["streams"]: p["end_to_end"] for p in result["baseline"]["points"]}
    head = (f"{'backend':8s} {'N':>3s} {'p50':>6s} {'p95':>6s} {'p99':>6s} | {'cap->eng':>8s} {'queue':>6s} "
            f"{'encode':>6s} {'match':>6s} {'detect':>6s} {'publ':>6s} {'batch':>5s} | {'yamnet p50/p95/p99':>18s} "
            f"{'ratio p50/p95/p99':>18s} {'target':>7s} {'other':>6s}")
    lines = [f"latency (ms): end to end = capture of a window's newest sample -> events published; "
             f"{result['context_s']:g} s context, {result['hop_s']:g} s hop, target p99 <= {1e3 * deadline:.0f} ms; "
             f"{result['threads']} threads, {result['machine']['cpus']} CPUs; parts: p99 (cap->eng, queue), "
             f"mean per step (encode .. publish)", head, "-" * len(head)]
    for r in result["ours"]:
        for p in r["points"]:
            w, n = p["window"], p["streams"]
            e, y = w.end_to_end, base.get(n)
            ratio = "/".join(f"{e[k] / y[k]:.1f}" if y and y[k] else "-" for k in ("p50", "p95", "p99"))
            yam = "/".join(ms(y[k]) for k in ("p50", "p95", "p99")) if y else "-"
            ok = e["p99"] is not None and e["p99"] <= deadline
            lines.append(f"{r['backend']:8s} {n:>3d} {ms(e['p50']):>6s} {ms(e['p95']):>6s} {ms(e['p99']):>6s} | "
                         f"{ms(w.capture_to_engine['p99']):>8s} {ms(w.queue_wait['p99']):>6s} {ms(w.encode['mean']):>6s} "
                         f"{1e3 * w.match_s:>6.1f} {1e3 * w.detect_s:>6.1f} {1e3 * w.publish_s:>6.1f} {w.batch_mean:>5.1f} | "
                         f"{yam:>18s} {ratio:>18s} {'met' if ok else 'MISSED':>7s} {p['other_cpu_per_s']:>6.2f}")
    lines.append(f"yamnet: in-process (no transport), {result['baseline']['context_s']:.2f} s patch per stream per hop, "
                 f"one ONNX call per patch; other processes' CPU s/s during its runs: "
                 + ", ".join(f"N={p['streams']} {p['other_cpu_per_s']:.2f}" for p in result["baseline"]["points"]))
    lines.append("other: CPU s per s used by processes outside the benchmark (another job competing for the cores)")
    lines += [f"skipped {k}: {v}" for k, v in result["skipped_backends"].items()]
    return "\n".join(lines)


def figure(result: dict):
    plt = pyplot()
    import numpy as np

    fig, axes = plt.subplots(1, len(result["streams"]), figsize=(6 * len(result["streams"]), 4.5), squeeze=False)
    for ax, n in zip(axes[0], result["streams"]):
        series = [(f"SLAP {r['backend']}", p["samples_ms"]) for r in result["ours"] for p in r["points"] if p["streams"] == n]
        series += [("YAMNet (in-process)", p["samples_ms"]) for p in result["baseline"]["points"] if p["streams"] == n]
        for name, xs in series:
            if xs:
                xs = np.sort(xs)
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=f"{name} (n={len(xs)})")
        ax.axvline(1e3 * result["deadline_s"], color="red", lw=1, label="deadline")
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (ms)")
        ax.set_ylabel("fraction of windows")
        ax.set_title(f"{n} stream{'s' if n > 1 else ''}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(f"latency distribution: {result['context_s']:g} s context, {result['hop_s']:g} s hop, "
                 f"{result['threads']} threads, {result['machine']['cpus']} CPUs")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="main.py bench latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="6 s per point (~1 min)")
    p.add_argument("--backends", default="onnx", help="comma-separated: onnx, torch, tensorrt (default onnx)")
    p.add_argument("--streams", type=int, nargs="+", default=list(STREAMS))
    p.add_argument("--seconds", type=float, default=None, help="seconds measured per point (default 20, quick 6)")
    add_engine_args(p)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.seconds = args.seconds or (6.0 if args.quick else 20.0)
    progress = Progress("latency")
    audio = bench_audio(args.cache_dir)
    from encoder.runtime import BackendError

    ours, skipped = [], {}
    for kind in args.backends.split(","):
        try:
            ours.append(run_ours(kind, args, audio, progress))
        except RuntimeError as e:
            skipped[kind] = str(e).splitlines()[0]
            progress(f"{kind}: skipped ({skipped[kind]})")
    if not ours:
        print(f"bench latency: no backend ran: {skipped}", file=sys.stderr)
        return 2
    try:
        baseline = run_baseline(args, audio, progress)
    except BackendError as e:
        print(f"bench latency: baseline: {e}", file=sys.stderr)
        return 2
    result = {"scenario": "latency", "context_s": args.context, "hop_s": args.hop,
              "deadline_s": args.hop + DEADLINE_MARGIN_S, "threads": args.threads, "streams": args.streams,
              "seconds": args.seconds, "quick": args.quick, "audio": str(audio), "model": args.model,
              "machine": machine(), "ours": ours, "baseline": baseline, "skipped_backends": skipped}
    text = table(result)
    print(text)
    for path in write_outputs("latency", result, text, figure(result), args.out):
        print(f"wrote {path}")
    return 0
