"""`main.py tag` over every kind of input a user has (tests/input_sweep.py), run as a user runs it:
one subprocess over the whole folder per output mode (--scores, --json, text).

Every readable input gets its line, a clip shorter than the model's smallest input included;
every unreadable one gets one error line naming the file and why; the files after a bad one are
still scored; a file deleted while the batch runs is one of those errors; no traceback; the exit
status says that some files failed. Mechanics only: seeded random weights (slap-tiny).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.input_sweep import HAVE_FFMPEG, INPUTS, make_inputs, noise, written

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PROMPTS = ["a door slamming", "keys dropping"]
MODES = {"scores": ["--scores"], "json": ["--json"], "text": []}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> list[Path]:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def run_tag(paths: list[Path], flags: list[str]) -> tuple[list[str], list[str], int]:
    """`main.py tag PATHS... FLAGS`; the vanishing input is deleted once the first file's line is out.
    Returns stdout lines, stderr lines, exit status."""
    for path, item in zip(paths, INPUTS):
        if item.vanishes and not path.exists():
            item.make(path)  # there when the command starts, as a shell glob found it
    args = [sys.executable, "main.py", "tag", *map(str, paths), "--model", "slap-tiny"]
    for prompt in PROMPTS:
        args += ["--prompt", prompt]
    proc = subprocess.Popen(args + flags, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)  # a full pipe would block it
    reader.start()
    first = proc.stdout.readline()
    for path, item in zip(paths, INPUTS):
        if item.vanishes:
            path.unlink()  # files before it are being scored meanwhile
    # read the rest through the same buffered stream: communicate() reads the pipe itself and would
    # lose lines that readline() had already buffered (two files finishing together)
    out = proc.stdout.read()
    proc.wait(timeout=300)
    reader.join(timeout=30)
    return (first + out).splitlines(), "".join(err).splitlines(), proc.returncode


def line_of(item, path: Path, mode: str, stdout: list[str]) -> list[str]:
    """The stdout lines that are this input's own result line."""
    if mode == "text":
        return [line for line in stdout if line.split()[:2] == [item.name, "done"]]
    rows = [json.loads(line) for line in stdout]
    kind = None if mode == "scores" else "file_end"
    return [json.dumps(r) for r in rows if r.get("file") == str(path) and r.get("kind") == kind]


@pytest.mark.parametrize("mode", list(MODES))
def test_every_input_gets_a_result_line_or_one_error_line_and_the_batch_goes_on(sweep, mode):
    stdout, stderr, status = run_tag(sweep, MODES[mode])
    assert not any("Traceback" in line for line in stderr), "\n".join(stderr)
    errors = [line for line in stderr if line.startswith("main.py tag: ")]
    results = []  # input index of each result line, in output order
    for i, (item, path) in enumerate(zip(INPUTS, sweep)):
        mine = line_of(item, path, mode, stdout)
        own_errors = [line for line in errors if line.startswith(f"main.py tag: {path}: ")]
        if item.outcome == "refused":
            assert not mine, f"{item.name}: {mine}"
        else:
            assert len(mine) == 1, f"{item.name}: no result line in {stdout}"
            results.append(i)
        if item.outcome == "scored":
            assert not own_errors, f"{item.name}: {own_errors}"
        else:
            assert len(own_errors) == 1 and item.reason in own_errors[0], f"{item.name}: {own_errors}"
        if mode == "scores" and mine:
            scores = json.loads(mine[0])["scores"]
            assert set(scores) == set(PROMPTS)
            assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in scores.values()), scores
    assert len(errors) == sum(item.outcome != "scored" for item in INPUTS), "\n".join(errors)
    # the files after each bad one were scored, in the order given
    order = [i for i in range(len(INPUTS)) if INPUTS[i].outcome != "refused"]
    assert results == order
    bad = [i for i, item in enumerate(INPUTS) if item.outcome != "scored"]
    assert all(any(j > b for j in results) for b in bad)
    assert status == 1


def test_a_nan_bearing_file_is_scored_with_its_bad_samples_as_zero_and_says_so(sweep):
    nan = next(p for p, item in zip(sweep, INPUTS) if item.name == "nan_inf_float.wav")
    out = subprocess.run([sys.executable, "main.py", "tag", str(nan), "--model", "slap-tiny", "--prompt", PROMPTS[0],
                          "--scores"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert math.isfinite(json.loads(out.stdout)["scores"][PROMPTS[0]])
    assert "3 NaN or infinite samples replaced by 0" in out.stderr


def test_in_the_streaming_path_a_clip_shorter_than_one_column_gets_its_events_and_each_file_starts_at_zero(tmp_path):
    """`tag` without --scores: the end of each file is scored with its partial column padded, so
    a 1-sample and a 0.1 s clip get the "always" prompt's event; a second file of the same name
    (another folder) is a new stream from 0 s, not the first one's continuation."""
    always = {"label": "always", "text": "a door slamming", "on_threshold": 0.001, "off_threshold": 0.0}
    cfg = {"prompts": [always], "detector": {"min_duration_s": 0.16, "merge_gap_s": 0.16, "smoothing": {"kind": "none"}},
           "model": {"path": "slap-tiny", "backend": "onnx", "cache_dir": str(ROOT / "cache")}}
    (tmp_path / "engine.yaml").write_text(json.dumps(cfg))
    paths = [tmp_path / "one_sample.wav", tmp_path / "a" / "short.wav", tmp_path / "b" / "short.wav"]
    for path, n in zip(paths, [1, 1600, 1600]):
        path.parent.mkdir(exist_ok=True)
        written(noise(n / 16000), 16000, "PCM_16")(path)
    out = subprocess.run([sys.executable, "main.py", "tag", *map(str, paths), "--config", str(tmp_path / "engine.yaml"),
                          "--json"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    edges = [(r["stream"], r["kind"], r["onset"], r["offset"], r["reason"]) for r in rows if r["kind"] != "file_end"]
    assert edges == [(name, kind, 0.0, offset, reason) for name in ("one_sample.wav", "short.wav", "short.wav")
                     for kind, offset, reason in (("start", None, None), ("end", 0.16, "stream_end"))]
    assert [(r["file"], r["events"]) for r in rows if r["kind"] == "file_end"] == [(str(p), 1) for p in paths]


@pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg makes the m4a")
def test_without_ffmpeg_an_m4a_is_one_line_saying_what_to_install(tmp_path):
    clip = tmp_path / "clip.m4a"
    next(item for item in INPUTS if item.name == "clip.m4a").make(clip)
    out = subprocess.run([sys.executable, "main.py", "tag", str(clip), "--model", "slap-tiny", "--prompt", PROMPTS[0],
                          "--scores"], cwd=ROOT, env={**ENV, "PATH": str(tmp_path)}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and not out.stdout
    assert out.stderr.strip().splitlines() == [f"main.py tag: {clip}: libsndfile cannot read it (Format not recognised); "
                                               "install ffmpeg to read m4a, aac, wma, ..."]
