"""The engine end to end: real capture worker subprocesses, real ZeroMQ sockets on loopback,
real ONNX Runtime sessions, real audio files.

Mechanics (batching, reload, net source, bad input) run on seeded random weights; the detection
tests use the shipped model (models/slap-tiny.safetensors).
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
import zmq

from encoder.runtime import open_backend
from streamer.config import EngineConfig
from streamer.engine import Engine
from streamer.wire import Frame
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "cache"
SHIPPED = ROOT / "models" / "slap-tiny.safetensors"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SR = 16000


def engine_config(tmp: Path, prompts: list[dict], sources: list[dict] | None = None, model: str = "slap-tiny",
                  **outputs) -> dict:
    return {
        "sources": sources or [],
        "prompts": prompts,
        "context": {"max_context_s": 10, "hop_s": 0.5},
        "model": {"path": str(model), "backend": "onnx", "cache_dir": str(CACHE)},
        "outputs": {"pub_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "ingest_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    "event_log": str(tmp / "events.db"), **outputs},
        "metrics": {"enabled": False},
    }


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def backend():
    return open_backend("onnx", "slap-tiny", CACHE, threads=1)


def speech_in_noise(path: Path, onset_s: float = 4.0, total_s: float = 9.0, seed: int = 0) -> tuple[float, float]:
    """espeak-ng speech placed at onset_s in quiet pink-ish noise; returns (onset, offset) of the speech."""
    raw = path.with_suffix(".speech.wav")
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), "Hello, can you hear me? I am talking to you now."],
                   check=True, capture_output=True)
    speech, rate = sf.read(raw, dtype="float32")
    from streamer.resample import to_mono_16k

    speech = to_mono_16k(speech[:, None], rate)
    rng = np.random.default_rng(seed)
    noise = np.cumsum(rng.standard_normal(int(total_s * SR))).astype(np.float32)
    noise = 0.01 * (noise - np.convolve(noise, np.ones(400) / 400, "same")) / 10
    start = int(onset_s * SR)
    noise[start:start + len(speech)] += 0.5 * speech / np.abs(speech).max()
    sf.write(path, noise, SR)
    return onset_s, onset_s + len(speech) / SR


def run_engine_until(engine: Engine, cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        engine.poll_once(20)
        if cond():
            return True
    return False


def test_due_hops_of_several_streams_share_one_encoder_call(backend, tmp_path):
    cfg = EngineConfig.model_validate(engine_config(tmp_path, [{"label": "beep", "text": "a beep"}]))
    engine = Engine(cfg, backend, bind=False)
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        engine.feed(name, (0.1 * rng.standard_normal((8000, 1))).astype(np.float32), SR, seq=0, epoch=1)
    stats = engine.step()
    assert stats.batch_size == 3  # three streams' windows, one padded encoder call
    assert engine.step() is None  # nothing else is due
    engine.feed("a", np.zeros((8000, 1), np.float32), SR, seq=1, epoch=1)
    assert engine.step().batch_size == 1


def test_two_worker_processes_stream_at_once(backend, tmp_path):
    cfg = EngineConfig.model_validate(engine_config(tmp_path, [{"label": "beep", "text": "a beep"}]))
    engine = Engine(cfg, backend, streams={"a", "b"})
    workers = [subprocess.Popen([sys.executable, "-m", "streamer.capture", "synth", "--endpoint", engine.ingest_endpoint,
                                 "--stream", name, "--duration", "3", "--seed", str(i)], env=ENV, cwd=ROOT,
                                stderr=subprocess.DEVNULL)
               for i, name in enumerate(("a", "b"))]
    try:
        assert run_engine_until(engine, lambda: all(w.poll() is not None for w in workers), 30)
        run_engine_until(engine, lambda: False, 0.5)
        assert engine.counters.frames_received == {"a": 30, "b": 30}  # 3 s in 100 ms frames, none lost
        assert engine.counters.hops >= 10 and engine.counters.hops_skipped == 0  # ~6 hops each, in real time
    finally:
        engine.close()


def test_bad_input_is_counted_and_the_engine_keeps_running(backend, tmp_path):
    cfg = EngineConfig.model_validate(engine_config(tmp_path, [{"label": "beep", "text": "a beep"}]))
    engine = Engine(cfg, backend, streams={"good"})
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(engine.ingest_endpoint)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(1600) / SR)).astype(np.float32)[:, None]

    def frame(stream: str, seq: int, rate: int = SR) -> bytes:
        return Frame.from_samples(tone, stream_id=stream, epoch=7, seq=seq, sample_rate=rate,
                                  capture_mono_ns=seq * 100_000_000, capture_wall_ns=time.time_ns()).encode()

    try:
        push.send(b"not a frame at all")
        good = frame("good", 0)
        push.send(good[:-10])  # truncated payload
        push.send(b"XXXX" + good[4:])  # bad magic
        push.send(frame("intruder", 0))  # a stream the config does not name
        push.send(frame("good", 1, rate=44100))  # another rate: resampled, not refused
        for seq in range(2, 80):
            push.send(frame("good", seq))
        assert run_engine_until(engine, lambda: engine.counters.frames_received["good"] == 79, 30)
        assert engine.counters.hops >= 1  # the good stream is analysed
        rejected = engine.counters.frames_rejected
        assert rejected["bad_magic"] == 2 and rejected["unknown_stream"] == 1
        assert rejected["truncated"] + rejected["payload_mismatch"] == 1
        assert sum(rejected.values()) == 4
    finally:
        push.close(0)
        engine.close()


def _subscribed(engine: Engine, topic: str, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if engine.publisher.has_subscribers(topic):
            return True
        time.sleep(0.02)
    return False


def test_a_stream_that_ends_gets_a_final_summary_from_its_last_window_encoded_whole(backend, tmp_path):
    """A hop's global on the incremental encoder pools columns that each saw only up to their own
    hop; when the stream ends, the summary's global is the full-window pass of the last window."""
    from encoder.frontend import log_mel, pad_to_columns, scored_columns

    cfg = EngineConfig.model_validate(engine_config(tmp_path, [{"label": "beep", "text": "a beep"},
                                                               {"label": "hum", "text": "a low hum"}],
                                                    scores_topic=True))
    engine = Engine(cfg, backend)
    sub = _scores_listener(cfg.outputs.pub_endpoint, "scores.clip")
    try:
        assert _subscribed(engine, "scores.clip")
        t = np.arange(int(3.3 * SR)) / SR
        audio = (0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t)).astype(np.float32)
        for seq, lo in enumerate(range(0, len(audio), 1600)):
            engine.feed("clip", audio[lo : lo + 1600, None], SR, seq=seq, epoch=1)
            while engine.step() is not None:
                pass
        engine.finish_stream("clip")
        msgs = []
        while (m := _next_scores(sub, 2.0)) is not None:
            msgs.append(m)
            if m["final"]:
                break
    finally:
        sub.close(0)
        engine.close()
    hops, final = msgs[:-1], msgs[-1]
    assert len(hops) == 6 and not any(m["final"] for m in hops) and final["final"]  # 6 hops in 3.3 s, then the summary
    n = scored_columns(len(audio))  # the tail's partial column (0.1 s of 0.16) completed with silence
    assert final["first_column"] == hops[-1]["first_column"] + len(hops[-1]["columns"]) and \
        final["first_column"] + len(final["columns"]) == n
    mel = log_mel(pad_to_columns(audio))[None, :, : n * 16]
    glob = backend.encode(mel, np.array([mel.shape[-1]]))[2]
    whole = engine.matcher(glob, np.zeros((1, 0, glob.shape[1]), np.float32))
    np.testing.assert_allclose(final["global"], whole.global_scores[0], atol=2e-4)
    assert engine.counters.summaries == 1


def test_no_summary_is_computed_when_nobody_reads_it(backend, tmp_path):
    cfg = EngineConfig.model_validate(engine_config(tmp_path, [{"label": "beep", "text": "a beep"}], scores_topic=True))
    engine = Engine(cfg, backend, bind=False)
    engine.feed("a", (0.1 * np.random.default_rng(0).standard_normal((12000, 1))).astype(np.float32), SR, seq=0, epoch=1)
    while engine.step() is not None:
        pass
    engine.finish_stream("a")
    assert engine.counters.summaries == 0  # `main.py tag` pays nothing for it


def test_a_bad_config_line_is_one_line_naming_file_line_and_field(tmp_path):
    cfg = engine_config(tmp_path, [{"label": "dog", "text": "a dog barking", "on_threshold": 1.5}])
    path = write_yaml(tmp_path / "bad.yaml", cfg)
    proc = subprocess.run([sys.executable, "main.py", "--config", str(path), "--source", "synth"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "bad.yaml" in lines[0] and "prompts[0].on_threshold" in lines[0] and "expected" in lines[0]


def _scores_listener(endpoint: str, topic: str):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(endpoint)
    sub.setsockopt_string(zmq.SUBSCRIBE, topic)
    return sub


def _next_scores(sub, timeout: float) -> dict | None:
    if not sub.poll(int(timeout * 1000)):
        return None
    return json.loads(sub.recv_multipart()[1])


@pytest.mark.slow
def test_a_config_edit_changes_the_prompts_without_a_restart(tmp_path):
    sources = [{"kind": "synth", "name": "live", "signal": "pink", "level_db": -30}]
    cfg = engine_config(tmp_path, [{"label": "dog", "text": "a dog barking"}], sources, scores_topic=True)
    path = write_yaml(tmp_path / "engine.yaml", cfg)
    engine = subprocess.Popen([sys.executable, "main.py", "--config", str(path)], cwd=ROOT, env=ENV,
                              stderr=subprocess.PIPE, text=True)
    sub = _scores_listener(cfg["outputs"]["pub_endpoint"], "scores.live")
    try:
        first = None
        for _ in range(60):
            first = _next_scores(sub, 1.0)
            if first:
                break
        assert first is not None and first["labels"] == ["dog"]
        cfg["prompts"] = [{"label": "siren", "text": "a siren wailing"}, {"label": "glass", "text": "glass breaking"}]
        write_yaml(path, cfg)
        labels, seen = None, []
        for _ in range(40):
            msg = _next_scores(sub, 1.0)
            if msg:
                seen.append(msg["seq"])
                labels = msg["labels"]
                if labels == ["siren", "glass"]:
                    break
        assert labels == ["siren", "glass"]
        assert engine.poll() is None  # same process: no restart
        assert seen == list(range(seen[0], seen[0] + len(seen)))  # hops kept coming, none skipped
    finally:
        sub.close(0)
        engine.terminate()
        _, err = engine.communicate(timeout=20)
    assert "config reloaded: 2 prompts" in err


@pytest.mark.slow
def test_the_net_source_reads_audio_served_by_a_local_ffmpeg(tmp_path):
    port = free_port()
    server = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
                               "sine=frequency=800:sample_rate=44100", "-c:a", "pcm_s16le", "-f", "nut", "-listen", "1",
                               f"http://127.0.0.1:{port}/live"], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    url = f"http://user:secret@127.0.0.1:{port}/live"
    cfg = engine_config(tmp_path, [{"label": "tone", "text": "a tone"}], [{"kind": "net", "name": "cam", "url": url}],
                        scores_topic=True)
    path = write_yaml(tmp_path / "engine.yaml", cfg)
    engine = subprocess.Popen([sys.executable, "main.py", "--config", str(path)], cwd=ROOT, env=ENV,
                              stderr=subprocess.PIPE, text=True)
    sub = _scores_listener(cfg["outputs"]["pub_endpoint"], "scores.cam")
    try:
        got = None
        for _ in range(60):
            got = _next_scores(sub, 1.0)
            if got:
                break
        assert got is not None and got["stream"] == "cam"
    finally:
        sub.close(0)
        engine.terminate()
        _, err = engine.communicate(timeout=20)
        server.kill()
    assert "secret" not in err  # credentials never reach the logs


needs_model = pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped model is not in models/ yet")
DETECT_PROMPTS = [
    {"label": "speech", "text": ["a man speaking", "a person talking"]},
    {"label": "dog", "text": "a dog barking"},
]


@needs_model
@pytest.mark.slow
def test_a_file_streamed_in_real_time_gives_a_start_event_near_the_truth(tmp_path):
    audio = tmp_path / "talk.wav"
    onset, _ = speech_in_noise(audio)
    cfg = engine_config(tmp_path, DETECT_PROMPTS, [{"kind": "file", "name": "talk", "path": str(audio)}], model=SHIPPED)
    path = write_yaml(tmp_path / "engine.yaml", cfg)
    sub = subprocess.Popen([sys.executable, "main.py", "subscribe", "--endpoint", cfg["outputs"]["pub_endpoint"],
                            "--json", "--timeout", "40"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    engine = subprocess.run([sys.executable, "main.py", "--config", str(path), "--exit-when-done", "--json"], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=90)
    sub.terminate()
    received = [json.loads(line) for line in sub.communicate(timeout=20)[0].splitlines() if line.strip()]
    assert engine.returncode == 0, engine.stderr[-2000:]
    starts = [e for e in received if e["kind"] == "start"]
    speech = [e for e in starts if e["label"] == "speech"]
    assert speech, f"no speech event among {received}"
    assert abs(speech[0]["stream_onset"] - onset) <= 0.5
    assert not [e for e in starts if e["label"] == "dog"]


@needs_model
def test_tag_runs_files_through_the_streaming_path(tmp_path):
    audio = tmp_path / "talk.wav"
    onset, _ = speech_in_noise(audio)
    args = [sys.executable, "main.py", "tag", str(audio), "--model", str(SHIPPED)]
    for p in DETECT_PROMPTS:
        args += ["--prompt", p["text"] if isinstance(p["text"], str) else p["text"][0]]
    out = subprocess.run(args + ["--json"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in out.stdout.splitlines()]
    starts = [e for e in events if e["kind"] == "start"]
    assert starts and starts[0]["label"] == "a_man_speaking" and starts[0]["stream"] == "talk.wav"
    assert abs(starts[0]["onset"] - onset) <= 0.5
    scores = subprocess.run(args + ["--scores"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    line = json.loads(scores.stdout)
    assert line["file"] == str(audio)
    assert set(line["scores"]) == {"a man speaking", "a dog barking"}  # keyed by prompt text
    assert all(0.0 <= v <= 1.0 for v in line["scores"].values())
