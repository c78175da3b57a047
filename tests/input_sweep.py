"""The audio inputs a user has, made on the spot (numpy, soundfile, ffmpeg), each with what every
path that reads files (`main.py tag`, `tag --scores`, the file source) must do with it:

- "scored": a score line (the clip padded to one 160 ms column when it is shorter);
- "refused": one error line naming the file and `reason`, and the next file goes on;
- "partial": decoding stops part way (a truncated FLAC): the audio before it is scored, and an
  error line says where it stopped.

The list runs in this order, good and bad inputs mixed, so the files after each bad one show
that the batch goes on. Used by tests/test_tag_inputs.py and tests/test_file_source_inputs.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

HAVE_FFMPEG = shutil.which("ffmpeg") is not None


@dataclass(frozen=True)
class Input:
    name: str  # file name in the sweep directory
    outcome: str  # "scored" | "refused" | "partial"
    make: Callable[[Path], None]  # writes the input at a path
    reason: str = ""  # a piece of the error line ("refused", "partial")
    vanishes: bool = False  # made, then deleted once the batch is under way

    @property
    def stream(self) -> str:
        """A stream id for it: [A-Za-z0-9_-] only."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", self.name)


def noise(seconds: float, rate: int = 16000, channels: int = 1, level: float = 0.3, seed: int = 0) -> np.ndarray:
    """(n, channels) float32 noise with a 440 Hz tone in it; n >= 1 for any seconds > 0."""
    n = max(1, round(seconds * rate))
    rng = np.random.default_rng(seed)
    tone = np.sin(2 * np.pi * 440 * np.arange(n) / rate)[:, None]
    return (level * (0.5 * tone + 0.5 * rng.standard_normal((n, channels)))).astype(np.float32)


def written(data: np.ndarray, rate: int, subtype: str, fmt: str | None = None) -> Callable[[Path], None]:
    return lambda path: sf.write(path, data, rate, subtype=subtype, format=fmt)


def with_nan(path: Path) -> None:
    x = noise(0.5)
    x[100], x[2000], x[4000] = np.nan, np.inf, -np.inf
    sf.write(path, x, 16000, subtype="FLOAT")


def square_full_scale(path: Path) -> None:
    period = 16000 // 200  # 200 Hz, every sample at +-full scale
    x = np.where(np.arange(8000) % period < period // 2, 32767, -32768).astype(np.int16)
    sf.write(path, x, 16000, subtype="PCM_16")


def truncated_flac(path: Path) -> None:
    full = path.with_suffix(".full.flac")
    sf.write(full, noise(2.0), 16000, subtype="PCM_16")
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])


def by_ffmpeg(*codec: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        src = path.with_suffix(".src.wav")
        sf.write(src, noise(0.6, 44100, 2), 44100, subtype="PCM_16")
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), *codec, str(path)], check=True)
        src.unlink()
    return make


def rate(hz: int) -> Input:
    return Input(f"rate_{hz}.wav", "scored", written(noise(0.3, hz), hz, "PCM_16"))


INPUTS: list[Input] = [
    Input("one_sample.wav", "scored", written(np.array([0.5], np.float32), 16000, "PCM_16")),
    Input("zero_samples.wav", "refused", written(np.zeros(0, np.float32), 16000, "PCM_16"), "0 samples"),
    Input("short_0.1s.wav", "scored", written(noise(0.1), 16000, "PCM_16")),
    Input("door_0.2s_44k.flac", "scored", written(noise(0.2, 44100, 2), 44100, "PCM_16")),  # the clip
    Input("short_0.25s.wav", "scored", written(noise(0.25), 16000, "PCM_16")),
    Input("one_patch.wav", "scored", written(noise(2560 / 16000), 16000, "PCM_16")),  # exactly 16 frames
    Input("zero_bytes.wav", "refused", lambda p: p.write_bytes(b""), "empty file"),
    Input("silent.wav", "scored", written(np.zeros(8000, np.float32), 16000, "PCM_16")),
    Input("dc.wav", "scored", written(np.full(8000, 0.5, np.float32), 16000, "PCM_16")),
    Input("clipped_full_scale.wav", "scored", square_full_scale),
    Input("a_directory.wav", "refused", lambda p: p.mkdir(), "directory"),
    Input("nan_inf_float.wav", "scored", with_nan),
    Input("pcm_u8.wav", "scored", written(noise(0.3), 16000, "PCM_U8")),
    Input("pcm_24.flac", "scored", written(noise(0.3), 16000, "PCM_24")),
    Input("float32.wav", "scored", written(noise(0.3), 16000, "FLOAT")),
    Input("not_audio.wav", "refused", lambda p: p.write_text("not a sound\n" * 20), "read"),
    Input("stereo.wav", "scored", written(noise(0.3, 16000, 2), 16000, "PCM_16")),
    Input("six_channels.wav", "scored", written(noise(0.3, 48000, 6), 48000, "PCM_16")),
    rate(8000),
    Input("truncated.flac", "partial", truncated_flac, "decoding stopped at"),
    rate(11025),
    rate(22050),
    rate(44100),
    Input("vanishes.wav", "refused", written(noise(0.3), 16000, "PCM_16"), "file not found", vanishes=True),
    rate(48000),
    rate(96000),
    *([Input("clip.mp3", "scored", by_ffmpeg()),
       Input("clip.ogg", "scored", by_ffmpeg("-c:a", "libvorbis")),
       Input("clip.opus", "scored", by_ffmpeg("-c:a", "libopus")),
       Input("clip.m4a", "scored", by_ffmpeg("-c:a", "aac"))] if HAVE_FFMPEG else []),
    Input("last_one.wav", "scored", written(noise(0.5), 16000, "PCM_16")),
]


def make_inputs(directory: Path) -> list[Path]:
    """Write every input into `directory`; returns their paths, in INPUTS order."""
    paths = []
    for item in INPUTS:
        path = directory / item.name
        if path.is_dir():
            shutil.rmtree(path)
        item.make(path)
        paths.append(path)
    return paths
