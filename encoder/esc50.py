"""ESC-50 (Piczak 2015; 2,000 five-second clips, 50 classes, 40 each, 5 folds) read from a local
copy: the public zero-shot benchmark the model card reports. Evaluation only: nothing may train,
calibrate or pick checkpoints on it (`../shared/data-sources.md`).

The copy that is reachable offline is the one inside `saraalemadi/DroneAudioDataset`
(`Binary_Drone_Audio/unknown/`), as 16 kHz one-second chunks named

    {fold}-{freesound id}-{take}-{target}{chunk}.wav      1-100038-A-140.wav = clip 1-100038-A-14, chunk 0

Chunks 0-4 concatenated give the clip. Files whose last field is not all digits (the folder also
holds other recordings) are skipped. A folder of the original ESC-50 layout (`audio/*.wav` named
`{fold}-{id}-{take}-{target}.wav`, 44.1 kHz) is read too.

Zero-shot protocol (as the CLAP papers): all 2,000 clips, one prompt per class,
"the sound of " + the class name with `_` as spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm", "crying_baby", "sneezing", "clapping",
    "breathing", "coughing", "footsteps", "laughing", "brushing_teeth", "snoring",
    "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks",
    "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train",
    "church_bells", "airplane", "fireworks", "hand_saw",
)
N_CLIPS = 2000
CHUNKS = 5  # one-second chunks per five-second clip
PROMPT_TEMPLATE = "the sound of {}"
SAMPLE_RATE = 16000

# {fold}-{freesound id}-{take}-{last}.wav; last = target (original layout) or target + chunk digit
_NAME = re.compile(r"([1-5])-(\d+)-([A-Z])-(\d+)\.wav")


def prompts() -> list[str]:
    return [PROMPT_TEMPLATE.format(c.replace("_", " ")) for c in CLASSES]


@dataclass(frozen=True)
class Clip:
    clip_id: str  # "1-100038-A-14"
    fold: int
    freesound_id: int
    target: int
    files: tuple[Path, ...]  # the chunks in order (or the one whole file)

    def audio(self) -> np.ndarray:
        """(N,) float32 mono at 16 kHz."""
        from streamer.audio_file import read_audio
        from streamer.resample import to_mono_16k

        parts = []
        for f in self.files:
            a = read_audio(f)
            parts.append(to_mono_16k(a.samples, a.rate))
        return np.concatenate(parts).astype(np.float32)


def _chunk_dir(root: Path) -> Path | None:
    for cand in (root, root / "unknown", root / "Binary_Drone_Audio" / "unknown"):
        if cand.is_dir() and any(_NAME.fullmatch(p.name) for p in cand.glob("*-*-*-*.wav")):
            return cand
    return None


def load(root: str | Path, expect_full: bool = True) -> list[Clip]:
    """Every ESC-50 clip under `root` (the DroneAudioDataset checkout, its chunk folder, or an
    original ESC-50 checkout), sorted by clip id. Raises FileNotFoundError (one line) when none is
    found, ValueError when the copy is incomplete (a benchmark on part of it is not ESC-50;
    expect_full=False reads a part, for tests)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ESC-50 folder not found (a checkout of saraalemadi/DroneAudioDataset or of ESC-50)")
    whole = root / "audio" if (root / "audio").is_dir() else None
    if whole is not None and any(_NAME.fullmatch(p.name) for p in whole.glob("*.wav")):
        clips = [Clip(p.stem, int(m[1]), int(m[2]), int(m[4]), (p,))
                 for p in sorted(whole.glob("*.wav")) if (m := _NAME.fullmatch(p.name))]
    else:
        chunk_dir = _chunk_dir(root)
        if chunk_dir is None:
            raise FileNotFoundError(f"{root}: no ESC-50 clips found (expected Binary_Drone_Audio/unknown/1-100038-A-140.wav ...)")
        groups: dict[tuple[str, str, str, str], dict[int, Path]] = {}
        for p in chunk_dir.glob("*-*-*-*.wav"):
            m = _NAME.fullmatch(p.name)
            if m is None:
                continue
            last = m[4]
            groups.setdefault((m[1], m[2], m[3], last[:-1]), {})[int(last[-1])] = p
        clips = []
        for (fold, fsid, take, target), chunks in groups.items():
            if sorted(chunks) != list(range(CHUNKS)):
                raise ValueError(f"{chunk_dir}: clip {fold}-{fsid}-{take}-{target} has chunks {sorted(chunks)}, expected 0-4")
            clips.append(Clip(f"{fold}-{fsid}-{take}-{target}", int(fold), int(fsid), int(target),
                              tuple(chunks[i] for i in range(CHUNKS))))
        clips.sort(key=lambda c: c.clip_id)
    if expect_full and (len(clips) != N_CLIPS or {c.target for c in clips} != set(range(len(CLASSES)))):
        raise ValueError(f"{root}: found {len(clips)} ESC-50 clips over {len({c.target for c in clips})} classes, "
                         f"expected {N_CLIPS} over {len(CLASSES)}")
    return clips


def freesound_ids(root: str | Path) -> set[int]:
    """Freesound ids of the ESC-50 recordings: training data must drop files sharing one."""
    return {c.freesound_id for c in load(root)}
