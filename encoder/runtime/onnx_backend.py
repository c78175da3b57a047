"""ONNX Runtime backend (CPU, or the CUDA provider when onnxruntime-gpu is installed).

Imports numpy, onnxruntime and tokenizers only: never torch (tests/test_export.py checks this
in a fresh interpreter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encoder.runtime.base import BackendError, PromptTokenizer, check_inputs, read_manifest
from encoder.runtime.stream_cache import CacheSpec

# the incremental graph's inputs and outputs, in encoder/incremental.py's order
INCREMENTAL_INPUTS = ("mel", "new_valid", "rope_cos", "rope_sin", "past_local", "local_valid", "past_global",
                      "global_valid")
INCREMENTAL_OUTPUTS = ["columns", "global_emb", "new_local", "new_global"]

PRECISIONS = ("fp32", "int8")
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def session_options(threads: int | None, spin: bool = False):
    """ORT options shared by our sessions and the YAMNet baseline.

    spin=False stops idle intra-op threads from busy-waiting between runs: the engine calls the
    encoder once per hop and shares the cores with capture and the front end, and on a loaded
    machine spinning threads slow everything else down (and, measured here, ORT itself)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1  # one op at a time: intra-op threads are the parallelism
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


def _session(path: Path, threads: int | None, providers: list[str], spin: bool = False):
    import onnxruntime as ort

    opts = session_options(threads, spin)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own types for a missing or corrupt file
        raise BackendError(f"{path}: cannot open with onnxruntime ({str(e).splitlines()[0]})") from None


def select_providers(device: str) -> list[str]:
    """device "cpu" | "cuda" | "auto" (CUDA when onnxruntime-gpu sees a GPU) -> ORT providers."""
    import onnxruntime as ort

    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    if device not in PROVIDERS:
        raise BackendError(f"onnx device must be cpu, cuda or auto, got {device!r}")
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendError("onnxruntime has no CUDA provider here; pip install -e '.[gpu]' (onnxruntime-gpu)")
    return PROVIDERS[device]


class OnnxTextTower:
    """The exported text tower and its tokenizer: prompts -> (P, E) float32. Shared with the
    TensorRT backend, whose text tower stays on ONNX Runtime (prompts change rarely)."""

    def __init__(self, export_dir: Path, manifest: dict, threads: int | None, providers: list[str], spin: bool = False):
        self.tokenize = PromptTokenizer.from_manifest(export_dir, manifest)
        self.session = _session(export_dir / manifest["text"]["file"], threads, providers, spin)

    def __call__(self, prompts: list[str]) -> np.ndarray:
        ids, mask = self.tokenize(prompts)
        return self.session.run(["text_emb"], {"ids": ids, "mask": mask})[0]


class OnnxBackend:
    name = "onnx"

    def __init__(self, export_dir: str | Path, threads: int | None = None, device: str = "cpu", spin: bool = False,
                 precision: str = "fp32"):
        """precision applies to the incremental encoder: "fp32" or "int8" (the full-window
        encoder is always fp32: it serves evaluation and the TensorRT build)."""
        export_dir = Path(export_dir)
        self.manifest = read_manifest(export_dir)
        if precision not in PRECISIONS:
            raise BackendError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.export_dir, self.threads, self.spin, self.precision = export_dir, threads, spin, precision
        self.providers = select_providers(device)
        self.audio = _session(export_dir / self.manifest["audio"]["file"], threads, self.providers, spin)
        inc = self.manifest["incremental"]
        self._incremental = None  # opened on first use: an evaluation of the full window never pays for it
        self._incremental_file = export_dir / inc["file" if precision == "fp32" else "int8_file"]
        self.cache_spec = CacheSpec.from_manifest(inc)
        self.text = OnnxTextTower(export_dir, self.manifest, threads, self.providers, spin)
        self._outputs = list(self.manifest["audio"]["outputs"])  # columns, column_valid, global_emb

    def encode(self, mel: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mel, lengths = check_inputs(mel, lengths)
        columns, column_valid, global_emb = self.audio.run(self._outputs, {"mel": mel, "lengths": lengths})
        return columns, column_valid, global_emb

    def incremental(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """One hop of the incremental encoder: inputs and outputs in encoder/incremental.py's order;
        encoder.runtime.stream_cache.encode_new_columns does the per-stream bookkeeping."""
        if self._incremental is None:
            self._incremental = _session(self._incremental_file, self.threads, self.providers, self.spin)
        feeds = dict(zip(INCREMENTAL_INPUTS, inputs))
        return tuple(self._incremental.run(INCREMENTAL_OUTPUTS, feeds))

    def embed_text(self, prompts: list[str]) -> np.ndarray:
        return self.text(prompts)

    def info(self) -> dict:
        return {
            "backend": self.name,
            "model_hash": self.manifest["model_hash"],
            "export_dir": str(self.export_dir),
            "providers": self.audio.get_providers(),
            "threads": self.threads,
            "spin": self.spin,
            "precision": self.precision,
        }
