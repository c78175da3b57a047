"""ONNX -> TensorRT engine for the SLAP audio encoder, with the sidecar the runtime checks.

One optimisation profile spans batch 1..max_batch and 1 s..max_seconds of frames; the optimum
is at max_batch and opt_seconds (the engine's usual context). The sidecar `F.plan.json` records
what the plan is valid for: GPU name, TensorRT version, the ONNX file's hash and, from the
export manifest next to the ONNX, the model hash (see encoder.runtime.tensorrt_backend).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from encoder.runtime.base import MANIFEST_FILE, N_MELS, BackendError, file_hash
from encoder.runtime.tensorrt_backend import CudaMemory, engine_key, import_tensorrt, sidecar_path

FRAMES_PER_SECOND = 100  # = encoder.frontend.FRAMES_PER_SECOND (10 ms hop)
DEFAULT_MAX_SECONDS = 30.0  # the encoder's longest context when there is no manifest
MIN_SECONDS = 1.0  # the shortest context the engine feeds (shorter input is padded up to it)


class BuildError(RuntimeError):
    """An engine that could not be built; the message is one line."""


def profile_shapes(max_batch: int, max_seconds: float, opt_seconds: float, min_seconds: float = MIN_SECONDS) -> dict:
    """(min, opt, max) shapes of the two inputs."""
    lo, hi = int(round(min_seconds * FRAMES_PER_SECOND)), int(round(max_seconds * FRAMES_PER_SECOND))
    opt = min(max(int(round(opt_seconds * FRAMES_PER_SECOND)), lo), hi)
    if not 1 <= max_batch or not lo <= hi:
        raise BuildError(f"bad profile: max_batch {max_batch}, seconds {min_seconds}..{max_seconds}")
    return {
        "mel": [(1, N_MELS, lo), (max_batch, N_MELS, opt), (max_batch, N_MELS, hi)],
        "lengths": [(1,), (max_batch,), (max_batch,)],
    }


def build_engine(
    onnx: str | Path,
    out: str | Path,
    fp16: bool = False,
    max_batch: int = 32,
    max_seconds: float | None = None,
    opt_seconds: float = 10.0,
    timing_cache: str | Path | None = None,
    workspace_gib: float = 4.0,
) -> Path:
    """Build `out` (a .plan) and its sidecar from the audio encoder's ONNX; returns out.

    max_seconds defaults to the export manifest's max_seconds (else 30 s). Raises BackendError
    when TensorRT or a GPU is missing, BuildError when parsing or building fails."""
    onnx, out = Path(onnx), Path(out)
    if not onnx.is_file():
        raise BuildError(f"{onnx}: ONNX file not found")
    trt = import_tensorrt()
    gpu_name = CudaMemory().gpu_name
    manifest_path = onnx.parent / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if max_seconds is None:
        max_seconds = manifest.get("audio", {}).get("max_seconds", DEFAULT_MAX_SECONDS)
    shapes = profile_shapes(max_batch, max_seconds, opt_seconds)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{onnx}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        keep_norms_fp32(trt, network, config)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"{onnx}: TensorRT failed to build the engine (see the log above)")
    build_s = time.perf_counter() - t0

    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, bytes(plan))
    if cache_path is not None:
        _atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    onnx_hash = manifest.get("audio", {}).get("sha256") or file_hash(onnx)
    sidecar = {
        "key": engine_key(gpu_name, trt.__version__, onnx_hash),
        "gpu_name": gpu_name,
        "tensorrt_version": trt.__version__,
        "onnx_hash": onnx_hash,
        "onnx_file": str(onnx.resolve()),
        "model_hash": manifest.get("model_hash"),
        "precision": "fp16" if fp16 else "fp32",
        "profile": {name: {"min": lo, "opt": opt, "max": hi} for name, (lo, opt, hi) in shapes.items()},
        "max_batch": max_batch,
        "max_seconds": max_seconds,
        "build_seconds": round(build_s, 1),
    }
    _atomic_write(sidecar_path(out), (json.dumps(sidecar, indent=2) + "\n").encode())
    return out


def keep_norms_fp32(trt, network, config) -> int:
    """Ask for fp32 in the RMSNorm/LayerNorm arithmetic (sum of squares, mean, rsqrt) of an fp16
    engine: x^2 overflows fp16 once |x| > 256. Layers are found by the ONNX node names the
    exporter writes ("/blocks.0/norm1/Pow"). Returns how many layers were constrained."""
    kinds = (trt.LayerType.ELEMENTWISE, trt.LayerType.REDUCE, trt.LayerType.UNARY)
    n = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if "norm" not in layer.name.lower() or layer.type not in kinds:
            continue
        if layer.get_output(0).dtype not in (trt.float32, trt.float16):
            continue
        layer.precision = trt.float32
        layer.set_output_type(0, trt.float32)
        n += 1
    if n:
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return n


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


__all__ = ["BackendError", "BuildError", "build_engine", "profile_shapes"]
