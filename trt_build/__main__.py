"""python -m trt_build --onnx F --out F.plan [--fp16] [--max-batch B] [--max-seconds S] [--timing-cache F]

Builds a TensorRT engine for the SLAP audio encoder (see trt_build/build.py). Exit 2 with one
line on stderr when TensorRT or a GPU is missing or the build fails."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trt_build", description="ONNX -> TensorRT engine (+ sidecar JSON)")
    p.add_argument("--onnx", required=True, type=Path, help="audio_encoder.onnx from `python main.py export`")
    p.add_argument("--out", required=True, type=Path, help="engine file to write (F.plan; sidecar F.plan.json)")
    p.add_argument("--fp16", action="store_true", help="allow fp16 kernels")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-seconds", type=float, default=None, help="longest context (default: the manifest's)")
    p.add_argument("--opt-seconds", type=float, default=10.0, help="context the kernels are tuned for")
    p.add_argument("--timing-cache", type=Path, default=None, help="read and update this timing cache")
    args = p.parse_args(argv)

    from trt_build.build import BackendError, BuildError, build_engine

    try:
        out = build_engine(args.onnx, args.out, args.fp16, args.max_batch, args.max_seconds, args.opt_seconds,
                           args.timing_cache)
    except (BackendError, BuildError) as e:
        print(f"trt_build: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} and {out.name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
