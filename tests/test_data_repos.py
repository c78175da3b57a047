"""Real recordings from the GitHub sources in the training corpus (`data build --repos --esc50`):
labels per source, non-commercial files dropped, the clip set's held-out recordings never trained
on, ESC-50's Freesound duplicates dropped, and the corpus reader reading the result.

One miniature of every source, in its own layout, is built per module into a temporary folder.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from encoder import clipset, esc50
from encoder.data import build, credits, repo_labels, repos
from encoder.data.dataset import Corpus
from encoder.data.labels import CLASSES, phrases
from encoder.data.mix import clean_clip
from encoder.data.sources import Library, SourceItem

ESC50_DUP_MOD_SOUNDS = 555  # the Freesound id sources.md gives the camel files; also "in ESC-50"


def _sound(path: Path, freq: float, seconds: float = 0.6, rate: int = 16000) -> None:
    """A tone burst with a little noise; the file format follows the suffix (wav, ogg, mp3, flac)."""
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(int(freq)).standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), rate)


def _mod_sounds(repo: Path) -> None:
    for i, stem in enumerate(("dog_bark", "cat_meow", "camel_01", "camel_02", "bear", "yak", "ghost_01",
                              "node_step_snow.1", "thunder_01", "thunder_02", "thunder_03")):
        _sound(repo / "sounds" / f"sounds_{stem}.ogg", 300 + 20 * i, rate=22050)
    _sound(repo / "sounds_src" / "sounds_dog_bark.flac", 300)  # the flac master: a duplicate
    (repo / "sources.md").write_text(
        "#### General Sounds:\n\n"
        "| Filename (sounds_) / Source | Author | License | Notes |\n| --- | --- | --- | --- |\n"
        "| [dog_bark][] | a | CC0 | |\n| [cat_meow][] | b | CC BY 3.0 | |\n"
        "| [camel*][camel] | c | CC0 | |\n| [bear][]* | d | CC BY 3.0 | |\n"
        "| [yak][] | e | CC BY-NC 3.0 | |\n| [ghost][]* | f | CC BY-SA 3.0 | |\n"
        "| [thunder_0[1-3]][thunder] | g | CC0 | |\n\n"
        "#### Node Sounds:\n\n"
        "| Filename (sounds_node_) / Source | Author | License | Notes |\n| --- | --- | --- | --- |\n"
        "| [step_snow.*][step_snow] | h | CC0 | |\n\n"
        f"[camel]: https://freesound.org/s/{ESC50_DUP_MOD_SOUNDS}/\n[thunder]: https://freesound.org/s/777/\n")


def _cdda(repo: Path) -> None:
    pack = repo / "sound" / "CC-Sounds"
    table = "| File Name | Author | License | Link |\n|---|---|---|---|\n"
    for i in range(1, 4):
        _sound(pack / "plmove" / "walk_grass" / f"walk_grass_{i}.ogg", 500 + 10 * i)
    (pack / "plmove" / "walk_grass" / "credits.md").write_text(
        table + "".join(f"| walk_grass_{i}.ogg | x | **CC0** | https://freesound.org/s/{900 + i}/ |\n" for i in range(1, 4)))
    _sound(pack / "environment" / "weather" / "thunderstorm.ogg", 90, 2.0)
    (pack / "environment" / "weather" / "credits.md").write_text(table + "| thunderstorm.ogg | y | **CC BY 3.0** | |\n")
    # credits.md and credits.txt disagree about the curtains; the txt beside open_door says NC for both
    _sound(pack / "open_door" / "window" / "open_curtain.ogg", 610)
    _sound(pack / "open_door" / "window" / "open_window.ogg", 620)
    (pack / "open_door" / "window" / "credits.md").write_text(
        table + "| open_window.ogg | z | **CC0 1.0** | |\n| open_curtain.ogg | w | **CC-BY** | |\n")
    (pack / "open_door" / "window" / "credits.txt").write_text(
        '"close_curtain" and "open_curtain" by Tats14 (https://freesound.org/people/Tats14/sounds/408784/) '
        "licensed under CC-BY-NC\n")
    _sound(pack / "close_door" / "window" / "close_curtain.ogg", 630)
    (pack / "close_door" / "window" / "credits.md").write_text(table + "| close_curtain.ogg | w | **CC-BY** | |\n")
    _sound(pack / "clean_up_at_end" / "death.ogg", 640)  # no table entry: unlabelled
    (pack / "clean_up_at_end" / "credits.md").write_text(table + "| death.ogg | v | **CC0** | |\n")


def _repos(root: Path) -> None:
    """Every source in its own layout (a few files each)."""
    for folder, stem, n in (("Kopek-Part1", "dog", 10), ("Kedi-Part2", "cat", 10)):
        for i in range(n):
            _sound(root / "Animal-Sound-Dataset" / folder / f"{stem}_{i}.wav", 200 + 30 * i + len(stem), rate=22050)
    k = root / "marc-moreaux+kitchen20"  # the <owner>+<name> spelling of a fetched snapshot
    rows = [",Unnamed: 0,category,fold,orig_idx,path,take,target,usr_id"]
    for rec in range(8):
        for take in "AB":
            rel = f"audio/0-{2000 + rec}-{take}-0.wav"
            _sound(k / rel, 700 + 10 * rec, 1.0, 44100)
            rows.append(f"{len(rows)},0,blender,1,0,{rel},{take},0,{2000 + rec}")
    _sound(k / "audio/4-M-Mixer.wav-A-0.wav", 790, 1.0)  # an own recording: no Freesound id
    rows.append(f"{len(rows)},0,blender,5,0,audio/4-M-Mixer.wav-A-0.wav,A,0,M-Mixer.wav")
    (k / "kitchen20.csv").write_text("\n".join(rows) + "\n")
    for folder, f0 in (("Cello", 130), ("Flute", 880)):
        for i in range(5):
            _sound(root / "seth814" / "Audio-Classification" / "wavfiles" / folder / f"{i:08x}.wav", f0 + i)
    _mod_sounds(root / "mod-sounds")
    _cdda(root / "CDDA-Soundpacks")
    m = root / "moodist" / "public" / "sounds"
    _sound(m / "rain" / "heavy-rain.mp3", 250, 3.0)
    _sound(m / "nature" / "droplets.mp3", 1500, 2.0)
    _sound(m / "noise" / "white-noise.wav", 1000)  # generated: skipped
    d = root / "DroneAudioDataset"
    for c in range(5):
        _sound(d / "Binary_Drone_Audio" / "yes_drone" / f"B_S2_D1_067-bebop_{c:03d}_.wav", 180 + c, 1.0)
        _sound(d / "Binary_Drone_Audio" / "unknown" / f"1-100038-A-14{c}.wav", 2000 + c, 1.0)  # ESC-50: never
    _sound(d / "Binary_Drone_Audio" / "yes_drone" / "mixed_0-bebop_000_.wav", 185, 1.0)
    _sound(d / "Multiclass_Drone_Audio" / "bebop_1" / "B_S2_D1_067-bebop_000_.wav", 180, 1.0)
    for c in range(3):
        _sound(d / "Binary_Drone_Audio" / "unknown" / f"doing_the_dishes{c:03d}.wav", 3000 + c, 1.0)


def _fake_esc50(folder: Path, ids: list[int]) -> None:
    """The original ESC-50 layout, names only (2,000 clips over 50 classes; dedup reads no audio)."""
    audio = folder / "audio"
    audio.mkdir(parents=True)
    for k in range(esc50.N_CLIPS):
        fsid = ids[k] if k < len(ids) else 10**6 + k
        (audio / f"{k % 5 + 1}-{fsid}-A-{k % 50}.wav").touch()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    _repos(root)
    recs = clipset.recordings(root)
    held = clipset.held_out_recordings(recs)
    # An ESC-50 duplicate must be a recording the clip set does not hold out, or it is dropped as held out.
    kitchen_ok = sorted(r.recording for r in recs if r.source == "kitchen20" and (r.source, r.recording) not in held
                        and r.recording.removeprefix("freesound-").isdigit())
    dup = int(kitchen_ok[0].removeprefix("freesound-"))
    esc = tmp_path_factory.mktemp("esc50")
    _fake_esc50(esc, [dup, ESC50_DUP_MOD_SOUNDS])
    return {"root": root, "recs": recs, "held": held, "dup": dup, "esc": esc,
            "cache": tmp_path_factory.mktemp("cache")}


@pytest.fixture(scope="module")
def built(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "v2"
    rc = build.main(["--repos", str(world["root"]), "--esc50", str(world["esc"]), "--out", str(out),
                     "--cache", str(world["cache"]), "--no-synth", "--packs", "--hours", "0.04", "--seed", "1"])
    assert rc == 0
    with open(out / "manifest.jsonl") as f:
        records = [json.loads(line) for line in f]
    return out, records, json.loads((out / "build_info.json").read_text())


def _clean(records: list[dict]) -> dict[str, dict]:
    """origin file -> its clean clip."""
    return {r["origin"]: r for r in records if r["kind"] == "clean"}


# --- the tables --------------------------------------------------------------------------------

def test_every_label_table_names_corpus_classes():
    clip_set_words = {*clipset.ANIMAL_FOLDERS.values(), *clipset.KITCHEN20_NAMES.values(),
                      *clipset.INSTRUMENT_FOLDERS.values(), *clipset.MOD_SOUNDS.values(), *clipset.MOODIST.values()}
    assert clip_set_words <= set(repo_labels.CLIPSET_LABELS)
    assert set(repo_labels.CLIPSET_LABELS.values()) <= set(CLASSES)
    for table in (repo_labels.MOD_SOUNDS, repo_labels.MOODIST, repo_labels.CDDA, repo_labels.SPEECH_COMMANDS):
        assert {lab for labels in table.values() for lab in labels} <= set(CLASSES)


def test_a_folder_entry_covers_its_files_unless_a_longer_key_says_otherwise():
    t = {"plmove": ("footsteps",), "plmove/walk_water": ("footsteps", "splash"), "fire_gun": (),
         "fire_gun/handguns": ("gunshot",)}
    assert repo_labels.lookup(t, "plmove/walk_t_concrete") == ("footsteps",)
    assert repo_labels.lookup(t, "plmove/walk_water") == ("footsteps", "splash")
    assert repo_labels.lookup(t, "fire_gun/handguns/handgun") == ("gunshot",)
    assert repo_labels.lookup(t, "fire_gun/monster_guns/acid_sniper") == ()  # on purpose unlabelled
    assert repo_labels.lookup(t, "menu_move/menu_move") == ()  # no entry: unlabelled
    assert repo_labels.lookup(t, "plmovement") == ()  # prefixes end at a boundary


def test_mod_sounds_credits_rows_cover_their_takes(tmp_path):
    _mod_sounds(tmp_path)
    tables = credits.read_mod_sounds(tmp_path / "sources.md")
    general, node = tables["sounds_"], tables["sounds_node_"]
    assert general.lookup("camel_02").freesound_ids == (ESC50_DUP_MOD_SOUNDS,)  # [camel*][camel]
    assert general.lookup("ghost_damage").licence == "CC BY-SA 3.0"  # [ghost][]*: the row covers ghost*
    assert general.lookup("bear").licence == "CC BY 3.0" and general.lookup("thunder_03").freesound_ids == (777,)
    assert general.lookup("yak").non_commercial and not general.lookup("dog_bark").non_commercial
    assert node.lookup("step_snow.1").licence == "CC0" and general.lookup("zipper") is None


def test_a_clean_clip_is_one_item_alone_with_exact_events():
    lib = Library()
    x = np.sin(np.arange(8000) / 5.0).astype(np.float32) * 0.5
    lib.add(SourceItem("a", "s:a", "rain", "repo:x", "CC0", extra_labels=["thunder"]), x)
    lib.add(SourceItem("b", "s:b", "", "repo:x", "CC0"), x)
    clip = clean_clip(random.Random(0), lib, lib.items[0])
    assert len(clip.audio) == 16000 and clip.background == {"kind": "none"} and clip.source_ids == ["s:a"]
    assert {e["label"] for e in clip.events} == {"rain", "thunder"}
    a, b = (round(clip.events[0][k] * 16000) for k in ("onset_s", "offset_s"))  # whole ms, rounded outwards
    assert b - a >= 8000 and np.abs(clip.audio[:a]).max(initial=0) == 0 and np.abs(clip.audio[b:]).max(initial=0) == 0
    assert clean_clip(random.Random(0), lib, lib.items[1]).events == []


# --- the built corpus --------------------------------------------------------------------------

def test_labels_are_read_in_each_sources_layout(built):
    out, records, info = built
    clean = _clean(records)
    by_origin = {o: set(r["labels"]) for o, r in clean.items()}
    expect = {
        "Kopek-Part1/dog_": {"dog"}, "Kedi-Part2/cat_": {"cat"}, "audio/0-20": {"blender"},
        "wavfiles/Cello/": {"cello"}, "wavfiles/Flute/": {"flute"},
        "sounds/sounds_dog_bark.ogg": {"dog"}, "sounds/sounds_bear.ogg": {"bear"},
        "sounds/sounds_node_step_snow.1.ogg": {"footsteps"}, "sounds/sounds_ghost_01.ogg": set(),
        "plmove/walk_grass/walk_grass_": {"footsteps"}, "weather/thunderstorm.ogg": {"rain", "thunder"},
        "open_door/window/open_window.ogg": set(),  # windows: unlabelled on purpose
        "clean_up_at_end/death.ogg": set(), "nature/droplets.mp3": {"water_drops"},
        "yes_drone/B_S2_D1_067-bebop_000_.wav": {"drone"}, "unknown/doing_the_dishes000.wav": {"washing_dishes"},
    }
    for fragment, labels in expect.items():
        hits = [lab for o, lab in by_origin.items() if fragment in o]
        assert hits, f"no clean clip from {fragment}"
        assert all(h == labels for h in hits), (fragment, hits)
    unlabelled = [r for r in clean.values() if not r["labels"]]
    assert unlabelled and all(not r["captions"] and not r["events"] and r["split"] == "train" for r in unlabelled)
    for r in clean.values():
        for cap in r["captions"]:
            assert all(any(p in cap.lower() for p in phrases(lab)) for lab in r["labels"]), cap
    assert info["repo_sources"]["mod-sounds"]["licences"]["CC0"] >= 1
    assert set(info["repo_sources"]) == {s.source for s in repos.SOURCES}


def test_non_commercial_files_are_dropped(built):
    _, records, info = built
    origins = " ".join(_clean(records))
    for name in ("open_curtain", "close_curtain", "sounds_yak"):
        assert name not in origins
    assert info["repo_sources"]["CDDA-Soundpacks"]["non_commercial"] == 2
    assert info["repo_sources"]["mod-sounds"]["non_commercial"] == 1


def test_no_clip_set_recording_reaches_the_corpus(world, built):
    _, records, info = built
    held = world["held"]
    assert len({s for s, _ in held}) >= 3  # the miniature holds out recordings of several sources
    held_ids = {f"{s}:{r}" for s, r in held}
    assert not held_ids & {sid for r in records for sid in r["source_ids"]}
    # ...and every other file of those sources does: the drop is exactly the clip set.
    clean = set(_clean(records))
    repo_of = {s.source: clipset.find_repo(world["root"], s.owner, s.name) for s in repos.SOURCES}
    for rec in world["recs"]:
        rel = str(rec.path.relative_to(repo_of[rec.source]))
        esc_dup = rec.recording == f"freesound-{world['dup']}"
        assert (rel in clean) == ((rec.source, rec.recording) not in held and not esc_dup), rel
    assert sum(v["held_out"] for v in info["repo_sources"].values()) == sum(
        (r.source, r.recording) in held for r in world["recs"])


def test_esc50_duplicates_are_dropped_and_esc50_is_never_read(world, built):
    _, records, info = built
    origins = " ".join(_clean(records))
    assert f"-{world['dup']}-" not in origins and "sounds_camel" not in origins
    assert info["repo_sources"]["kitchen20"]["esc50_duplicates"] == 2  # takes A and B
    assert info["repo_sources"]["mod-sounds"]["esc50_duplicates"] == 2  # camel_01, camel_02
    drone = info["repo_sources"]["DroneAudioDataset"]["skipped"]
    assert drone == {"duplicate": 1, "esc50_benchmark": 5, "mixed_with_noise": 1}
    assert "1-100038-A" not in origins and "mixed_0" not in origins and info["esc50_dedup"]


def test_without_esc50_the_build_warns_in_one_line_and_cannot_dedup(world, tmp_path, capsys):
    out = tmp_path / "nodedup"
    rc = build.main(["--repos", str(world["root"]), "--out", str(out), "--cache", str(world["cache"]),
                     "--no-synth", "--packs", "--hours", "0.01", "--seed", "1"])
    assert rc == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "--esc50" in line]
    assert len(warning) == 1 and warning[0].startswith("warning:")
    with open(out / "manifest.jsonl") as f:
        origins = " ".join(json.loads(line).get("origin") or "" for line in f)
    assert f"-{world['dup']}-" in origins


def test_the_corpus_reader_reads_clean_clips_and_mixtures(built):
    out, records, info = built
    corpus = Corpus(out)
    assert len(corpus) == len(records) and info["clips_by_kind"]["clean"] > 0 and info["clips_by_kind"]["mix"] > 0
    assert corpus.clips("dev")
    for c, r in zip(corpus, records, strict=True):
        x = corpus.audio(c)
        assert x.shape == (c.n_samples,) and np.isfinite(x).all() and np.abs(x).max() <= 1.0
        assert set(c.labels) <= set(corpus.labels)
        assert c.kind == r["kind"]
        if r["kind"] == "clean":
            assert c.background == {"kind": "none"} and len(c.source_ids) == 1 and c.duration_s >= 1.0
            assert {e.label for e in c.events} == set(c.labels)
        y = corpus.frame_targets(c)
        assert y.shape == (len(corpus.labels), c.n_samples // 160)
    assert {"thunder", "rain", "drone", "blender", "cello"} <= set(corpus.classes)
    from encoder.data.teacher import TeacherScores

    assert set(TeacherScores(out).index) == {c.id for c in corpus}
