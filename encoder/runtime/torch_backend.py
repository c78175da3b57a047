"""PyTorch backend: the reference the exported backends are checked against. Not for the engine's
hot path; torch is imported when the backend is created, not when this module is."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from encoder.runtime.base import check_inputs, file_hash


class TorchBackend:
    name = "torch"

    def __init__(self, model_file: str | Path, threads: int | None = None):
        import torch

        from encoder.checkpoint import load_model

        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
        self._torch = torch
        self.model_file, self.threads = Path(model_file), threads
        self.model = load_model(model_file)  # float32, eval mode
        self.model_hash = file_hash(model_file)
        from encoder.export import cache_spec

        self.cache_spec = cache_spec(self.model)
        self._incremental = None

    def encode(self, mel: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mel, lengths = check_inputs(mel, lengths)
        with self._torch.inference_mode():
            out = self.model.audio(self._torch.from_numpy(mel), self._torch.from_numpy(lengths))
        return out.columns.numpy(), out.column_valid.numpy(), out.global_emb.numpy()

    def incremental(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """One hop of encoder.incremental.IncrementalEncoder (the reference of the exported graph)."""
        t = self._torch
        if self._incremental is None:
            from encoder.incremental import IncrementalEncoder

            self._incremental = IncrementalEncoder(self.model.audio).eval()
        with t.inference_mode():
            out = self._incremental(*(t.from_numpy(np.array(a)) for a in inputs))
        return tuple(o.numpy() for o in out)

    def embed_text(self, prompts: list[str]) -> np.ndarray:
        if isinstance(prompts, str):
            raise TypeError("prompts: expected a list of strings, got one str")
        with self._torch.inference_mode():
            return self.model.text(*self.model.text.tokenize(list(prompts))).numpy()

    def info(self) -> dict:
        return {
            "backend": self.name,
            "model_hash": self.model_hash,
            "model_file": str(self.model_file),
            "device": "cpu",
            "threads": self._torch.get_num_threads(),
            "precision": "fp32",
        }
