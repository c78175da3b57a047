"""Encoder speed: latency per call and throughput for each backend, against YAMNet, in one run.

    python main.py bench encoder [--quick] [--model slap-tiny] [--threads 4] [--out runs/bench/encoder.json]

For each context length (1/5/10/30 s) and batch (1/8/32 streams), one call encodes `batch`
contexts of `seconds` each. Throughput is stream-seconds encoded per wall second
(batch * seconds / latency). YAMNet runs on the same audio, with the same intra-op thread
count, as back-to-back 0.96 s patches covering the same seconds, one patch per call (its ONNX
input is fixed at batch 1): its "call" is all the patches of the batch. Front ends are computed
before timing for both (their cost is reported separately, per second of audio); the ratio
column is our throughput over YAMNet's on the same row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from encoder.frontend import FRAMES_PER_SECOND, SAMPLE_RATE, log_mel

CONTEXTS_S = (1, 5, 10, 30)
BATCHES = (1, 8, 32)
QUICK_CONTEXTS_S = (1, 10)
QUICK_BATCHES = (1, 8)
BACKENDS = ("torch", "onnx", "tensorrt")


@dataclass
class Point:
    backend: str
    seconds: float  # context per stream
    batch: int  # streams per call
    calls: int
    latency_ms: float  # median
    latency_p90_ms: float
    throughput: float  # stream-seconds encoded per wall second


def synth_audio(n_streams: int, seconds: float, seed: int = 0) -> np.ndarray:
    """(n_streams, seconds * 16000) float32: a tone, noise and clicks per stream, a little different each."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    out = np.empty((n_streams, t.size), np.float32)
    for i in range(n_streams):
        tone = 0.2 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
        clicks = (rng.random(t.size) < 2e-4) * rng.uniform(-0.8, 0.8, t.size)
        out[i] = tone + 0.05 * rng.standard_normal(t.size) + clicks
    return out


def time_calls(fn, min_time: float, min_calls: int = 3, max_calls: int = 200) -> list[float]:
    """Wall seconds of repeated fn() calls after one warm-up call."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or (time.perf_counter() - start < min_time and len(times) < max_calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summarise(name: str, seconds: float, batch: int, times: list[float]) -> Point:
    median = statistics.median(times)
    p90 = float(np.quantile(times, 0.9))
    return Point(name, seconds, batch, len(times), 1e3 * median, 1e3 * p90, batch * seconds / median)


def open_backends(kinds: list[str], model: str, cache_dir: Path, threads: int) -> tuple[dict, dict[str, str]]:
    """The backends that can run here; the others with the one-line reason."""
    from encoder.runtime import BackendError, ensure_export, open_backend, resolve_model

    opened, skipped = {}, {}
    for kind in kinds:
        try:
            if kind == "tensorrt":  # not open_backend: it would fall back to onnx, timed twice
                from encoder.runtime.tensorrt_backend import TensorRTBackend

                opened[kind] = TensorRTBackend(ensure_export(resolve_model(model, cache_dir), cache_dir), threads=threads)
            else:
                opened[kind] = open_backend(kind, model, cache_dir, threads)
        except BackendError as e:
            skipped[kind] = str(e)
    return opened, skipped


def frontend_ms_per_second(audio: np.ndarray, fn) -> float:
    times = time_calls(lambda: fn(audio), min_time=0.2)
    return 1e3 * statistics.median(times) / (audio.size / SAMPLE_RATE)


def run(args: argparse.Namespace) -> dict:
    from benchmarks.yamnet_baseline import YamNetBaseline, patches_covering

    contexts = args.seconds or (QUICK_CONTEXTS_S if args.quick else CONTEXTS_S)
    batches = args.batches or (QUICK_BATCHES if args.quick else BATCHES)
    kinds = args.backends.split(",") if args.backends else list(BACKENDS)
    min_time = args.min_time if args.min_time is not None else (0.3 if args.quick else 1.0)
    backends, skipped = open_backends(kinds, args.model, args.cache_dir, args.threads)
    yamnet = YamNetBaseline(args.cache_dir, args.threads)

    points: list[Point] = []
    for seconds in contexts:
        for batch in batches:
            audio = synth_audio(batch, seconds)
            mel = np.stack([log_mel(a) for a in audio])  # (B, 64, T)
            lengths = np.full(batch, mel.shape[-1], np.int64)
            for name, backend in backends.items():
                times = time_calls(lambda b=backend, m=mel, n=lengths: b.encode(m, n), min_time)
                points.append(summarise(name, seconds, batch, times))
            patches = np.concatenate([patches_covering(a) for a in audio])  # (B * P, 1, 96, 64)
            points.append(summarise("yamnet", seconds, batch, time_calls(lambda p=patches: yamnet.run(p), min_time)))
            print(f"  {seconds:>4} s x {batch:>2}: done", file=sys.stderr, flush=True)

    one_second = synth_audio(1, 10.0)[0]
    return {
        "points": [asdict(p) for p in points],
        "skipped": skipped,
        "backends": {name: b.info() for name, b in backends.items()},
        "yamnet": {"model": str(yamnet.model_file), "patch_seconds": 0.96, "patch_hop_seconds": 0.96},
        "frontend_ms_per_audio_second": {
            "slap_log_mel": frontend_ms_per_second(one_second, log_mel),
            "yamnet_patches": frontend_ms_per_second(one_second, patches_covering),
        },
        "threads": args.threads,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "frames_per_second": FRAMES_PER_SECOND,
        "quick": args.quick,
    }


def table(result: dict) -> str:
    """One row per (backend, context, batch) with the YAMNet row of the same context and batch."""
    pts = result["points"]
    yam = {(p["seconds"], p["batch"]): p for p in pts if p["backend"] == "yamnet"}
    head = (f"{'backend':9s} {'ctx s':>5s} {'batch':>5s} {'lat ms':>9s} {'p90 ms':>9s} {'stream-s/s':>11s} "
            f"{'yamnet ms':>10s} {'yamnet s/s':>11s} {'ratio':>7s}")
    lines = [head, "-" * len(head)]
    for p in pts:
        if p["backend"] == "yamnet":
            continue
        y = yam[(p["seconds"], p["batch"])]
        lines.append(
            f"{p['backend']:9s} {p['seconds']:>5g} {p['batch']:>5d} {p['latency_ms']:>9.2f} {p['latency_p90_ms']:>9.2f} "
            f"{p['throughput']:>11.1f} {y['latency_ms']:>10.2f} {y['throughput']:>11.1f} "
            f"{p['throughput'] / y['throughput']:>7.2f}"
        )
    fe = result["frontend_ms_per_audio_second"]
    lines.append(f"front ends (not in the timings above), ms per audio second: SLAP log-mel "
                 f"{fe['slap_log_mel']:.3f}, YAMNet patches {fe['yamnet_patches']:.3f}")
    lines += [f"skipped {k}: {v}" for k, v in result["skipped"].items()]
    lines.append(f"threads {result['threads']}, {result['machine']['cpus']} CPUs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="main.py bench encoder", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="slap-tiny", help="weights file or config name (random weights)")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="intra-op threads, all runtimes")
    p.add_argument("--backends", default=None, help=f"comma-separated subset of {','.join(BACKENDS)}")
    p.add_argument("--seconds", type=float, nargs="+", default=None, help="context lengths (s)")
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--min-time", type=float, default=None, help="seconds of timed calls per point")
    p.add_argument("--quick", action="store_true", help=f"contexts {QUICK_CONTEXTS_S} s, batches {QUICK_BATCHES}, shorter timing")
    p.add_argument("--out", type=Path, default=Path("runs/bench/encoder.json"))
    args = p.parse_args(argv)

    from encoder.runtime import BackendError

    try:
        result = run(args)
    except BackendError as e:
        print(f"bench encoder: {e}", file=sys.stderr)
        return 2
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
