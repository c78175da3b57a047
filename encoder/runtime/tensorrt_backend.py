"""TensorRT 10 backend for the audio encoder; the text tower stays on ONNX Runtime (prompts are
embedded once per change, not per frame).

An engine `F.plan` is only used with its sidecar `F.plan.json` (written by `python -m trt_build`),
and only when the sidecar's GPU name, TensorRT version, ONNX hash and model hash all match what
is here: a plan built elsewhere can fail to load or, worse, load and be wrong.

tensorrt and the CUDA helper are imported when the backend is created; without them, or
without a GPU, the constructor raises a one-line BackendError (open_backend then falls back
to ONNX Runtime with a warning).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from encoder.runtime.base import AUDIO_ONNX, BackendError, check_inputs, read_manifest
from encoder.runtime.onnx_backend import OnnxTextTower, select_providers

SIDECAR_FIELDS = ("gpu_name", "tensorrt_version", "onnx_hash", "model_hash")  # all must match
INPUTS = ("mel", "lengths")
OUTPUTS = ("columns", "column_valid", "global_emb")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendError("TensorRT is not installed (pip install -e '.[gpu]' on a machine with an NVIDIA GPU)") from None
    return trt


def sidecar_path(plan: str | Path) -> Path:
    """F.plan -> F.plan.json"""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def engine_key(gpu_name: str, tensorrt_version: str, onnx_hash: str) -> str:
    """What an engine is valid for: one GPU model, one TensorRT version, one ONNX file."""
    return f"{gpu_name} | TensorRT {tensorrt_version} | onnx {onnx_hash}"


def check_sidecar(plan: str | Path, expected: dict[str, str]) -> dict:
    """The sidecar of `plan` when it matches `expected` (the SIDECAR_FIELDS); else BackendError
    naming the first field that differs."""
    plan = Path(plan)
    if not plan.is_file():
        raise BackendError(f"{plan}: TensorRT engine not found")
    side = sidecar_path(plan)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise BackendError(f"{side}: engine sidecar not found; rebuild the engine with `python -m trt_build`") from None
    except (OSError, json.JSONDecodeError) as e:
        raise BackendError(f"{side}: unreadable engine sidecar ({e})") from None
    for field in SIDECAR_FIELDS:
        if meta.get(field) != expected[field]:
            raise BackendError(
                f"{plan}: built for {field} {meta.get(field)!r}, here it is {expected[field]!r}; "
                f"rebuild with `python -m trt_build --onnx <export>/{AUDIO_ONNX} --out {plan}`"
            )
    return meta


def pick_engine(export_dir: Path, expected: dict[str, str]) -> tuple[Path, dict]:
    """The matching *.plan in export_dir (fp16 first), or BackendError with the first mismatch."""
    plans = sorted(export_dir.glob("*.plan"))
    if not plans:
        raise BackendError(
            f"no TensorRT engine (*.plan) in {export_dir}; build one with "
            f"`python -m trt_build --onnx {export_dir / AUDIO_ONNX} --out {export_dir / 'audio_encoder.plan'}`"
        )
    matches, errors = [], []
    for plan in plans:
        try:
            matches.append((plan, check_sidecar(plan, expected)))
        except BackendError as e:
            errors.append(str(e))
    if not matches:
        raise BackendError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return sorted(matches, key=lambda m: m[1].get("precision") != "fp16")[0]


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


class CudaMemory:
    """Device buffers, host<->device copies and one stream, through cuda-python when it is
    installed, else torch.cuda. Raises BackendError when neither can reach a GPU."""

    def __init__(self, device: int = 0):
        self._cudart = _import_cudart()
        self._tensors: dict[int, object] = {}  # pointer -> the torch tensor that owns it (None: cudaMalloc)
        if self._cudart is not None:
            rt = self._cudart
            if self._call(rt.cudaGetDeviceCount(), "no CUDA GPU visible") < 1:
                raise BackendError("no CUDA GPU visible")
            self._call(rt.cudaSetDevice(device))
            self.stream = self._call(rt.cudaStreamCreate())
            name = self._call(rt.cudaGetDeviceProperties(device)).name
            self.gpu_name = (name.decode(errors="ignore") if isinstance(name, bytes) else str(name)).split("\x00")[0]
            return
        try:
            import torch
        except ImportError:
            raise BackendError("no CUDA helper: pip install cuda-python (or torch with CUDA)") from None
        if not torch.cuda.is_available():
            raise BackendError("no CUDA GPU visible")
        self._torch = torch
        self._device = torch.device("cuda", device)
        self.stream = torch.cuda.Stream(self._device)
        self.gpu_name = torch.cuda.get_device_name(self._device)

    def _call(self, result, what: str = "CUDA call failed"):
        err, *rest = result
        if err != self._cudart.cudaError_t.cudaSuccess:
            raise BackendError(f"{what} ({getattr(err, 'name', err)})")
        return rest[0] if len(rest) == 1 else rest

    @property
    def stream_handle(self) -> int:
        return int(self.stream) if self._cudart is not None else self.stream.cuda_stream

    def alloc(self, nbytes: int) -> int:
        if self._cudart is not None:
            ptr = int(self._call(self._cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc failed"))
            self._tensors[ptr] = None
            return ptr
        t = self._torch.empty(max(nbytes, 1), dtype=self._torch.uint8, device=self._device)
        self._tensors[t.data_ptr()] = t
        return t.data_ptr()

    def h2d(self, ptr: int, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        if self._cudart is not None:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            self._call(self._cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream))
            return
        with self._torch.cuda.stream(self.stream):
            src = self._torch.from_numpy(host.reshape(-1).view(np.uint8))
            self._tensors[ptr][: host.nbytes].copy_(src)

    def d2h(self, host: np.ndarray, ptr: int) -> None:
        """host: a C-contiguous array to fill; valid after sync()."""
        if self._cudart is not None:
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            self._call(self._cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream))
            return
        self.stream.synchronize()
        self._torch.from_numpy(host.reshape(-1).view(np.uint8)).copy_(self._tensors[ptr][: host.nbytes])

    def sync(self) -> None:
        if self._cudart is not None:
            self._call(self._cudart.cudaStreamSynchronize(self.stream))
        else:
            self.stream.synchronize()

    def close(self) -> None:
        if self._cudart is not None:
            for ptr in list(self._tensors):
                self._cudart.cudaFree(ptr)
        self._tensors.clear()


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, export_dir: str | Path, engine_path: str | Path | None = None, threads: int | None = None):
        export_dir = Path(export_dir)
        manifest = read_manifest(export_dir)
        trt = import_tensorrt()
        self.cuda = CudaMemory()
        expected = {
            "gpu_name": self.cuda.gpu_name,
            "tensorrt_version": trt.__version__,
            "onnx_hash": manifest["audio"]["sha256"],
            "model_hash": manifest["model_hash"],
        }
        if engine_path is None:
            self.plan, self.meta = pick_engine(export_dir, expected)
        else:
            self.plan, self.meta = Path(engine_path), check_sidecar(engine_path, expected)
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            raise BackendError(f"{self.plan}: TensorRT could not deserialise the engine")
        self.context = self.engine.create_execution_context()
        lo, _, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape("mel", 0))
        self.max_batch, self.min_frames, self.max_frames = hi[0], lo[2], hi[2]
        # One buffer per tensor, sized for the profile's largest shapes, bound once.
        self.context.set_input_shape("mel", hi)
        self.context.set_input_shape("lengths", (hi[0],))
        self._buffers: dict[str, tuple[int, np.dtype]] = {}
        for name in INPUTS + OUTPUTS:
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            ptr = self.cuda.alloc(int(np.prod(tuple(self.context.get_tensor_shape(name)))) * dtype.itemsize)
            self.context.set_tensor_address(name, ptr)
            self._buffers[name] = (ptr, dtype)
        self.manifest, self.export_dir, self.threads = manifest, export_dir, threads
        self.text = OnnxTextTower(export_dir, manifest, threads, select_providers("auto"))

    def _run(self, mel: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        self.context.set_input_shape("mel", mel.shape)
        self.context.set_input_shape("lengths", lengths.shape)
        self.cuda.h2d(self._buffers["mel"][0], mel)
        self.cuda.h2d(self._buffers["lengths"][0], lengths.astype(self._buffers["lengths"][1]))
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise BackendError(f"{self.plan}: TensorRT execution failed")
        outs = []
        for name in OUTPUTS:
            ptr, dtype = self._buffers[name]
            out = np.empty(tuple(self.context.get_tensor_shape(name)), dtype)
            self.cuda.d2h(out, ptr)
            outs.append(out)
        self.cuda.sync()
        return outs

    def encode(self, mel: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mel, lengths = check_inputs(mel, lengths)
        B, _, T = mel.shape
        if T > self.max_frames:
            raise ValueError(f"mel: {T} frames exceed the engine's profile ({self.max_frames}); rebuild with a larger --max-seconds")
        n_columns = T // self.manifest["audio"]["patch_frames"]
        if T < self.min_frames:  # pad up to the profile: frames past `lengths` are masked out
            mel = np.pad(mel, ((0, 0), (0, 0), (0, self.min_frames - T)))
        parts = [self._run(mel[i : i + self.max_batch], lengths[i : i + self.max_batch]) for i in range(0, B, self.max_batch)]
        columns, column_valid, global_emb = (np.concatenate(p) for p in zip(*parts))
        columns = np.ascontiguousarray(columns[:, :n_columns], dtype=np.float32)  # (B, C, E)
        return columns, np.ascontiguousarray(column_valid[:, :n_columns]), global_emb.astype(np.float32, copy=False)

    def embed_text(self, prompts: list[str]) -> np.ndarray:
        return self.text(prompts)

    def info(self) -> dict:
        return {
            "backend": self.name,
            "model_hash": self.manifest["model_hash"],
            "engine": str(self.plan),
            "gpu": self.cuda.gpu_name,
            "tensorrt": self.meta.get("tensorrt_version"),
            "precision": self.meta.get("precision"),
            "max_batch": self.max_batch,
            "frames": [self.min_frames, self.max_frames],
            "text_providers": self.text.session.get_providers(),
            "threads": self.threads,
        }

    def close(self) -> None:
        self.cuda.close()
