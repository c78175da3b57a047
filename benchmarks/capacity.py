"""Capacity: the most real-time streams one engine holds, per backend, against YAMNet in the same run.

    python main.py bench capacity [--quick] [--backends onnx,torch] [--threads 2] [--max-streams 64]

N capture workers (`python -m streamer.capture file --realtime --loop`, one process per stream)
push the bench file to one engine process (benchmarks.engine_proc: the real engine with its
ZeroMQ sockets, event log and metrics endpoint). N steps up a ladder (1, 2, 4, ...) until a load is
not held, then bisects between the last held and the first failed N. A load is held when, over
the measurement window (after a warm-up that fills every new stream's context), the p99
end-to-end latency (capture of a window's newest sample -> its events published) is within the
deadline (hop + 150 ms), no hop was skipped, and the expected windows were served.

Baseline: YAMNet (benchmarks.yamnet_stream) in this process with the same thread count, over
the same file and hop, each hop scoring the stream's newest 0.96 s patch; stepped the same way.
Where time goes: the engine's own stage timings at the largest N held, the CPU of the engine and
of the workers, and a cProfile of the engine thread.
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
    held,
    machine,
    ms,
    percentiles,
    pyplot,
    write_outputs,
    yamnet_streams,
)

LADDER = (1, 2, 4, 8, 16, 32, 64, 128)
QUICK_LADDER = (1, 8, 16, 32, 64)
BASELINE_LADDER = (1, 4, 16, 64, 256, 1024, 4096)


def search(measure, ladder: tuple[int, ...], refine: int, limit: int) -> tuple[int, int | None]:
    """Step N up the ladder until measure(N) is not held, then bisect `refine` times.
    Returns (largest N held, smallest N failed or None)."""
    best, fail = 0, None
    for n in [n for n in ladder if n <= limit]:
        if measure(n)["held"]:
            best = n
        else:
            fail = n
            break
    for _ in range(refine):
        if fail is None or fail - best <= 1:
            break
        n = (best + fail) // 2
        if measure(n)["held"]:
            best = n
        else:
            fail = n
    return best, fail


def run_ours(backend: str, args, audio: Path, progress: Progress) -> dict:
    deadline = args.hop + DEADLINE_MARGIN_S
    progress(f"{backend}: starting the engine")
    engine = EngineProcess(backend, model=args.model, threads=args.threads, context_s=args.context,
                           hop_s=args.hop, cache_dir=args.cache_dir).start()
    workers = Workers(engine.ingest, audio)
    steps: list[dict] = []

    def measure(n: int) -> dict:
        workers.resize(n)
        progress.wait(args.context + 2.0, f"{backend} N={n}: warm-up, every context filled")
        cpu0, t0, meter = workers.cpu_seconds(), time.monotonic(), CpuMeter()
        time.sleep(args.measure)
        t1 = time.monotonic()
        meter.stop()
        workers_cpu = (workers.cpu_seconds() - cpu0) / (t1 - t0)
        w = engine.window(t0, t1)
        expected = n * (t1 - t0) / args.hop
        step = {"streams": n, "held": held(w.end_to_end["p99"], w.skipped, w.windows, expected, deadline),
                "alive_workers": workers.alive(), "workers_cpu_per_s": workers_cpu, "host_cpu_per_s": meter.host_per_s,
                "other_cpu_per_s": meter.other_per_s((w.cpu_per_s or 0) + workers_cpu), "window": w}
        steps.append(step)
        e = w.end_to_end
        progress(f"{backend} N={n}: p50 {ms(e['p50'])} p99 {ms(e['p99'])} ms, busy {w.busy_per_s or 0:.2f} s/s, "
                 f"batch {w.batch_mean:.1f}, skipped {w.skipped} -> {'held' if step['held'] else 'NOT held'}")
        return step

    try:
        best, fail = search(measure, QUICK_LADDER if args.quick else LADDER, 0 if args.quick else args.refine,
                            args.max_streams)
        profile = []
        if args.profile and best:
            workers.resize(best)
            progress.wait(5.0, f"{backend} N={best}: settling before the profile")
            path = Path(args.cache_dir) / "bench" / f"capacity-{backend}.pstats"
            progress(f"{backend} N={best}: cProfile of the engine thread ({args.measure:.0f} s)")
            profile = engine.profile(args.measure, path)
    finally:
        workers.stop()
        engine.stop()
    return {"backend": backend, "info": engine.ready.get("backend") if engine.ready else None,
            "largest_held": best, "smallest_failed": fail, "steps": steps, "profile": profile}


def run_baseline(args, audio: Path, progress: Progress) -> dict:
    deadline = args.hop + DEADLINE_MARGIN_S
    sim = yamnet_streams(args.cache_dir, audio, args.threads, args.hop)
    seconds = 2.0 if args.quick else 4.0
    steps: list[dict] = []

    def measure(n: int) -> dict:
        meter = CpuMeter()
        r = sim.run(n, seconds)
        meter.stop()
        lat = percentiles(r["latencies"])
        step = {"streams": n, "held": held(lat["p99"], r["skipped"], r["hops"], n * seconds / args.hop, deadline),
                "end_to_end": lat, "skipped": r["skipped"], "rtf": r["busy"] / (n * r["wall"]),
                "busy_per_s": r["busy"] / r["wall"], "host_cpu_per_s": meter.host_per_s,
                "other_cpu_per_s": meter.other_per_s()}
        steps.append(step)
        progress(f"yamnet N={n}: p50 {ms(lat['p50'])} p99 {ms(lat['p99'])} ms, busy {step['busy_per_s']:.2f} s/s, "
                 f"skipped {r['skipped']} -> {'held' if step['held'] else 'NOT held'}")
        return step

    best, fail = search(measure, BASELINE_LADDER, 2 if args.quick else 3, args.max_baseline_streams)
    return {"backend": "yamnet", "largest_held": best, "smallest_failed": fail, "steps": steps,
            "context_s": sim.context / 16000}


def table(result: dict) -> str:
    deadline = result["deadline_s"]
    head = (f"{'backend':8s} {'N':>5s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} {'batch':>6s} "
            f"{'enc ms':>7s} {'RTF':>6s} {'busy/s':>6s} {'CPU/s':>6s} {'wrk/s':>6s} {'other':>6s} {'skip':>5s} {'held':>5s}")
    lines = [f"capacity: {result['context_s']:g} s context, {result['hop_s']:g} s hop, deadline p99 end to end "
             f"<= {1e3 * deadline:.0f} ms; {result['threads']} threads, {result['machine']['cpus']} CPUs",
             head, "-" * len(head)]
    for r in result["ours"]:
        for s in r["steps"]:
            w = s["window"]
            e = w.end_to_end
            lines.append(f"{r['backend']:8s} {s['streams']:>5d} {ms(e['p50']):>7s} {ms(e['p95']):>7s} {ms(e['p99']):>7s} "
                         f"{w.batch_mean:>6.1f} {ms(w.encode['mean']):>7s} {w.rtf or 0:>6.3f} {w.busy_per_s or 0:>6.2f} "
                         f"{w.cpu_per_s or 0:>6.2f} "
                         f"{s['workers_cpu_per_s']:>6.2f} {s['other_cpu_per_s']:>6.2f} {w.skipped:>5d} "
                         f"{'yes' if s['held'] else 'NO':>5s}")
    b = result["baseline"]
    for s in b["steps"]:
        e = s["end_to_end"]
        lines.append(f"{'yamnet':8s} {s['streams']:>5d} {ms(e['p50']):>7s} {ms(e['p95']):>7s} {ms(e['p99']):>7s} "
                     f"{1:>6.1f} {'':>7s} {s['rtf']:>6.3f} {s['busy_per_s']:>6.2f} {'':>6s} {'':>6s} "
                     f"{s['other_cpu_per_s']:>6.2f} {s['skipped']:>5d} "
                     f"{'yes' if s['held'] else 'NO':>5s}")
    lines.append("RTF: engine seconds per stream-second of audio; busy/s: engine seconds serving hops per wall "
                 "second (1.0: its thread saturated); CPU/s: engine process CPU (all threads); wrk/s: all workers' CPU; other: CPU s per s used by "
                 "processes outside the benchmark (another job competing for the cores)")
    lines.append("")
    lines.append(f"largest N held: yamnet {b['largest_held']} (baseline, in-process, {b['context_s']:.2f} s patch per hop)")
    for r in result["ours"]:
        ratio = r["largest_held"] / b["largest_held"] if b["largest_held"] else float("nan")
        lines.append(f"largest N held: {r['backend']} {r['largest_held']} (first failed: {r['smallest_failed']}); "
                     f"ours/baseline {ratio:.3f}; target >= 32: {'met' if r['largest_held'] >= 32 else 'MISSED'}")
    lines += [f"skipped {k}: {v}" for k, v in result["skipped_backends"].items()]
    lines += where_time_goes(result)
    return "\n".join(lines)


def where_time_goes(result: dict) -> list[str]:
    lines = []
    for r in result["ours"]:
        at = [s for s in r["steps"] if s["streams"] == r["largest_held"]]
        if not at:
            continue
        s, w = at[-1], at[-1]["window"]
        per_s = w.steps / w.seconds
        lines.append(f"where time goes ({r['backend']}, N={s['streams']}, per wall second): engine step "
                     f"{w.busy_per_s or 0:.2f} s = encode {per_s * w.encode['mean']:.3f} + match {per_s * w.match_s:.3f} "
                     f"+ detect {per_s * w.detect_s:.3f} + publish {per_s * w.publish_s:.3f}; engine process CPU "
                     f"{w.cpu_per_s or 0:.2f} s (all threads; outside the step: receive, decode, log-mel, metrics); "
                     f"{s['streams']} workers {s['workers_cpu_per_s']:.2f} CPU s")
        if r["profile"]:
            lines.append(f"  cProfile of the engine thread ({r['backend']}, N={s['streams']}), top by own time:")
            for p in r["profile"][:12]:
                lines.append(f"    {100 * p['own_share']:5.1f} %  {p['own_s']:7.3f} s  {p['calls']:>7d} calls  {p['function']}")
    return lines


def figure(result: dict):
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in result["ours"]:
        steps = sorted(r["steps"], key=lambda s: s["streams"])
        ns = [s["streams"] for s in steps]
        ax1.plot(ns, [1e3 * (s["window"].end_to_end["p99"] or float("nan")) for s in steps], "o-", label=f"SLAP {r['backend']}")
        ax2.plot(ns, [s["window"].busy_per_s or float("nan") for s in steps], "o-", label=f"SLAP {r['backend']}")
    b = sorted(result["baseline"]["steps"], key=lambda s: s["streams"])
    ax1.plot([s["streams"] for s in b], [1e3 * (s["end_to_end"]["p99"] or float("nan")) for s in b], "s--",
             label="YAMNet (in-process)")
    ax2.plot([s["streams"] for s in b], [s["busy_per_s"] for s in b], "s--", label="YAMNet (in-process)")
    ax1.axhline(1e3 * result["deadline_s"], color="red", lw=1, label="deadline")
    ax2.axhline(1.0, color="red", lw=1)
    for ax, ylabel in ((ax1, "p99 end-to-end latency (ms)"), (ax2, "engine load (busy s per wall s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent real-time streams")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"capacity: {result['context_s']:g} s context, {result['hop_s']:g} s hop, "
                 f"{result['threads']} threads, {result['machine']['cpus']} CPUs")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="main.py bench capacity", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="onnx only, a short ladder, shorter windows (~2 min)")
    p.add_argument("--backends", default=None, help="comma-separated: onnx, torch, tensorrt (default onnx,torch)")
    add_engine_args(p)
    p.add_argument("--measure", type=float, default=None, help="seconds measured per load (default 8, quick 4)")
    p.add_argument("--refine", type=int, default=2, help="bisection steps after the ladder")
    p.add_argument("--max-streams", type=int, default=64)
    p.add_argument("--max-baseline-streams", type=int, default=4096)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default runs/bench/capacity-<time>.json)")
    args = p.parse_args(argv)
    args.measure = args.measure or (4.0 if args.quick else 8.0)
    kinds = args.backends.split(",") if args.backends else (["onnx"] if args.quick else ["onnx", "torch"])
    progress = Progress("capacity")
    audio = bench_audio(args.cache_dir)
    from encoder.runtime import BackendError

    ours, skipped = [], {}
    for kind in kinds:
        try:
            ours.append(run_ours(kind, args, audio, progress))
        except RuntimeError as e:  # the engine would not start with this backend (BackendError is one)
            skipped[kind] = str(e).splitlines()[0]
            progress(f"{kind}: skipped ({skipped[kind]})")
    if not ours:
        print(f"bench capacity: no backend ran: {skipped}", file=sys.stderr)
        return 2
    progress("yamnet baseline")
    try:
        baseline = run_baseline(args, audio, progress)
    except BackendError as e:
        print(f"bench capacity: baseline: {e}", file=sys.stderr)
        return 2
    result = {"scenario": "capacity", "context_s": args.context, "hop_s": args.hop,
              "deadline_s": args.hop + DEADLINE_MARGIN_S, "threads": args.threads, "quick": args.quick,
              "audio": str(audio), "model": args.model, "machine": machine(), "ours": ours, "baseline": baseline,
              "skipped_backends": skipped}
    text = table(result)
    print(text)
    for path in write_outputs("capacity", result, text, figure(result), args.out):
        print(f"wrote {path}")
    return 0
