"""Runtime backends for the SLAP encoder: the engine's hot path, without PyTorch.

    backend = open_backend("auto", "runs/slap-tiny/model.safetensors", cache_dir="cache", threads=4)
    columns, column_valid, global_emb = backend.encode(mel, lengths)   # (B,C,E), (B,C), (B,E)
    prompts = backend.embed_text(["a dog barking", "glass breaking"])   # (P, E)

Kinds: "onnx" (ONNX Runtime, CPU or CUDA provider), "tensorrt" (a prebuilt engine, see
`trt_build`), "torch" (the reference) and "auto": TensorRT when a GPU and a matching engine are
here, else ONNX Runtime. The ONNX export is made on first use and cached by the weights' hash.
Importing this package imports neither torch nor tensorrt.
"""

from __future__ import annotations

import logging
from pathlib import Path

from encoder.runtime.base import Backend, BackendError, find_export, read_manifest, resolve_model

__all__ = ["Backend", "BackendError", "KINDS", "ensure_export", "open_backend", "read_manifest", "resolve_model"]

KINDS = ("auto", "torch", "onnx", "tensorrt")
log = logging.getLogger(__name__)


def ensure_export(model_file: Path, cache_dir: str | Path) -> Path:
    """The cached ONNX export of model_file, exporting it first if there is none (imports torch)."""
    export_dir = find_export(model_file, cache_dir)
    if export_dir is not None:
        return export_dir
    log.info("no ONNX export of %s in %s: exporting it (first use)", model_file, cache_dir)
    from encoder.checkpoint import CheckpointError
    from encoder.export import ExportError, export_cached

    try:
        return export_cached(model_file, cache_dir)
    except (CheckpointError, ExportError) as e:
        raise BackendError(str(e)) from None


def open_backend(
    kind: str = "auto",
    model_path: str | Path = "slap-tiny",
    cache_dir: str | Path = "cache",
    threads: int | None = None,
    *,
    engine: str | Path | None = None,
    device: str = "cpu",
    precision: str = "fp32",
) -> Backend:
    """Open a backend for a weights file (or a config name: seeded random weights).

    threads: intra-op threads (None: the library's default). engine: a TensorRT plan to use
    instead of the *.plan files in the export directory. device: ONNX Runtime's provider,
    "cpu", "cuda" or "auto". A TensorRT engine that cannot be used (no tensorrt, no GPU, no
    engine, or one built for another GPU, TensorRT version or model) makes "tensorrt" and
    "auto" fall back to ONNX Runtime with a warning. Raises BackendError (one line) for an
    unknown kind or a missing or unusable model file. precision: the incremental encoder's
    weights on ONNX Runtime, "fp32" or "int8" (torch and TensorRT run fp32 / their own)."""
    if kind not in KINDS:
        raise BackendError(f"backend must be one of {', '.join(KINDS)}, got {kind!r}")
    model_file = resolve_model(model_path, cache_dir)
    if kind == "torch":
        from encoder.checkpoint import CheckpointError
        from encoder.runtime.torch_backend import TorchBackend

        try:
            backend = TorchBackend(model_file, threads)
        except CheckpointError as e:
            raise BackendError(str(e)) from None
        log.info("backend torch: %s", backend.info())
        return backend

    export_dir = ensure_export(model_file, cache_dir)
    plans = [Path(engine)] if engine is not None else sorted(export_dir.glob("*.plan"))
    if kind == "auto" and not plans:
        log.info("backend auto: no TensorRT engine in %s, using onnxruntime", export_dir)
    elif kind in ("auto", "tensorrt"):
        try:
            from encoder.runtime.tensorrt_backend import TensorRTBackend

            backend = TensorRTBackend(export_dir, engine, threads)
            log.info("backend %s: tensorrt %s", kind, backend.info())
            return backend
        except BackendError as e:
            log.warning("backend %s: TensorRT unusable (%s); falling back to onnxruntime", kind, e)

    from encoder.runtime.onnx_backend import OnnxBackend

    backend = OnnxBackend(export_dir, threads, device, precision=precision)
    log.info("backend %s: onnxruntime %s", kind, backend.info())
    return backend
