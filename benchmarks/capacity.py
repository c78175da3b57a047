"""Capacity: the most real-time streams one engine holds, per variant, against YAMNet in the same run.

    python main.py bench capacity [--quick] [--variants onnx-window,onnx-fp32,onnx] [--soak-minutes 5]

A variant is BACKEND[-window][-fp32]: `onnx` is the engine's default (incremental encoder, int8),
`onnx-window` re-encodes the whole context every hop (the engine before the incremental encoder),
`onnx-fp32` the incremental encoder with fp32 weights (the default is int8), `-wait` lets due hops
wait up to 50 ms for others to share an encoder call (context.batch_wait_s; off by default);
torch and tensorrt likewise (they run fp32 whatever the flag).

N capture workers (`python -m streamer.capture file --realtime --loop --frame-ms F`, one process
per stream; F one hop, as `main.py` starts its own workers, unless --frame-ms says otherwise)
push the bench file to one engine process (benchmarks.engine_proc: the real engine with its
ZeroMQ sockets, event log and metrics endpoint). N steps up a ladder (1, 2, 4, ...) until a load is
not held, then bisects between the last held and the first failed N. A load is held when, over
the measurement window (after a warm-up that fills every new stream's context), the p99
end-to-end latency (capture of a window's newest sample -> its events published) is within the
deadline (hop + 150 ms), no hop was skipped, and the expected windows were served.

Sustained: after the ladder, the largest N held is soaked for --soak-minutes (one window: p99 end
to end <= hop + 150 ms, no hop skipped, engine busy < 0.9 s/s, RSS growth reported); if the soak
fails, N steps down by a quarter and soaks again (at most 4 times; a soak stops at its first
skipped hop, since it has failed then). YAMNet is soaked the same way.
GFLOP per stream-second: counted from the model's shapes (encoder_gflop), YAMNet's from its
published size (69.2 M multiply-adds per 0.96 s patch, one patch per hop).

Baseline: YAMNet (benchmarks.yamnet_stream) in this process with the same thread count, over
the same file and hop, each hop scoring the stream's newest 0.96 s patch; stepped the same way.
Where time goes: the engine's own stage timings at the largest N held, the CPU of the engine and
of the workers, and a cProfile of the engine thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
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
    worker_frame_ms,
    write_outputs,
    yamnet_streams,
)

LADDER = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256)
QUICK_LADDER = (1, 16, 64, 128, 160, 192)
BASELINE_LADDER = (1, 4, 16, 64, 256, 1024, 4096)
BUSY_LIMIT = 0.9  # engine seconds serving hops per wall second, for a sustained load
YAMNET_MACS_PER_PATCH = 69.2e6  # YAMNet (MobileNet v1 on 96x64 log-mel patches), per 0.96 s patch
SOAK_RETRIES = 4  # a soak stops at its first skipped hop, so a failed one is usually short
SOAK_CHECK_S = 10.0
BATCH_WAIT_S = 0.05  # the -wait variants' context.batch_wait_s


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str
    encoder: str  # incremental | window
    precision: str  # fp32 | int8
    batch_wait_s: float  # context.batch_wait_s

    @classmethod
    def parse(cls, text: str) -> Variant:
        backend, *flags = text.split("-")
        if backend not in ("onnx", "torch", "tensorrt") or not set(flags) <= {"window", "fp32", "wait"}:
            raise ValueError(f"--variants: {text!r}: expected BACKEND[-window][-fp32][-wait], "
                             "BACKEND onnx|torch|tensorrt")
        return cls(text, backend, "window" if "window" in flags else "incremental", "fp32" if "fp32" in flags else "int8",
                   BATCH_WAIT_S if "wait" in flags else 0.0)


def encoder_gflop(model: str, encoder: str, context_s: float, hop_s: float, cache_dir: Path) -> float:
    """GFLOP (2 x multiply-adds) per stream-second of the audio encoder, counted from its shapes:
    the linear layers per token, attention per (query, key) pair, the MAP head per hop.

    window: every hop encodes the whole context (C columns, 4C tokens, all pairs within reach);
    incremental: a hop encodes its new tokens only, each attending to the cached context."""
    from encoder.frontend import FRAMES_PER_SECOND, FREQ_PATCHES, PATCH_DIM, PATCH_FRAMES
    from encoder.slap import get_config

    name = model if not Path(model).suffix else None
    if name is None:
        from encoder.checkpoint import load_model

        cfg = load_model(model).cfg.audio
    else:
        cfg = get_config(name).audio
    D, L, F = cfg.width, cfg.depth, FREQ_PATCHES
    per_token = PATCH_DIM * D + L * (3 * D * D + D * D + 3 * D * cfg.mlp_hidden) + 2 * D * D + D * cfg.embed_dim / F
    C = int(context_s * FRAMES_PER_SECOND) // PATCH_FRAMES
    new = hop_s * FRAMES_PER_SECOND / PATCH_FRAMES  # columns per hop
    local_keys = F * (2 * (cfg.window_columns // 2) + 1)
    n_global = sum(1 for i in range(L) if not cfg.is_local(i))
    n_local = L - n_global
    if encoder == "window":
        queries, keys = F * C, F * C
        local = F * C * local_keys
    else:
        queries, keys = F * new, F * C
        local = F * new * (local_keys // 2 + F)  # left neighbours and its own column
    attn = 2 * D * (n_global * queries * keys + n_local * local)  # q.k and the weighted sum of v
    map_head = 2 * D * keys + 3 * D * cfg.mlp_hidden + 2 * D * D
    macs_per_hop = queries * per_token + attn + map_head
    return 2 * macs_per_hop / hop_s / 1e9


def yamnet_gflop(hop_s: float) -> float:
    return 2 * YAMNET_MACS_PER_PATCH / hop_s / 1e9


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


def run_ours(variant: Variant, args, audio: Path, progress: Progress) -> dict:
    deadline = args.hop + DEADLINE_MARGIN_S
    name = variant.name
    steps: list[dict] = []

    def fresh() -> tuple[EngineProcess, Workers]:
        progress(f"{name}: starting the engine")
        e = EngineProcess(variant.backend, model=args.model, threads=args.threads, context_s=args.context,
                          hop_s=args.hop, cache_dir=args.cache_dir, encoder=variant.encoder,
                          precision=variant.precision, batch_wait_s=variant.batch_wait_s).start()
        return e, Workers(e.ingest, audio, worker_frame_ms(args))

    engine, workers = fresh()

    def measure(n: int, seconds: float | None = None, soak: bool = False) -> dict:
        nonlocal engine, workers
        if steps and not steps[-1]["held"]:
            # an engine that fell behind keeps its backlog (queued frames, late hops) into the next
            # load: every load after a failure starts from a fresh engine and fresh workers
            workers.stop()
            engine.stop()
            engine, workers = fresh()
        workers.resize(n)
        progress.wait(args.context + 2.0, f"{name} N={n}: warm-up, every context filled")
        if soak:
            progress(f"{name} N={n}: soak, {seconds / 60:.1f} min")
        cpu0, t0, meter = workers.cpu_seconds(), time.monotonic(), CpuMeter()
        rss0 = engine.window(t0 - 1.0, t0).rss if soak else 0
        end = t0 + (seconds or args.measure)
        while (now := time.monotonic()) < end:  # a soak ends at its first skipped hop: it has failed
            time.sleep(min(SOAK_CHECK_S, end - now))
            if soak and engine.window(t0, time.monotonic()).skipped:
                progress(f"{name} N={n}: a hop was skipped after {time.monotonic() - t0:.0f} s, the soak has failed")
                break
        t1 = time.monotonic()
        meter.stop()
        workers_cpu = (workers.cpu_seconds() - cpu0) / (t1 - t0)
        w = engine.window(t0, t1)
        expected = n * (t1 - t0) / args.hop
        ok = held(w.end_to_end["p99"], w.skipped, w.windows, expected, deadline)
        step = {"streams": n, "held": ok and (not soak or (w.busy_per_s or 0) < BUSY_LIMIT), "soak": soak,
                "alive_workers": workers.alive(), "workers_cpu_per_s": workers_cpu, "host_cpu_per_s": meter.host_per_s,
                "other_cpu_per_s": meter.other_per_s((w.cpu_per_s or 0) + workers_cpu), "window": w,
                "rss_start": rss0, "rss_growth": (w.rss - rss0) / rss0 if soak and rss0 else None}
        steps.append(step)
        e = w.end_to_end
        progress(f"{name} N={n}{' soak' if soak else ''}: p50 {ms(e['p50'])} p99 {ms(e['p99'])} ms, "
                 f"busy {w.busy_per_s or 0:.2f} s/s, batch {w.batch_mean:.1f}, skipped {w.skipped}, "
                 f"RSS {w.rss / 2**20:.0f} MB -> {'held' if step['held'] else 'NOT held'}")
        return step

    try:
        best, fail = search(measure, QUICK_LADDER if args.quick else LADDER, 0 if args.quick else args.refine,
                            args.max_streams)
        minutes = args.soak_minutes if name in args.soak else 0.0
        sustained = soak(lambda n: measure(n, 60 * minutes, soak=True), best, minutes)
        profile = []
        if args.profile and best:
            workers.resize(best)
            progress.wait(5.0, f"{name} N={best}: settling before the profile")
            path = Path(args.cache_dir) / "bench" / f"capacity-{name}.pstats"
            progress(f"{name} N={best}: cProfile of the engine thread ({args.measure:.0f} s)")
            profile = engine.profile(args.measure, path)
    finally:
        workers.stop()
        engine.stop()
    return {"backend": name, "variant": variant.__dict__, "info": engine.ready.get("backend") if engine.ready else None,
            "largest_held": best, "smallest_failed": fail, "sustained": sustained, "steps": steps, "profile": profile,
            "gflop_per_stream_s": encoder_gflop(args.model, variant.encoder, args.context, args.hop, args.cache_dir)}


def soak(measure, best: int, minutes: float) -> int | None:
    """The largest N that holds a soak of `minutes`, from `best` down by a quarter per failure
    (SOAK_RETRIES times; 0 when none held); None when no soak was asked for."""
    if not minutes or not best:
        return None
    n = best
    for _ in range(SOAK_RETRIES + 1):
        if measure(n)["held"]:
            return n
        n = max(1, n * 3 // 4)
    return 0


def run_baseline(args, audio: Path, progress: Progress) -> dict:
    deadline = args.hop + DEADLINE_MARGIN_S
    sim = yamnet_streams(args.cache_dir, audio, args.threads, args.hop)
    seconds = 2.0 if args.quick else 4.0
    steps: list[dict] = []

    def measure(n: int, span: float | None = None, soak: bool = False) -> dict:
        meter = CpuMeter()
        if soak:
            progress(f"yamnet N={n}: soak, {span / 60:.1f} min")
        r = sim.run(n, span or seconds, stop_on_skip=soak)
        meter.stop()
        lat = percentiles(r["latencies"])
        ok = held(lat["p99"], r["skipped"], r["hops"], n * (span or seconds) / args.hop, deadline)
        step = {"streams": n, "held": ok and (not soak or r["busy"] / r["wall"] < BUSY_LIMIT), "soak": soak,
                "end_to_end": lat, "skipped": r["skipped"], "rtf": r["busy"] / (n * r["wall"]),
                "busy_per_s": r["busy"] / r["wall"], "host_cpu_per_s": meter.host_per_s,
                "other_cpu_per_s": meter.other_per_s()}
        steps.append(step)
        progress(f"yamnet N={n}{' soak' if soak else ''}: p50 {ms(lat['p50'])} p99 {ms(lat['p99'])} ms, "
                 f"busy {step['busy_per_s']:.2f} s/s, skipped {r['skipped']} -> {'held' if step['held'] else 'NOT held'}")
        return step

    best, fail = search(measure, BASELINE_LADDER, 2 if args.quick else 3, args.max_baseline_streams)
    sustained = soak(lambda n: measure(n, 60 * args.soak_minutes, soak=True), best, args.soak_minutes)
    return {"backend": "yamnet", "largest_held": best, "smallest_failed": fail, "sustained": sustained,
            "steps": steps, "context_s": sim.context / 16000, "gflop_per_stream_s": yamnet_gflop(args.hop)}


def table(result: dict) -> str:
    deadline = result["deadline_s"]
    head = (f"{'variant':14s} {'N':>5s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} {'batch':>6s} "
            f"{'enc ms':>7s} {'RTF':>6s} {'busy/s':>6s} {'CPU/s':>6s} {'wrk/s':>6s} {'other':>6s} {'skip':>5s} "
            f"{'RSS MB':>7s} {'held':>5s}")
    lines = [f"capacity: {result['context_s']:g} s context, {result['hop_s']:g} s hop, deadline p99 end to end "
             f"<= {1e3 * deadline:.0f} ms; {result['threads']} threads, {result['machine']['cpus']} CPUs",
             head, "-" * len(head)]
    for r in result["ours"]:
        for s in r["steps"]:
            w = s["window"]
            e = w.end_to_end
            label = r["backend"] + (" soak" if s.get("soak") else "")
            lines.append(f"{label:14s} {s['streams']:>5d} {ms(e['p50']):>7s} {ms(e['p95']):>7s} {ms(e['p99']):>7s} "
                         f"{w.batch_mean:>6.1f} {ms(w.encode['mean']):>7s} {w.rtf or 0:>6.3f} {w.busy_per_s or 0:>6.2f} "
                         f"{w.cpu_per_s or 0:>6.2f} "
                         f"{s['workers_cpu_per_s']:>6.2f} {s['other_cpu_per_s']:>6.2f} {w.skipped:>5d} "
                         f"{w.rss / 2**20:>7.0f} {'yes' if s['held'] else 'NO':>5s}")
    b = result["baseline"]
    for s in b["steps"]:
        e = s["end_to_end"]
        label = "yamnet" + (" soak" if s.get("soak") else "")
        lines.append(f"{label:14s} {s['streams']:>5d} {ms(e['p50']):>7s} {ms(e['p95']):>7s} {ms(e['p99']):>7s} "
                     f"{1:>6.1f} {'':>7s} {s['rtf']:>6.3f} {s['busy_per_s']:>6.2f} {'':>6s} {'':>6s} "
                     f"{s['other_cpu_per_s']:>6.2f} {s['skipped']:>5d} {'':>7s} "
                     f"{'yes' if s['held'] else 'NO':>5s}")
    lines.append("RTF: engine seconds per stream-second of audio; busy/s: engine seconds serving hops per wall "
                 "second (1.0: its thread saturated); CPU/s: engine process CPU (all threads); wrk/s: all workers' CPU; other: CPU s per s used by "
                 "processes outside the benchmark (another job competing for the cores)")
    lines.append("")
    soaked = b.get("sustained") is not None
    ref = b["sustained"] if soaked else b["largest_held"]
    what = f"sustained ({result['soak_minutes']:g} min soak)" if soaked else "held (burst, no soak)"
    lines.append(f"yamnet: {b['largest_held']} held in the ladder, {ref} {what}; {b['gflop_per_stream_s']:.2f} GFLOP "
                 f"per stream-second (baseline, in-process, {b['context_s']:.2f} s patch per hop)")
    for r in result["ours"]:
        mine = r.get("sustained") is not None
        n = r["sustained"] if mine else r["largest_held"]
        ratio = n / ref if ref else float("nan")
        met = n >= 64 and ratio >= 0.5
        lines.append(f"{r['backend']}: {r['largest_held']} held in the ladder (first failed: {r['smallest_failed']}), "
                     f"{n} {what if mine else 'held (burst, no soak)'}; ours/yamnet {ratio:.3f}; "
                     f"{r['gflop_per_stream_s']:.2f} GFLOP per stream-second; "
                     f"target >= 64 and >= 0.5 x yamnet: {'met' if met else 'MISSED'}")
        growth = [s for s in r["steps"] if s.get("soak") and s.get("rss_growth") is not None]
        if growth:
            s = growth[-1]
            lines.append(f"  soak at N={s['streams']}: engine RSS {s['rss_start'] / 2**20:.0f} -> "
                         f"{s['window'].rss / 2**20:.0f} MB ({100 * s['rss_growth']:+.1f} %), peak {s['window'].hwm / 2**20:.0f} MB")
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
    p.add_argument("--quick", action="store_true", help="the default variant only, a short ladder, no soak (~3 min)")
    p.add_argument("--variants", default=None,
                   help="comma-separated BACKEND[-window][-fp32] (default onnx-window,onnx-fp32,onnx; quick: onnx)")
    p.add_argument("--soak-minutes", type=float, default=None, help="soak of the largest N held (default 5, quick 0)")
    p.add_argument("--soak", default="onnx", help="comma-separated variants to soak (default: the engine's default, onnx)")
    add_engine_args(p)
    p.add_argument("--measure", type=float, default=None, help="seconds measured per load (default 8, quick 4)")
    p.add_argument("--refine", type=int, default=2, help="bisection steps after the ladder")
    p.add_argument("--max-streams", type=int, default=64)
    p.add_argument("--max-baseline-streams", type=int, default=4096)
    p.add_argument("--no-profile", dest="profile", action="store_false")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default runs/bench/capacity-<time>.json)")
    args = p.parse_args(argv)
    args.measure = args.measure or (4.0 if args.quick else 8.0)
    if args.soak_minutes is None:
        args.soak_minutes = 0.0 if args.quick else 5.0
    args.soak = set(args.soak.split(","))
    try:
        variants = [Variant.parse(v) for v in (args.variants or ("onnx" if args.quick else "onnx-window,onnx-fp32,onnx")).split(",")]
    except ValueError as e:
        p.error(str(e))
    progress = Progress("capacity")
    audio = bench_audio(args.cache_dir)
    from encoder.runtime import BackendError

    ours, skipped = [], {}
    for v in variants:
        try:
            ours.append(run_ours(v, args, audio, progress))
        except RuntimeError as e:  # the engine would not start with this backend (BackendError is one)
            skipped[v.name] = str(e).splitlines()[0]
            progress(f"{v.name}: skipped ({skipped[v.name]})")
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
              "soak_minutes": args.soak_minutes, "busy_limit": BUSY_LIMIT,
              "audio": str(audio), "model": args.model, "machine": machine(), "ours": ours, "baseline": baseline,
              "skipped_backends": skipped}
    text = table(result)
    print(text)
    for path in write_outputs("capacity", result, text, figure(result), args.out):
        print(f"wrote {path}")
    return 0
