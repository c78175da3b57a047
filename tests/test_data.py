"""Training-corpus builder: splits held out by recording, exact events, captions, reader round trip.

One tiny corpus (fluidsynth + espeak only) is built per module into a temporary folder.
"""

from __future__ import annotations

import json
import random
import shutil
import struct

import numpy as np
import pytest

from encoder.data import build, render
from encoder.data.captions import make_captions
from encoder.data.dataset import Corpus
from encoder.data.labels import CLASSES, phrases
from encoder.data.midi import Note, Part, midi_bytes
from encoder.data.packs import label_from_path, recording_id
from encoder.data.sources import Library, SourceItem, assign_splits

needs_synth = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or shutil.which("espeak-ng") is None
    or not render.GM_SF2.exists(), reason="needs fluidsynth, fluid-soundfont-gm/gs and espeak-ng")
MIN_TINY_CLASSES = 60  # classes with source sounds in the tiny build
MIN_TINY_LABELS_USED = 30  # distinct labels that actually occur in its clips
WIN = 480  # 30 ms


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    cache = tmp_path_factory.mktemp("sources")
    rc = build.main(["--tiny", "--out", str(out), "--cache", str(cache), "--seed", "3"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return Corpus(corpus_dir)


@pytest.fixture(scope="module")
def records(corpus_dir):
    with open(corpus_dir / "manifest.jsonl") as f:
        return [json.loads(line) for line in f]


@needs_synth
def test_dev_split_is_held_out_by_source(corpus):
    train = {s for c in corpus.clips("train") for s in c.source_ids}
    dev = {s for c in corpus.clips("dev") for s in c.source_ids}
    assert corpus.clips("dev"), "the tiny build should have some dev clips"
    assert not train & dev


@needs_synth
def test_durations_in_range(corpus):
    d = np.array([c.duration_s for c in corpus])
    assert d.min() >= 1.0 and d.max() <= 30.0
    assert 2.0 <= np.median(d) <= 10.0  # skewed towards 2-10 s


@needs_synth
def test_events_lie_inside_their_clip(corpus):
    for c in corpus:
        assert c.events
        for e in c.events:
            assert e.label in CLASSES and e.label in c.labels
            assert 0.0 <= e.onset_s < e.offset_s <= c.duration_s + 1e-3
        assert set(c.labels) == {e.label for e in c.events}


def _rms_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-20)


@needs_synth
def test_events_match_audio_energy(corpus):
    checked_silent = 0
    for c in corpus:
        audio = corpus.audio(c)
        peak_db = 20 * np.log10(np.abs(audio).max())
        fg = [e for e in c.events if not (c.background.get("kind") == "ambience"
                                          and e.label == c.background["label"] and e.onset_s == 0.0)]
        inside = np.zeros(len(audio), bool)
        for e in fg:
            a, b = round(e.onset_s * 16000), round(e.offset_s * 16000)
            inside[a:b] = True
            # Sound starts at the onset and is still there just before the offset.
            assert _rms_db(audio[a : a + WIN]) > peak_db - 60, (c.id, e)
            assert _rms_db(audio[max(a, b - WIN) : b]) > peak_db - 60, (c.id, e)
        outside = audio[~inside]
        if c.background["kind"] == "none":
            if len(outside):
                assert np.abs(outside).max() < 1e-3, c.id  # nothing sounds outside the events
                checked_silent += 1
        elif len(outside) > 8000:
            assert _rms_db(audio[inside]) > _rms_db(outside), c.id
    assert checked_silent > 0


@needs_synth
def test_every_caption_names_every_label(corpus):
    for c in corpus:
        assert len(c.captions) >= 2
        for cap in c.captions:
            low = cap.lower()
            for label in c.labels:
                assert any(p in low for p in phrases(label)), (cap, label)


@needs_synth
def test_manifest_round_trips_through_reader(corpus, records):
    assert len(corpus) == len(records)
    for r, c in zip(records, corpus, strict=True):
        assert c.id == r["id"] and c.split == r["split"] and list(c.labels) == r["labels"]
        assert [e.__dict__ for e in c.events] == r["events"]
        x = corpus.audio(c)
        assert x.dtype == np.float32 and x.shape == (r["n_samples"],) and np.abs(x).max() <= 1.0
    # Clips tile their shards without overlap.
    by_shard: dict[str, list] = {}
    for c in corpus:
        by_shard.setdefault(c.shard, []).append((c.offset, c.n_samples))
    for spans in by_shard.values():
        spans.sort()
        assert all(a + n == b for (a, n), (b, _) in zip(spans, spans[1:], strict=False))
    c0 = corpus.clips("train")[0]
    y = corpus.frame_targets(c0)
    assert y.shape == (len(corpus.labels), c0.n_samples // 160) and y.max() == 1.0


@needs_synth
def test_tiny_build_has_many_classes(corpus):
    assert len(corpus.classes) >= MIN_TINY_CLASSES
    assert len({lab for c in corpus for lab in c.labels}) >= MIN_TINY_LABELS_USED
    for label, entry in corpus.classes.items():
        assert entry["names"] == list(phrases(label))
        assert entry["sources"]["train"] >= 1  # every class is trainable


@needs_synth
def test_build_info_and_idempotent_rebuild(corpus_dir, capsys):
    info = json.loads((corpus_dir / "build_info.json").read_text())
    assert info["hours"]["train"] > 0.03 and info["sources"]["fluidsynth"]["licence"]
    before = (corpus_dir / "manifest.jsonl").stat().st_mtime
    rc = build.main(["--tiny", "--out", str(corpus_dir), "--cache", str(corpus_dir.parent / "x"),
                     "--seed", "3"])
    assert rc == 0
    assert (corpus_dir / "manifest.jsonl").stat().st_mtime == before


# ------------------------------------------------------------ unit specifications


def test_split_keeps_single_source_class_in_train():
    items = [SourceItem(f"i{k}", "only-one", "dog", "x", "x") for k in range(3)]
    items += [SourceItem(f"j{k}", f"voice{k}", "male_speech", "x", "x") for k in range(200)]
    for seed in range(5):
        split = assign_splits(items, dev_fraction=0.99, seed=seed)
        assert split["only-one"] == "train"
        assert any(split[f"voice{k}"] == "train" for k in range(200))
    split = assign_splits(items, dev_fraction=0.1, seed=0)
    n_dev = sum(split[f"voice{k}"] == "dev" for k in range(200))
    assert 5 <= n_dev <= 40


@pytest.mark.parametrize("path,label", [
    ("usr/share/games/scorched3d/wav/misc/dog2.wav", "dog"),
    ("ufoai/base/0snd.pk3/sound/misc/breakglass03.ogg", "glass_breaking"),
    ("lincity-ng/sounds/SportsCroud2.wav", "crowd"),
    ("sonic-pi/samples/misc_crow.flac", "crow"),
    ("minetest/sounds/doors_door_close.ogg", "door_slam"),
    ("wesnoth/1.16/data/core/sounds/human-die-2.ogg", "groan"),
    ("wesnoth/1.16/data/core/sounds/ambient/campfire.ogg", "fire"),
    ("sonic-pi/samples/drum_splash_soft.flac", "cymbal"),
    ("freedesktop/stereo/audio-channel-front-left.oga", "-"),
    ("widelands/data/sound/ingame_07.ogg", None),
    # asterisk's prompts are all speech, whatever word a file is named for
    ("usr/share/asterisk/sounds/en_US_f_Allison/digits/alarm.wav", "female_speech"),
    ("usr/share/scratch/Media/Sounds/Human/Cough-female.wav", "coughing"),
    ("usr/share/scratch/Media/Sounds/Human/BabyCry.mp3", "baby_crying"),
    ("usr/share/scratch/Media/Sounds/Effects/Typing.mp3", "typing"),
    ("usr/share/scratch/Media/Sounds/Animal/SeaLion.mp3", "sea_lion"),
    # the package's own folder name is not a vinyl scratch
    ("usr/share/scratch/Media/Sounds/Effects/SewingMachine.mp3", "machinery"),
    ("usr/share/scratch/Media/Sounds/Instruments/Tambura.wav", "-"),
])
def test_pack_labels_from_file_names(path, label):
    assert label_from_path(path) == label


def test_a_library_cache_key_survives_dots_in_the_package_name(tmp_path):
    # "wesnoth-1.16-data": each key must be its own cache, not one file cut at the first dot
    lengths = {"aaaa": 16000, "bbbb": 9600}
    for key, n in lengths.items():
        lib = Library()
        assert lib.add(SourceItem(key, key, "dog", "pack:wesnoth-1.16-data", "GPL-2+"),
                       np.sin(np.arange(n) / 3.0).astype(np.float32))
        lib.save(tmp_path / f"pack-wesnoth-1.16-data-{key}")
    for key, n in lengths.items():
        stem = tmp_path / f"pack-wesnoth-1.16-data-{key}"
        assert Library.cached(stem)
        got = Library.load(stem)
        assert [it.item_id for it in got.items] == [key] and abs(len(got.get_float(got.items[0])) - n) < 400
    assert not Library.cached(tmp_path / "pack-wesnoth-1.16-data-cccc")


def test_recording_id_groups_takes():
    assert recording_id("p", "a/dog2.wav") == recording_id("p", "a/dog.wav") == "p:a/dog"
    assert recording_id("p", "kit/Crash-Hard.wav") == recording_id("p", "kit/Crash-Soft.wav")
    assert recording_id("p", "a/wolf-growl-3.ogg") != recording_id("p", "a/wolf-die-1.ogg")


def test_midi_writer_structure():
    data = midi_bytes([Part(0, 123, [Note(0.0, 1.0, 60, 100)], bank=1)], end_s=3.0)
    assert data[:4] == b"MThd" and struct.unpack(">IHHH", data[4:14]) == (6, 0, 1, 480)
    assert data[14:18] == b"MTrk" and struct.unpack(">I", data[18:22])[0] == len(data) - 22
    body = data[22:]
    assert bytes([0xB0, 0, 1]) in body and bytes([0xC0, 123]) in body
    assert bytes([0x90, 60, 100]) in body and body.endswith(b"\xff\x2f\x00")


def test_captions_count_and_order():
    rng = random.Random(0)
    events = [{"label": "dog", "onset_s": 0.5, "offset_s": 1.0},
              {"label": "dog", "onset_s": 1.5, "offset_s": 2.0},
              {"label": "door_slam", "onset_s": 3.0, "offset_s": 3.4}]
    caps = make_captions(rng, events, {"kind": "ambience", "label": "rain"}, n=8)
    assert any("twice" in c for c in caps)

    def first(cap: str, label: str) -> int:
        return min(cap.lower().find(p) for p in phrases(label) if p in cap.lower())

    assert all(first(c, "dog") < first(c, "door_slam") for c in caps)
    assert all(any(p in c.lower() for p in phrases("rain")) for c in caps)


def test_missing_tool_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(render.ToolMissing) as e:
        render.require_tool("fluidsynth", "fluidsynth")
    assert "\n" not in str(e.value) and "apt-get install fluidsynth" in str(e.value)


@needs_synth
def test_build_writes_yamnet_teacher_scores_for_every_clip(corpus, corpus_dir):
    from encoder.data.teacher import TeacherScores
    from encoder.data.yamnet import patches

    teacher = TeacherScores(corpus_dir)
    assert set(teacher.index) == {c.id for c in corpus}
    clip = corpus.clips()[0]
    start, n = teacher.index[clip.id]
    assert n == len(patches(corpus.audio(clip)))  # one row per 0.96 s YAMNet patch
    cols = teacher.column_targets(clip.id, 0.0, 20, 0.16)
    assert cols.shape == (20, 521) and 0.0 <= cols.min() and cols.max() <= 1.0
    assert np.array_equal(cols[0], np.asarray(teacher.scores[start], np.float32))  # 0.08 s: nearest patch is the first


def test_nearest_yamnet_patch_by_centre():
    from encoder.data.yamnet import nearest_patch

    # patch p covers [0.48 p, 0.48 p + 0.96 + 0.016) s, so its centre is 0.496 + 0.48 p
    t = np.array([0.0, 0.496, 0.735, 0.737, 0.976, 5.0])
    assert nearest_patch(t, 4).tolist() == [0, 0, 0, 1, 1, 3]  # before the first / past the last: clipped


@needs_synth
def test_training_on_a_built_corpus_learns_from_the_teacher(corpus_dir, tmp_path):
    from encoder.train import TrainConfig, train

    cfg = TrainConfig(corpus=str(corpus_dir), out=str(tmp_path), steps=2, batch_size=4, max_seconds=2.0,
                      warmup_steps=1, log_every=1, ckpt_every=100)
    hist = train(cfg)["history"]
    assert all(h["distill"] > 0 for h in hist)


@needs_synth
def test_eval_command_scores_both_systems_on_the_same_dev_clips(corpus, corpus_dir, tmp_path):
    """`main.py eval` end to end: the shipped model through ONNX Runtime and YAMNet, one table."""
    import subprocess
    import sys

    out = tmp_path / "eval.json"
    cmd = [sys.executable, "main.py", "eval", "--model", "models/slap-tiny.safetensors", "--corpus", str(corpus_dir),
           "--cache-dir", str(tmp_path / "cache"), "--max-clips", "6", "--threads", "1", "--json", str(out),
           "--clipset", "none"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| top1 |" in run.stdout and "YAMNet baseline" in run.stdout
    res = json.loads(out.read_text())["dev"]
    assert res["detector"] == "engine"  # main.py eval scores events as the engine makes them
    assert "| event_F1_raw |" in run.stdout
    n_dev = sum(c.n_samples >= 96 * 160 for c in corpus.clips("dev"))
    assert res["clips"] == min(6, n_dev) and sum(res["clips_by_bed"].values()) == res["clips"]
    for system in ("slap", "yamnet"):
        for key in ("top1", "top5", "mAP", "segment_F1", "event_F1", *res["clips_by_bed"]):
            assert 0.0 <= res[system][key] <= 1.0, (system, key)
    assert 0.0 <= res["slap_paraphrase"]["top1"] <= 1.0
