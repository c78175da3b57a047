"""Synthesised source sounds: fluidsynth renders of General MIDI / GS presets and TTS speech.

fluidsynth: every recipe becomes one segment of a long MIDI file (one preset, a few notes, then
`TAIL_S` of silence for the release); a batch of recipes is rendered in one fluidsynth call
(loading the 148 MB soundfont once) and cut back into segments. Reverb and chorus are off so a
sound's tail never leaks into the next segment and trimming gives exact extents.

Speech: espeak-ng (English voices x voice variants) and flite; the source_id is the voice, so the
dev split holds out whole voices.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .labels import CLASSES
from .midi import DRUM_CHANNEL, Note, Part, write_midi
from .sources import SAMPLE_RATE, Library, SourceItem, stable_hash, to_mono_16k

SOUNDFONT_DIR = Path("/usr/share/sounds/sf2")
GM_SF2 = SOUNDFONT_DIR / "FluidR3_GM.sf2"
GS_SF2 = SOUNDFONT_DIR / "FluidR3_GS.sf2"  # only the GS variation banks; loaded on top of GM
SOUNDFONT_LICENCE = "MIT (FluidR3 soundfont, fluid-soundfont-gm/gs)"
TAIL_S = 3.0  # silence after each recipe's last note-off: release tails end well before this
BATCH = 60  # recipes per fluidsynth call

# GM programs 112-127: the sound-effect end of General MIDI (bank 0).
GM_SFX = {112: "bell", 113: "cowbell", 114: "steel_drum", 115: "woodblock", 116: "tom_drum",
          117: "tom_drum", 119: "cymbal", 121: "breathing", 122: "sea_waves", 123: "bird",
          124: "telephone", 125: "helicopter", 126: "applause", 127: "gunshot"}
# GS variation banks (bank, program) as listed in FluidR3_GS.sf2's preset headers.
GS_SFX = {(1, 122): "rain", (1, 123): "dog", (1, 124): "telephone", (1, 125): "car_engine",
          (1, 126): "laughter", (1, 127): "machine_gun", (2, 122): "thunder", (2, 123): "horse_gallop",
          (2, 124): "door_creak", (2, 125): "car_braking", (2, 126): "scream", (2, 127): "laser",
          (3, 122): "wind", (3, 123): "bird", (3, 124): "door_slam", (3, 125): "car_passing",
          (3, 126): "punch", (3, 127): "explosion", (4, 122): "stream", (4, 124): "vinyl_scratch",
          (4, 125): "car_crash", (4, 126): "heartbeat", (5, 122): "bubbles", (5, 124): "wind_chimes",
          (5, 125): "siren", (5, 126): "footsteps", (6, 125): "train", (7, 125): "jet_plane"}
# The GS "SFX" drum kit (drum program 56): one effect per key. Most reuse the GS samples above,
# so they share a source_id with them (same recording -> same split).
GS_SFX_KIT = 56
GS_SFX_KIT_KEYS = {52: "laughter", 53: "scream", 54: "punch", 55: "heartbeat", 56: "footsteps",
                   58: "applause", 59: "door_creak", 60: "door_slam", 62: "wind_chimes",
                   63: "car_engine", 64: "car_braking", 65: "car_passing", 66: "car_crash", 67: "siren",
                   68: "train", 69: "jet_plane", 70: "helicopter", 72: "gunshot", 73: "machine_gun",
                   74: "laser", 75: "explosion", 76: "dog", 77: "horse_gallop", 78: "bird", 79: "rain",
                   80: "thunder", 81: "wind", 82: "sea_waves", 83: "stream", 84: "bubbles"}
GM_MELODIC = {0: "piano", 1: "piano", 2: "piano", 4: "electric_piano", 5: "electric_piano",
              6: "harpsichord", 9: "glockenspiel", 10: "music_box", 11: "vibraphone", 12: "xylophone",
              13: "xylophone", 14: "church_bell", 16: "organ", 17: "organ", 18: "organ",
              19: "church_organ", 21: "accordion", 22: "harmonica", 23: "accordion",
              24: "acoustic_guitar", 25: "acoustic_guitar", 26: "electric_guitar", 27: "electric_guitar",
              29: "electric_guitar", 30: "electric_guitar", 32: "bass_guitar", 33: "bass_guitar",
              34: "bass_guitar", 40: "violin", 41: "violin", 42: "cello", 45: "strings", 46: "harp",
              47: "timpani", 48: "strings", 49: "strings", 52: "choir", 53: "choir", 56: "trumpet",
              57: "trombone", 58: "tuba", 59: "trumpet", 60: "french_horn", 64: "saxophone",
              65: "saxophone", 66: "saxophone", 67: "saxophone", 68: "oboe", 71: "clarinet", 72: "flute",
              73: "flute", 74: "flute", 75: "flute", 78: "whistling", 80: "synthesizer",
              81: "synthesizer", 87: "synthesizer", 88: "synthesizer", 89: "synthesizer", 104: "sitar",
              105: "banjo", 108: "kalimba", 109: "bagpipes", 110: "violin"}
GM_BANK8 = {(8, 14): "church_bell", (8, 19): "church_organ", (8, 24): "acoustic_guitar",
            (8, 40): "violin", (8, 21): "accordion", (8, 4): "electric_piano", (8, 16): "organ",
            (8, 116): "bass_drum", (8, 117): "tom_drum"}
# Drum kits by drum-channel program: Standard, Room, Power, Electronic, TR-808, Jazz, Brush, Orchestra.
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40, 48)
DRUM_KEYS = {35: "bass_drum", 36: "bass_drum", 38: "snare_drum", 40: "snare_drum", 39: "hand_clap",
             42: "hi_hat", 44: "hi_hat", 46: "hi_hat", 49: "cymbal", 57: "cymbal", 51: "cymbal",
             55: "cymbal", 41: "tom_drum", 45: "tom_drum", 48: "tom_drum", 54: "tambourine",
             56: "cowbell", 60: "hand_drum", 61: "hand_drum", 62: "hand_drum", 63: "hand_drum",
             64: "hand_drum", 69: "shaker", 70: "shaker", 71: "whistle", 72: "whistle",
             76: "woodblock", 77: "woodblock", 80: "triangle", 81: "triangle"}
# Comfortable pitch ranges (MIDI keys) by class; others use DEFAULT_RANGE.
PITCH_RANGE = {"bass_guitar": (28, 52), "cello": (36, 64), "tuba": (28, 52), "trombone": (40, 65),
               "violin": (55, 88), "flute": (60, 93), "glockenspiel": (72, 100),
               "music_box": (65, 96), "timpani": (40, 55), "church_bell": (48, 72),
               "whistling": (67, 90), "piano": (36, 88), "harp": (40, 88), "choir": (48, 76)}
DEFAULT_RANGE = (48, 79)
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)


class ToolMissing(RuntimeError):
    """A required external program is not installed."""


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"{name} not found on PATH: install it with `apt-get install {hint}`")
    return path


@dataclass(frozen=True)
class MidiRecipe:
    """One fluidsynth render: a preset and the notes to play on it."""

    item_id: str
    source_id: str
    label: str
    channel: int
    bank: int
    program: int
    notes: tuple[Note, ...]

    @property
    def dur_s(self) -> float:
        return max(n.start_s + n.dur_s for n in self.notes)


@dataclass(frozen=True)
class Preset:
    label: str
    source_id: str
    channel: int
    bank: int
    program: int
    style: str  # "sfx" (one held note), "melody", "hit" (drum key hits), "beat" (drum pattern)
    key: int = 60  # drum key for "hit"


def list_presets() -> list[Preset]:
    """Every preset the corpus renders, with its class label and recording (source_id)."""
    p: list[Preset] = []
    for prog, label in GM_SFX.items():
        p.append(Preset(label, f"fluid-gm:0:{prog}", 0, 0, prog, "sfx"))
    for (bank, prog), label in GS_SFX.items():
        p.append(Preset(label, f"fluid-gs:{label}", 0, bank, prog, "sfx"))
    for key, label in GS_SFX_KIT_KEYS.items():
        p.append(Preset(label, f"fluid-gs:{label}", DRUM_CHANNEL, 0, GS_SFX_KIT, "hit", key))
    for prog, label in GM_MELODIC.items():
        p.append(Preset(label, f"fluid-gm:0:{prog}", 0, 0, prog, "melody"))
    for (bank, prog), label in GM_BANK8.items():
        style = "hit" if label in ("bass_drum", "tom_drum") else "melody"
        p.append(Preset(label, f"fluid-gm:{bank}:{prog}", 0, bank, prog, style))
    for kit in DRUM_KITS:
        for key, label in DRUM_KEYS.items():
            p.append(Preset(label, f"fluid-kit{kit}:{label}", DRUM_CHANNEL, 0, kit, "hit", key))
        p.append(Preset("drum_kit", f"fluid-kit{kit}:drum_kit", DRUM_CHANNEL, 0, kit, "beat"))
    # Keep each (source_id, key) once: several drum keys of one class share a source_id.
    unique = {(x.source_id, x.key, x.bank, x.program): x for x in p}
    return list(unique.values())


def _melody(rng: random.Random, label: str) -> list[Note]:
    lo, hi = PITCH_RANGE.get(label, DEFAULT_RANGE)
    root = rng.randint(lo, max(lo, hi - 12))
    scale = rng.choice((MAJOR, MINOR))
    keys = [root + 12 * o + s for o in range(3) for s in scale if root + 12 * o + s <= hi]
    vel = rng.randint(60, 120)
    if rng.random() < 0.25:  # a held chord or single long note
        dur = rng.uniform(1.0, 3.5)
        base = rng.randrange(len(keys))
        idx = [base] if rng.random() < 0.4 else [base, base + 2, base + 4]
        return [Note(0.0, dur, keys[i % len(keys)], vel) for i in idx]
    notes, t = [], 0.0
    i = rng.randrange(len(keys))
    for _ in range(rng.randint(3, 10)):
        d = rng.choice((0.15, 0.25, 0.25, 0.4, 0.5, 0.8))
        notes.append(Note(t, d * rng.uniform(0.8, 1.0), keys[i], max(1, vel + rng.randint(-15, 15))))
        t += d
        i = min(len(keys) - 1, max(0, i + rng.choice((-2, -1, -1, 1, 1, 2, 3))))
    return notes


def _beat(rng: random.Random) -> list[Note]:
    step = 60.0 / rng.randint(80, 160) / 2  # eighth notes
    notes = []
    for s in range(8 * rng.randint(2, 4)):
        t = s * step
        if s % 4 == 0 or (s % 8 == 5 and rng.random() < 0.4):
            notes.append(Note(t, 0.1, 36, rng.randint(90, 120)))
        if s % 4 == 2:
            notes.append(Note(t, 0.1, 38, rng.randint(85, 120)))
        if rng.random() < 0.9:
            notes.append(Note(t, 0.05, rng.choice((42, 42, 42, 46)), rng.randint(50, 90)))
    notes.append(Note(t + step, 0.5, 49, 100))  # closing crash
    return notes


def make_recipe(preset: Preset, variant: int, seed: int) -> MidiRecipe:
    """A random but reproducible render of a preset (pitch, velocity, length, hit count)."""
    rng = random.Random(stable_hash(seed, preset.source_id, preset.key, preset.bank, preset.program,
                                    variant))
    countable = CLASSES[preset.label].countable
    if preset.style == "sfx":
        dur = rng.uniform(0.3, 1.2) if countable else rng.uniform(1.0, 5.0)
        notes = [Note(0.0, dur, 60 + rng.randint(-3, 3), rng.randint(70, 127))]
    elif preset.style == "hit":
        n_hits = 1 if rng.random() < 0.7 else rng.randint(2, 4)
        gap = rng.uniform(0.2, 0.6)
        long = not countable  # sustained effects on the SFX kit need a held key
        notes = [Note(i * gap, rng.uniform(1.0, 4.0) if long else 0.2, preset.key,
                      rng.randint(60, 127)) for i in range(1 if long else n_hits)]
    elif preset.style == "beat":
        notes = _beat(rng)
    else:
        notes = _melody(rng, preset.label)
    item_id = f"{preset.source_id}:k{preset.key}:v{variant}"
    return MidiRecipe(item_id, preset.source_id, preset.label, preset.channel, preset.bank,
                      preset.program, tuple(notes))


def render_midi_batch(recipes: list[MidiRecipe], workdir: Path) -> list[np.ndarray]:
    """Render recipes back to back in one fluidsynth call; returns 16 kHz mono float32 per recipe."""
    fluidsynth = require_tool("fluidsynth", "fluidsynth fluid-soundfont-gm fluid-soundfont-gs")
    for sf2 in (GM_SF2, GS_SF2):
        if not sf2.exists():
            raise ToolMissing(f"{sf2} missing: install fluid-soundfont-gm and fluid-soundfont-gs")
    parts, starts, t = [], [], 0.5
    for r in recipes:
        notes = [Note(t + n.start_s, n.dur_s, n.pitch, n.velocity) for n in r.notes]
        parts.append(Part(r.channel, r.program, notes, bank=r.bank, start_s=t - 0.25))
        starts.append(t)
        t += r.dur_s + TAIL_S
    key = stable_hash(*(r.item_id for r in recipes))
    mid, wav = workdir / f"{key}.mid", workdir / f"{key}.wav"
    write_midi(mid, parts, end_s=t)
    cmd = [fluidsynth, "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.6", "-o",
           "audio.file.format=float", "-F", str(wav), "-r", str(SAMPLE_RATE), str(GM_SF2), str(GS_SF2),
           str(mid)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    audio, sr = sf.read(wav, dtype="float32")
    audio = to_mono_16k(audio, sr)
    mid.unlink(missing_ok=True)
    wav.unlink(missing_ok=True)
    out = []
    for r, s in zip(recipes, starts, strict=True):
        a, b = int(s * SAMPLE_RATE), int((s + r.dur_s + TAIL_S - 0.05) * SAMPLE_RATE)
        out.append(audio[a:b])
    return out


def render_fluidsynth(recipes: list[MidiRecipe], workers: int = 2, progress=None) -> Library:
    """Render all recipes (in batches, `workers` fluidsynth processes at a time) into a Library."""
    lib = Library()
    batches = [recipes[i : i + BATCH] for i in range(0, len(recipes), BATCH)]
    with tempfile.TemporaryDirectory(prefix="fluid-") as tmp, ThreadPoolExecutor(workers) as pool:
        rendered = pool.map(lambda b: render_midi_batch(b, Path(tmp)), batches)
        for batch, audios in zip(batches, rendered, strict=True):
            for r, a in zip(batch, audios, strict=True):
                lib.add(SourceItem(r.item_id, r.source_id, r.label, "fluidsynth", SOUNDFONT_LICENCE,
                                   meta={"bank": r.bank, "program": r.program,
                                         "drum": r.channel == DRUM_CHANNEL}), a)
            if progress is not None:
                progress(len(batch))
    return lib


# ---------------------------------------------------------------- speech

ESPEAK_VOICES = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
                 "en-gb-x-gbclan", "en-gb-x-gbcwmd")
ESPEAK_MALE = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "adam", "david", "edward", "john",
               "paul", "robert")
ESPEAK_FEMALE = ("f1", "f2", "f3", "f4", "f5", "anika", "belinda", "linda", "steph", "aunty",
                 "grandma", "shelby")
ESPEAK_WHISPER = ("whisper", "whisperf")
FLITE_VOICES = {"kal": "male", "kal16": "male", "awb": "male", "rms": "male", "slt": "female"}
ESPEAK_LICENCE = "GPL-3.0+ (espeak-ng)"
FLITE_LICENCE = "BSD-like (flite, CMU)"

_SUBJECTS = ("the train", "my neighbour", "the weather", "our team", "the little cat", "this road",
             "the old man", "a friend of mine", "the new phone", "the market", "my sister",
             "the kitchen", "the river", "that song", "the children", "the doctor", "the bus")
_VERBS = ("will arrive", "looked", "is going to be", "has been", "seems", "was", "should be",
          "never is", "always sounds", "became", "might be", "stays")
_ENDS = ("late again today", "much better than yesterday", "closed on sundays", "really quiet",
         "far too expensive", "ready in ten minutes", "in the garden", "very happy about it",
         "on the other side of town", "a little bit strange", "full of people", "finally here")
_OPENERS = ("", "", "well, ", "you know, ", "I think ", "honestly, ", "so ", "listen, ",
            "excuse me, ", "okay, ")
_SHOUTS = ("hey! over here!", "stop right there!", "watch out!", "help! somebody help!",
           "get out of the way!", "come back here!", "no! don't do that!", "hurry up!",
           "run! run!", "look out behind you!", "fire! fire!", "wait for me!")
_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
            "eighteen", "nineteen", "twenty")


def random_sentence(rng: random.Random) -> str:
    n = rng.choice((1, 1, 2))
    return " ".join(f"{rng.choice(_OPENERS)}{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} "
                    f"{rng.choice(_ENDS)}." for _ in range(n))


def counting_text(rng: random.Random) -> str:
    start = rng.randint(0, 8)
    n = rng.randint(3, 10)
    return ", ".join(_NUMBERS[start : start + n])


@dataclass(frozen=True)
class SpeechRecipe:
    item_id: str
    source_id: str
    label: str
    engine: str  # "espeak" | "flite"
    voice: str
    text: str
    pitch: int = 50
    speed: int = 170
    amplitude: int = 100


def speech_recipes(n_per_voice: int, seed: int, tiny: bool = False) -> list[SpeechRecipe]:
    """Speech, shouting, counting and whispering across espeak-ng voice x variant and flite voices."""
    out: list[SpeechRecipe] = []
    voices = ESPEAK_VOICES[:3] if tiny else ESPEAK_VOICES
    males = ESPEAK_MALE[:4] if tiny else ESPEAK_MALE
    females = ESPEAK_FEMALE[:4] if tiny else ESPEAK_FEMALE
    for voice in voices:
        for variant in (*males, *females, *ESPEAK_WHISPER):
            sid = f"espeak:{voice}+{variant}"
            gender_label = "female_speech" if variant in ESPEAK_FEMALE else "male_speech"
            for k in range(n_per_voice):
                rng = random.Random(stable_hash(seed, sid, k))
                base = dict(engine="espeak", voice=f"{voice}+{variant}",
                            pitch=rng.randint(30, 70), speed=rng.randint(140, 200))
                if variant in ESPEAK_WHISPER:
                    styles = [("whispering", random_sentence(rng), {})]
                else:
                    styles = [(gender_label, random_sentence(rng), {})]
                    if k % 2 == 0:
                        styles.append(("counting", counting_text(rng), {}))
                    else:
                        styles.append(("shouting", rng.choice(_SHOUTS).upper(),
                                       {"pitch": rng.randint(70, 99), "speed": rng.randint(170, 220),
                                        "amplitude": 200}))
                for j, (label, text, over) in enumerate(styles):
                    out.append(SpeechRecipe(f"{sid}:{label}:{k}:{j}", sid, label, text=text,
                                            **{**base, **over}))
    if not tiny:
        for voice, gender in FLITE_VOICES.items():
            sid = f"flite:{voice}"
            for k in range(n_per_voice * 3):
                rng = random.Random(stable_hash(seed, sid, k))
                label = f"{gender}_speech" if k % 3 else "counting"
                text = counting_text(rng) if label == "counting" else random_sentence(rng)
                out.append(SpeechRecipe(f"{sid}:{label}:{k}", sid, label, "flite", voice, text))
    return out


def render_speech_one(r: SpeechRecipe, workdir: Path) -> np.ndarray:
    wav = workdir / f"{stable_hash(r.item_id)}.wav"
    if r.engine == "espeak":
        exe = require_tool("espeak-ng", "espeak-ng")
        cmd = [exe, "-v", r.voice, "-p", str(r.pitch), "-s", str(r.speed), "-a", str(r.amplitude),
               "-w", str(wav), r.text]
    else:
        exe = require_tool("flite", "flite")
        cmd = [exe, "-voice", r.voice, "-t", r.text, "-o", str(wav)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    audio, sr = sf.read(wav, dtype="float32")
    wav.unlink(missing_ok=True)
    x = to_mono_16k(audio, sr)
    if r.label == "shouting":
        x = np.tanh(3.0 * x / (np.abs(x).max() + 1e-9))  # strained, compressed: closer to a shout
    return x.astype(np.float32)


def render_speech(recipes: list[SpeechRecipe], workers: int = 2, progress=None) -> Library:
    lib = Library()
    with tempfile.TemporaryDirectory(prefix="tts-") as tmp, ThreadPoolExecutor(workers) as pool:
        rendered = pool.map(lambda r: render_speech_one(r, Path(tmp)), recipes)
        for r, a in zip(recipes, rendered, strict=True):
            licence = ESPEAK_LICENCE if r.engine == "espeak" else FLITE_LICENCE
            lib.add(SourceItem(r.item_id, r.source_id, r.label, r.engine, licence,
                               meta={"voice": r.voice, "text": r.text}), a)
            if progress is not None:
                progress(1)
    return lib
