"""Real-recording evaluation: the teachers' interface, the prompt mapping, ESC-50's reader, our
held-out clip set and `main.py eval` over it, ours beside mn04, YAMNet and their ensemble."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from encoder import clipset, esc50
from encoder.teachers.mn04 import teacher_file

ROOT = Path(__file__).resolve().parents[1]
try:
    teacher_file("efficientat_mn04_as.safetensors", "teacher weights")
    HAVE_TEACHERS = True
except FileNotFoundError:
    HAVE_TEACHERS = False
needs_teachers = pytest.mark.skipif(not HAVE_TEACHERS, reason="../shared/teachers not beside the repo")
SAMPLES = ROOT.parent / "shared" / "teachers" / "samples"


# --- prompt mapping ----------------------------------------------------------------------------

def test_a_prompt_reads_its_nearest_class_names():
    from encoder.teachers.prompt_map import PromptMap

    pm = PromptMap(("Dog", "Bark", "Music", "Rain"), ["the sound of a dog", "music", "rain falling"])
    assert np.allclose(pm.weights.sum(1), 1.0)
    assert pm.nearest(0, 1)[0][0] in ("Dog", "Bark")
    assert pm.nearest(1, 1)[0][0] == "Music" and pm.nearest(2, 1)[0][0] == "Rain"
    probs = np.array([[0.9, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 0.7]], np.float32)
    s = pm(probs)
    assert s.shape == (2, 3) and s[0, 0] > 0.7 and s[1, 2] > 0.6 and s[0, 2] < 0.05


def test_a_class_the_tagger_lacks_does_not_read_as_absent():
    from encoder.teachers.prompt_map import PromptMap

    pm = PromptMap(("Dog", "Bark", "Music"), ["a dog barking"])
    both = pm(np.array([[0.8, 0.8, 0.0]], np.float32))
    bark_missing = pm(np.array([[0.8, np.nan, 0.0]], np.float32))
    assert np.isfinite(bark_missing).all()
    assert bark_missing[0, 0] == pytest.approx(both[0, 0], abs=0.02)


# --- taggers -----------------------------------------------------------------------------------

@needs_teachers
def test_yamnet_classes_sit_on_audioset_by_mid():
    from encoder.teachers.taggers import audioset_classes, yamnet_to_audioset

    idx = yamnet_to_audioset()
    assert len(idx) == 521 and len(set(idx.tolist())) == 521
    assert len(audioset_classes()[0]) == 527


@needs_teachers
def test_every_teacher_hears_the_three_sample_recordings():
    from encoder.teachers.taggers import EnsembleTagger, MN04Tagger, YamnetTagger, class_names

    names = class_names()
    audio = [sf.read(str(SAMPLES / f"{n}.wav"), dtype="float32")[0] for n in ("speech", "music", "typing")]
    mn04, yam = MN04Tagger(), YamnetTagger(ROOT / "cache")
    outs = [mn04.predict(audio, 32000), yam.predict(audio, 32000)]
    ens = EnsembleTagger([mn04, yam]).combine(outs)
    for out in [*outs, ens]:
        top = [names[int(np.nanargmax(p))] for p in out.clip_probs]
        assert top[0] == "Speech" and top[1] == "Music" and top[2] in ("Typing", "Computer keyboard")
    # the ensemble is the mean where both teachers have the class, mn04 alone where YAMNet has none
    speech = names.index("Speech")
    assert ens.clip_probs[0, speech] == pytest.approx((outs[0].clip_probs[0, speech] + outs[1].clip_probs[0, speech]) / 2)
    lacking = np.flatnonzero(np.isnan(outs[1].clip_probs[0]))
    assert len(lacking) == 6
    assert np.allclose(ens.clip_probs[:, lacking], outs[0].clip_probs[:, lacking])
    # frames on the first tagger's 320 ms clock
    assert len(ens.frame_probs[0]) == len(outs[0].frame_probs[0])


# --- ESC-50 reader -----------------------------------------------------------------------------

def _chunks(folder: Path, clip: str, target: int, n: int = esc50.CHUNKS, value: float = 0.1) -> None:
    fold, fsid, take = clip.split("-")
    for k in range(n):
        sf.write(str(folder / f"{fold}-{fsid}-{take}-{target}{k}.wav"), np.full(1600, value * (k + 1), np.float32), 16000)


def test_esc50_clips_are_their_five_chunks_in_order(tmp_path):
    unknown = tmp_path / "Binary_Drone_Audio" / "unknown"
    unknown.mkdir(parents=True)
    _chunks(unknown, "1-100038-A", 14)
    _chunks(unknown, "2-5000-B", 0)
    sf.write(str(unknown / "running_tap002.wav"), np.zeros(160, np.float32), 16000)  # not ESC-50
    clips = esc50.load(tmp_path, expect_full=False)
    assert [c.clip_id for c in clips] == ["1-100038-A-14", "2-5000-B-0"]
    assert esc50.CLASSES[clips[0].target] == "chirping_birds" and clips[0].fold == 1 and clips[0].freesound_id == 100038
    x = clips[0].audio()
    assert len(x) == 5 * 1600 and np.allclose(x[::1600], [0.1, 0.2, 0.3, 0.4, 0.5], atol=1e-4)
    assert esc50.prompts()[14] == "the sound of chirping birds"


def test_a_partial_or_absent_esc50_is_refused_in_one_line(tmp_path):
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    _chunks(unknown, "1-100038-A", 14)
    with pytest.raises(ValueError, match="found 1 ESC-50 clips over 1 classes, expected 2000 over 50"):
        esc50.load(tmp_path)
    _chunks(unknown, "3-7-A", 3, n=4)
    with pytest.raises(ValueError, match=r"3-7-A-3 has chunks \[0, 1, 2, 3\]"):
        esc50.load(tmp_path, expect_full=False)
    with pytest.raises(FileNotFoundError, match="ESC-50 folder not found"):
        esc50.load(tmp_path / "nowhere")


# --- the clip set ------------------------------------------------------------------------------

def _tone(path: Path, freq: float, seconds: float, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def _repos(root: Path) -> None:
    """A miniature of three clip-set sources, in their own layouts."""
    for folder, n in (("Kopek-Part1", 12), ("Kedi-Part1", 12), ("Inek", 4)):
        for i in range(n):
            _tone(root / "Animal-Sound-Dataset" / folder / f"{folder[:3].lower()}_{i}.wav", 300 + 40 * i, 1.0, 22050)
    k = root / "kitchen20"
    rows = ["i,Unnamed: 0,category,fold,orig_idx,path,take,target,usr_id"]
    for rec in range(10):
        for take in "ABC":
            rel = f"audio/0-{1000 + rec}-{take}-0.wav"
            _tone(k / rel, 500 + rec * 10, 5.0)
            rows.append(f"{len(rows)},0,blender,1,0,{rel},{take},0,{1000 + rec}")
    (k / "kitchen20.csv").write_text("\n".join(rows) + "\n")
    _tone(root / "moodist" / "public" / "sounds" / "rain" / "heavy-rain.wav", 200, 30.0)


def test_recordings_are_held_out_whole_and_the_rule_is_stable(tmp_path):
    _repos(tmp_path)
    recs = clipset.recordings(tmp_path)
    assert {r.label for r in recs} == {"dog", "cat", "cow", "blender"}  # moodist reads mp3 only
    held = clipset.held_out_recordings(recs)
    assert held == clipset.held_out_recordings(list(reversed(recs)))  # order-free
    by_class: dict[str, set[str]] = {}
    for r in recs:
        by_class.setdefault(r.label, set()).add(r.recording)
    for label, ids in by_class.items():
        source = next(r.source for r in recs if r.label == label)
        k = sum((source, i) in held for i in ids)
        assert k == max(1, min(clipset.CAP, int(clipset.FRACTION * len(ids)))), label
    # every take of a held-out Kitchen20 recording goes with it
    kit = [r for r in recs if r.source == "kitchen20"]
    for rec in {r.recording for r in kit}:
        flags = {(r.source, r.recording) in held for r in kit if r.recording == rec}
        assert len(flags) == 1


def test_main_py_data_clipset_and_eval_score_every_system(tmp_path):
    _repos(tmp_path / "repos")
    out = tmp_path / "clipset"
    r = subprocess.run([sys.executable, "main.py", "data", "clipset", "--from", str(tmp_path / "repos"), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    items = clipset.load(out).items
    assert r.stdout.startswith(f"{len(items)} clips") and len(items) >= 5
    assert all(it.seconds <= clipset.MAX_SECONDS for it in items)
    assert {it.source for it in items} == {"Animal-Sound-Dataset", "kitchen20"}
    if not HAVE_TEACHERS:
        pytest.skip("../shared/teachers not beside the repo")
    r = subprocess.run([sys.executable, "main.py", "eval", "--clipset", str(out), "--corpus", str(tmp_path / "none"),
                        "--json", str(tmp_path / "res.json"), "--cache-dir", str(ROOT / "cache")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "none" in r.stderr  # a corpus asked for must exist
    r = subprocess.run([sys.executable, "main.py", "eval", "--clipset", str(out), "--band-limited",
                        "--json", str(tmp_path / "res.json"), "--cache-dir", str(ROOT / "cache")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "| clip set zero-shot" in r.stdout and "| ours | mn04 | yamnet | ensemble |" in r.stdout
    results = json.loads((tmp_path / "res.json").read_text())
    res = results["clipset"]
    assert set(res["metrics"]) == {"ours", "mn04", "yamnet", "ensemble"}
    assert set(res["per_group"]["mn04"]) == {"Animal-Sound-Dataset", "kitchen20"}
    # --band-limited: the same set through 8 kHz and back, every system, and each one's top-1 change
    narrow = results["clipset_8k"]
    assert set(narrow["metrics"]) == set(res["metrics"]) and narrow["clips"] == res["clips"]
    assert "| clip set zero-shot, 8 kHz and back" in r.stdout
    change = next(line for line in r.stdout.splitlines() if line.startswith("| top-1 change from the full band"))
    expected = [f"{100 * (narrow['metrics'][s]['top1'] - res['metrics'][s]['top1']):+.1f}"
                for s in ("ours", "mn04", "yamnet", "ensemble")]
    assert change.split("|")[2:-1] == [f" {e} " for e in expected]


def test_the_band_limited_copy_keeps_nothing_above_4_khz():
    from encoder.evaluate import band_limited_copy

    t = np.arange(16000) / 16000
    tone = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    (narrow,) = band_limited_copy([tone])
    spectrum = np.abs(np.fft.rfft(narrow)) / len(narrow)
    assert len(narrow) == len(tone)
    assert spectrum[1000] > 0.1 and spectrum[6000] < 1e-3  # 1 kHz kept, 6 kHz gone


def test_a_clip_set_asked_for_but_absent_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "main.py", "eval", "--no-teachers", "--clipset", str(tmp_path / "absent")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "main.py data clipset" in r.stderr
