"""Our own real-recording clip set: single real recordings (no mixing, no bed), one label each,
held out by recording from the training sources. With ESC-50 it is the model's report card.

    python main.py data clipset --from REPOS --out cache/clipset

REPOS holds checkouts of the repositories in `../shared/data-sources.md` (`git clone` of each, or
the fetched snapshots), each found as REPOS/<name>, REPOS/<owner>+<name> or REPOS/<owner>/<name>.
The builder never fetches anything. Per source, a table below names each file's class; files the
table does not name are not used.

Held out by recording: within each (source, class), recordings are ordered by a hash of their id
and the first k are held out, k = min(CAP, floor(FRACTION * n)), at least one when n >= 2; a class
with a single recording in a source is held out when its hash falls below FRACTION. The rule is
`held_out()`, and the training-data builder must drop every recording for which it is True: the
clip set is never trained on. A recording is the unit a file's takes come from (Kitchen20: the
Freesound id; mod-sounds: the file stem without its take number), so no take of a held-out
recording leaks into training.

Clips longer than MAX_SECONDS are cut to their middle MAX_SECONDS (long ambience loops); shorter
ones are kept whole. Scoring is zero-shot over every class of the set with "the sound of <name>".
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MAX_SECONDS = 10.0
MIN_SECONDS = 0.3
SAMPLE_RATE = 16000
FRACTION = 0.2  # of each class's recordings held out
CAP = 8  # recordings held out per (source, class) at most: keeps big classes from dominating
PROMPT_TEMPLATE = "the sound of {}"
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Recording:
    source: str  # repository name
    recording: str  # the unit held out (all takes of one recording share it)
    label: str  # class name, spaces allowed ("dog", "acoustic guitar")
    path: Path
    licence: str


# --- the sources -------------------------------------------------------------------------------

ANIMAL_FOLDERS = {  # YashNita/Animal-Sound-Dataset: folder names are Turkish
    "Aslan": "lion", "Esek": "donkey", "Inek": "cow", "Kedi": "cat", "Kopek": "dog", "Koyun": "sheep",
    "Kurbaga": "frog", "Kus": "bird", "Maymun": "monkey", "Tavuk": "chicken",
}

KITCHEN20_NAMES = {  # marc-moreaux/kitchen20 categories -> what the sound is, in words
    "blender": "blender", "boiling-water": "boiling water", "book": "turning book pages",
    "chopping": "chopping food", "clean-dishes": "washing dishes", "cupboard": "cupboard door",
    "cutlery": "cutlery", "dishwasher": "dishwasher", "drawer": "drawer opening and closing",
    "eat": "eating", "fridge": "refrigerator", "frying-pan": "frying food in a pan", "juicer": "juicer",
    "microwave": "microwave oven", "peel": "peeling vegetables", "plates": "plates clattering",
    "stove-burner": "gas stove burner", "stove-fan": "kitchen extractor fan", "sweep": "sweeping the floor",
    "water-flowing": "running water",
}

INSTRUMENT_FOLDERS = {  # seth814/Audio-Classification (FSDKaggle2018)
    "Acoustic_guitar": "acoustic guitar", "Bass_drum": "bass drum", "Cello": "cello", "Clarinet": "clarinet",
    "Double_bass": "double bass", "Flute": "flute", "Hi_hat": "hi-hat", "Saxophone": "saxophone",
    "Snare_drum": "snare drum", "Violin_or_fiddle": "violin",
}

MOD_SOUNDS = {  # AntumMT/mod-sounds: file stem (without "sounds_" and take number) -> class
    "dog_bark": "dog", "puppy_bark": "dog", "cat_meow": "cat", "cow_moo": "cow", "rooster": "rooster",
    "chicken": "chicken", "sheep_baa": "sheep", "lamb": "sheep", "goat_bleat": "goat", "duck_quack": "duck",
    "owl_hoot": "owl", "crow_caw": "crow", "seagull": "seagull", "seagulls": "seagull", "wolf_howl": "wolf",
    "horse_neigh": "horse", "frog": "frog", "cricket": "crickets", "bees": "bees", "bee": "bees",
    "bumble_bee": "bees", "elephant_trumpet": "elephant", "lion_bellow": "lion", "monkey": "monkey",
    "pig_snort": "pig", "pig_squeal": "pig", "church_bells": "church bells", "clock_tick": "clock ticking",
    "watch_tick": "clock ticking", "thunder": "thunder", "rain_heavy": "rain", "rain_light": "rain",
    "rain_medium": "rain", "wind": "wind", "helicopter": "helicopter", "door_knock": "knocking on a door",
    "doorbell": "doorbell", "door_creak": "door creaking", "zipper": "zipper", "whistle": "whistling",
    "explosion": "explosion", "fireworks": "fireworks", "piano": "piano", "train_whistle": "train whistle",
    "vehicle_horn": "car horn", "bicycle_bell": "bicycle bell", "fire_crackle": "fire crackling",
    "pistol_fire": "gunshot", "rifle_fire": "gunshot", "woodpecker_peck": "woodpecker",
    "turkey_gobble": "turkey", "whale": "whale", "balloon_pop": "balloon popping", "car_motor": "car engine",
    "vehicle_motor_idle": "car engine", "motorbike_idle": "motorcycle", "jet_flyby": "airplane",
    "airplane_prop": "airplane", "cicada": "cicada", "snake_rattle": "rattlesnake",
}

MOODIST = {  # remvze/moodist ambience loops (one recording each) -> class
    "animals/beehive": "bees", "animals/birds": "bird", "animals/cat-purring": "cat purring",
    "animals/cows": "cow", "animals/crickets": "crickets", "animals/crows": "crow",
    "animals/dog-barking": "dog", "animals/frog": "frog", "animals/horse-gallop": "horse galloping",
    "animals/owl": "owl", "animals/seagulls": "seagull", "animals/sheep": "sheep", "animals/whale": "whale",
    "animals/wolf": "wolf", "animals/woodpecker": "woodpecker", "nature/campfire": "fire crackling",
    "nature/river": "stream", "nature/waterfall": "waterfall", "nature/waves": "sea waves",
    "nature/wind": "wind", "rain/heavy-rain": "rain", "rain/light-rain": "rain", "rain/thunder": "thunder",
    "things/boiling-water": "boiling water", "things/clock": "clock ticking",
    "things/keyboard": "keyboard typing", "things/typewriter": "typewriter",
    "things/washing-machine": "washing machine", "things/wind-chimes": "wind chimes",
    "things/ceiling-fan": "ceiling fan", "transport/airplane": "airplane", "transport/train": "train",
    "urban/ambulance-siren": "siren", "urban/fireworks": "fireworks", "urban/crowd": "crowd",
    "urban/traffic": "traffic",
}

TAKE = re.compile(r"^(.*?)(?:[_.]\d+)?$")  # a take number ends a stem: "dog_bark_02" -> recording "dog_bark"


def find_repo(root: Path, owner: str, name: str) -> Path | None:
    for cand in (root / name, root / f"{owner}+{name}", root / owner / name):
        if cand.is_dir():
            return cand
    return None


def _animals(repo: Path) -> Iterator[Recording]:
    for folder in sorted(repo.iterdir()):
        label = ANIMAL_FOLDERS.get(folder.name.split("-")[0])
        if label is None or not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() == ".wav":
                yield Recording("Animal-Sound-Dataset", f.stem.lower(), label, f, "none stated")


def _kitchen20(repo: Path) -> Iterator[Recording]:
    with open(repo / "kitchen20.csv", newline="") as f:
        for row in csv.DictReader(f):
            label = KITCHEN20_NAMES.get(row["category"])
            path = repo / row["path"]
            if label and path.is_file():
                yield Recording("kitchen20", f"freesound-{row['usr_id']}", label, path, "Freesound CC (Apache-2.0 repo)")


def _instruments(repo: Path) -> Iterator[Recording]:
    for folder, label in INSTRUMENT_FOLDERS.items():
        for f in sorted((repo / "wavfiles" / folder).glob("*.wav")):
            yield Recording("Audio-Classification", f.stem, label, f, "Freesound CC (FSDKaggle2018)")


def _mod_sounds(repo: Path) -> Iterator[Recording]:
    for f in sorted((repo / "sounds").glob("sounds_*.ogg")):
        stem = TAKE.match(f.stem.removeprefix("sounds_"))[1]
        label = MOD_SOUNDS.get(stem)
        if label:
            yield Recording("mod-sounds", stem, label, f, "CC0 / CC BY / CC BY-SA (sources.md)")


def _moodist(repo: Path) -> Iterator[Recording]:
    for key, label in MOODIST.items():
        f = repo / "public" / "sounds" / f"{key}.mp3"
        if f.is_file():
            yield Recording("moodist", key, label, f, "Pixabay / CC0 (MIT repo)")


SOURCES = (  # (owner, repository, reader)
    ("YashNita", "Animal-Sound-Dataset", _animals),
    ("marc-moreaux", "kitchen20", _kitchen20),
    ("seth814", "Audio-Classification", _instruments),
    ("AntumMT", "mod-sounds", _mod_sounds),
    ("remvze", "moodist", _moodist),
)


def recordings(root: str | Path) -> list[Recording]:
    """Every labelled file of every source found under root (sources not found are skipped)."""
    out = []
    for owner, name, reader in SOURCES:
        repo = find_repo(Path(root), owner, name)
        if repo is not None:
            out.extend(reader(repo))
    return out


# --- the held-out rule -------------------------------------------------------------------------

def _rank(source: str, recording: str) -> float:
    """A stable number in [0, 1) per recording (sha1, so it does not depend on Python's hash seed)."""
    return int(hashlib.sha1(f"{source}/{recording}".encode()).hexdigest()[:12], 16) / 16 ** 12


def held_out_recordings(recs: list[Recording]) -> set[tuple[str, str]]:
    """(source, recording) pairs of the clip set; training must drop every file of these."""
    by_class: dict[tuple[str, str], set[str]] = {}
    for r in recs:
        by_class.setdefault((r.source, r.label), set()).add(r.recording)
    out = set()
    for (source, _), ids in by_class.items():
        ranked = sorted(ids, key=lambda i: _rank(source, i))
        if len(ranked) == 1:
            k = int(_rank(source, ranked[0]) < FRACTION)
        else:
            k = max(1, min(CAP, int(FRACTION * len(ranked))))
        out.update((source, i) for i in ranked[:k])
    return out


def held_out(recs: list[Recording]) -> list[Recording]:
    keep = held_out_recordings(recs)
    return [r for r in recs if (r.source, r.recording) in keep]


# --- build and read ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ClipSetItem:
    clip_id: str
    source: str
    recording: str
    label: str
    path: str  # relative to the clip set folder
    seconds: float
    licence: str
    origin: str  # the source file, relative to its repository


def read_audio(path: Path) -> np.ndarray:
    """(N,) float32 mono 16 kHz, through the engine's one file reader (libsndfile, else ffmpeg)."""
    from streamer.audio_file import read_audio as read_file
    from streamer.resample import to_mono_16k

    a = read_file(path)
    return to_mono_16k(a.samples, a.rate)


def middle(x: np.ndarray, seconds: float = MAX_SECONDS) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    if len(x) <= n:
        return x
    start = (len(x) - n) // 2
    return x[start:start + n]


def build(root: str | Path, out: str | Path) -> list[ClipSetItem]:
    """Write the held-out clips as 16 kHz FLAC under out/audio and out/manifest.jsonl."""
    import soundfile as sf

    root, out = Path(root), Path(out)
    recs = recordings(root)
    if not recs:
        raise FileNotFoundError(f"{root}: none of the clip-set repositories found "
                                f"({', '.join(n for _, n, _ in SOURCES)})")
    from streamer.audio_file import AudioFileError

    items = []
    for r in held_out(recs):
        try:
            x = middle(read_audio(r.path))
        except AudioFileError as e:
            print(f"main.py data clipset: skipped {e}", file=sys.stderr)
            continue
        if len(x) < MIN_SECONDS * SAMPLE_RATE or not np.isfinite(x).all() or np.abs(x).max() == 0:
            continue
        clip_id = f"{r.source}/{r.path.stem}"
        rel = Path("audio") / r.source / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', r.path.stem)}.flac"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(out / rel), x, SAMPLE_RATE, subtype="PCM_16")
        owner = next(o for o, name, _ in SOURCES if name == r.source)
        repo = find_repo(root, owner, r.source)
        items.append(ClipSetItem(clip_id, r.source, r.recording, r.label, str(rel), round(len(x) / SAMPLE_RATE, 3),
                                 r.licence, str(r.path.relative_to(repo))))
    items.sort(key=lambda i: i.clip_id)
    with open(out / MANIFEST, "w") as f:
        for it in items:
            f.write(json.dumps(asdict(it)) + "\n")
    return items


@dataclass
class ClipSet:
    root: Path
    items: list[ClipSetItem]

    @property
    def classes(self) -> list[str]:
        return sorted({i.label for i in self.items})

    def prompts(self) -> list[str]:
        return [PROMPT_TEMPLATE.format(c) for c in self.classes]

    def targets(self) -> np.ndarray:
        index = {c: k for k, c in enumerate(self.classes)}
        return np.array([index[i.label] for i in self.items])

    def audio(self, item: ClipSetItem) -> np.ndarray:
        import soundfile as sf

        x, rate = sf.read(str(self.root / item.path), dtype="float32")
        assert rate == SAMPLE_RATE, f"{self.root / item.path}: {rate} Hz, expected {SAMPLE_RATE}"
        return x


def load(root: str | Path) -> ClipSet:
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the clip set with `python main.py data clipset --from REPOS --out {root}`")
    items = [ClipSetItem(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return ClipSet(root, items)
