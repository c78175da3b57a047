"""Search over past audio: the engine stores one global embedding per hop, and `main.py search`
ranks time ranges of it by a text query that no prompt asked about while the audio played.

The end-to-end test plants espeak-ng speech at a known time in a 10-minute recording (a noise bed
with a tone-burst alarm and a warbling siren as distractors), streams it through a real engine
(file worker, realtime: false, so faster than real time and lossless) whose only prompt is "a dog
barking", and asks for "a person speaking". Speech is chosen because the shipped model
(models/slap-tiny.safetensors) demonstrably separates it: by hand, its global score for that query
is ~0.95 on windows holding the speech and <= 0.15 elsewhere. It is weak on most real sounds (a
siren scores ~0.1 for "a siren wailing", "a telephone ringing" ranks the speech first), so the test
claims only what the model can do.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from encoder.frontend import SECONDS_PER_COLUMN
from streamer.config import ConfigError, parse_config
from streamer.embedding_store import EmbeddingStore, read_audio, read_hops
from streamer.search import MIN_RANGE_S, rank_ranges
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "slap-tiny.safetensors"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SR = 16000
MODEL = "slap-tiny@dcd7cea0"


def espeak(text: str, path: Path) -> np.ndarray:
    """espeak-ng speech as 16 kHz mono float32 in [-1, 1]."""
    from streamer.resample import to_mono_16k

    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), text], check=True, capture_output=True)
    speech, rate = sf.read(path, dtype="float32", always_2d=True)
    speech = to_mono_16k(speech, rate)
    return speech / np.abs(speech).max()


def recording_with_planted_speech(path: Path, planted_s: float, total_s: float = 600.0,
                                  seed: int = 0) -> tuple[float, float]:
    """A brown-noise bed with an alarm (150 s) and a siren (480 s), espeak-ng speech at planted_s.
    Returns the speech's (onset, offset) in seconds."""
    rng = np.random.default_rng(seed)
    bed = np.cumsum(rng.standard_normal(int(total_s * SR))).astype(np.float32)
    bed -= np.convolve(bed, np.ones(400) / 400, "same")  # brown noise without its drift
    x = 0.05 * bed / np.abs(bed).max()
    t = np.arange(4 * SR) / SR
    alarm = np.sin(2 * np.pi * 3100 * t) * ((t * 4) % 1 < 0.5)  # 3.1 kHz, 4 beeps a second
    siren = np.sin(2 * np.pi * np.cumsum(700 + 400 * np.sin(np.pi * t)) / SR)
    speech = espeak("Hello, can you hear me? I am talking to you now.", path.with_suffix(".speech.wav"))
    for at, sound in ((150.0, alarm), (480.0, siren), (planted_s, speech)):
        i = int(at * SR)
        x[i:i + len(sound)] += 0.5 * sound
    sf.write(path, x, SR)
    return planted_s, planted_s + len(speech) / SR


def engine_config(tmp: Path, sources: list[dict], **embeddings) -> dict:
    return {
        "sources": sources,
        "prompts": [{"label": "dog", "text": "a dog barking"}],  # never "speech": search finds it anyway
        "context": {"max_context_s": 10, "hop_s": 1.0},
        "model": {"path": str(SHIPPED), "backend": "onnx", "cache_dir": str(ROOT / "cache")},
        "outputs": {"pub_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "ingest_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "event_log": str(tmp / "events" / "events.db"), "embeddings": embeddings},
        "metrics": {"enabled": False},
    }


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped model is not in models/")
@pytest.mark.slow
def test_search_finds_speech_planted_in_ten_minutes_for_a_prompt_never_configured(tmp_path):
    audio = tmp_path / "yard.wav"
    onset, offset = recording_with_planted_speech(audio, planted_s=371.0)
    cfg = engine_config(tmp_path, [{"kind": "file", "name": "yard", "path": str(audio), "realtime": False}])
    path = tmp_path / "engine.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "main.py", "--config", str(path), "--exit-when-done"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=240)
    engine_s = time.monotonic() - t0
    assert run.returncode == 0, run.stderr[-2000:]
    store = tmp_path / "events" / "embeddings.db"
    hops = read_hops(store, MODEL)
    # every hop of the 600 s is there: a lossless stream's hops are never skipped
    assert len(hops) >= 595 and hops.end_col.max() * SECONDS_PER_COLUMN >= 599
    out = subprocess.run([sys.executable, "main.py", "search", "a person speaking", "--config", str(path),
                          "--top", "3", "--json"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ranges = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["rank"] for r in ranges] == [1, 2, 3] and {r["stream"] for r in ranges} == {"yard"}
    assert any(r["start_s"] < offset and r["end_s"] > onset for r in ranges), (onset, offset, ranges)
    best = ranges[0]
    print(f"\n600 s through the engine in {engine_s:.1f} s; speech at {onset:.2f}-{offset:.2f} s; top 3: "
          + ", ".join(f"{r['start_s']:.2f}-{r['end_s']:.2f} s ({r['score']:.3f})" for r in ranges))
    assert best["start_s"] < offset and best["end_s"] > onset  # here the best range is the speech


def _store(tmp_path: Path, **kw) -> EmbeddingStore:
    return EmbeddingStore(tmp_path / "emb.db", model=MODEL, hop_s=0.5, context_s=10.0, **kw)


def test_hops_and_audio_round_trip_through_the_store(tmp_path):
    store = _store(tmp_path, audio=True)
    now = time.time()
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3, 256)).astype(np.float32)
    for i in range(3):
        store.add("cam", emb[i], first_column=3 * i, n_columns=62, wall_start=now + i, wall_end=now + 10 + i)
    tone = (0.25 * np.sin(2 * np.pi * 440 * np.arange(12 * SR) / SR)).astype(np.float32)
    for k in range(0, len(tone), 1600):  # 100 ms frames, as the engine feeds them
        store.push_audio("cam", tone[k:k + 1600], start_sample=k, wall_start=now + k / SR)
    store.close()
    hops = read_hops(tmp_path / "emb.db", MODEL)
    assert len(hops) == 3 and hops.emb.dtype == np.float16 and hops.emb.shape == (3, 256)
    assert np.allclose(hops.emb.astype(np.float32), emb, atol=2e-3)  # fp16
    assert list(hops.start_col) == [0, 3, 6] and list(hops.end_col) == [62, 65, 68]
    assert len(read_hops(tmp_path / "emb.db", "other@00000000")) == 0  # another model's text tower: not searched
    got = read_audio(tmp_path / "emb.db", "cam", store.run, 9.5, 11.0)  # across the 10 s chunk boundary
    assert np.abs(got - tone[int(9.5 * SR):11 * SR]).max() < 1e-3  # 16-bit FLAC
    assert not read_audio(tmp_path / "emb.db", "cam", store.run, 20.0, 21.0).any()  # nothing kept: silence


def test_retention_deletes_old_hops_then_the_oldest_past_the_size_limit(tmp_path):
    store = _store(tmp_path, max_age_days=1.0, max_total_mb=0.01)  # 10.5 KB: 18 hops of 512 + 64 bytes
    now = time.time()
    for i in range(40):
        age = 2 * 86400 if i < 5 else 0  # the first five are two days old
        store.add("cam", np.ones(256, np.float32), i, 62, now - age + i, now - age + i + 10)
    store.flush()
    store.enforce_retention()
    store.close()
    hops = read_hops(tmp_path / "emb.db", MODEL)
    assert store.stats.deleted == 40 - len(hops) and len(hops) == 18
    assert list(hops.start_col) == list(range(40 - len(hops), 40))  # the newest are kept


def _hops_with_scores(scores: list[float], hop_cols: int = 6, window_cols: int = 62):
    """One stream's windows on a 6-column (0.96 s) hop, full 62-column (9.92 s) windows."""
    from streamer.embedding_store import Hops

    n = len(scores)
    start = np.arange(n) * hop_cols
    return Hops(np.array(["s"] * n), np.zeros(n, np.int64), start, start + window_cols,
                start * SECONDS_PER_COLUMN, (start + window_cols) * SECONDS_PER_COLUMN,
                np.zeros((n, 4), np.float16)), np.array(scores, np.float32)


def test_a_run_of_matching_windows_becomes_the_time_where_they_agree():
    scores = [0.1] * 30
    for i in range(12, 22):  # windows 12..21 hold the sound; all of them cover 20.16-21.44 s
        scores[i] = 0.9
    hops, s = _hops_with_scores(scores)
    (best, *rest) = rank_ranges(hops, s, top=3)["s"]
    first_end, last_start = (12 * 6 + 62) * SECONDS_PER_COLUMN, 21 * 6 * SECONDS_PER_COLUMN
    assert best.hops == 10 and best.score == pytest.approx(0.9)
    mid = (first_end + last_start) / 2
    assert best.start_s == pytest.approx(mid - MIN_RANGE_S / 2, abs=0.01)
    assert best.end_s == pytest.approx(mid + MIN_RANGE_S / 2, abs=0.01)
    assert all(r.end_s <= 12 * 6 * SECONDS_PER_COLUMN or r.start_s >= (21 * 6 + 62) * SECONDS_PER_COLUMN
               for r in rest)  # no second range out of the same sound's windows


def test_an_invalid_retention_is_one_line_naming_the_field():
    with pytest.raises(ConfigError) as info:
        parse_config("prompts: [{label: dog, text: a dog}]\noutputs:\n  embeddings: {max_age_days: 0}\n", "x.yaml")
    assert str(info.value) == "x.yaml:3: outputs.embeddings.max_age_days: expected > 0 (got 0)"


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped model is not in models/")
def test_the_engine_writes_one_row_per_hop_and_counts_them(tmp_path):
    from encoder.runtime import open_backend
    from streamer.config import EngineConfig
    from streamer.engine import Engine
    from streamer.metrics import EngineMetrics

    cfg = EngineConfig.model_validate(engine_config(tmp_path, []))
    engine = Engine(cfg, open_backend("onnx", SHIPPED, ROOT / "cache", threads=1), streams={"yard"})
    noise = (0.05 * np.random.default_rng(0).standard_normal((SR // 10, 1))).astype(np.float32)
    t0 = time.time_ns()
    for seq in range(60):  # 6 s in 100 ms frames: a hop (1 s) after each tenth
        engine.feed("yard", noise, SR, seq=seq, epoch=1, wall_ns=t0 + seq * 100_000_000)
        while engine.step() is not None:
            pass
    hops = engine.counters.hops
    engine.close()
    rows = read_hops(tmp_path / "events" / "embeddings.db", engine.model_id)
    assert hops == 6 and len(rows) == hops and list(rows.start_col) == [0] * 6  # windows still growing to 10 s
    assert list(rows.end_col) == [6, 12, 18, 25, 31, 37]  # 1 s hops on the 0.16 s column grid
    assert rows.wall_start[0] == pytest.approx(t0 / 1e9, abs=0.01)
    assert EngineMetrics(engine).registry.get_sample_value("slap_embedding_store_hops_total") == 6
