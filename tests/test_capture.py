"""Capture workers as the engine sees them: real processes, a real PULL socket on loopback."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import zmq

from streamer.capture.net import Backoff, redact_text, redact_url
from streamer.capture.pusher import Pusher
from streamer.capture.synth import Synth, parse_event
from streamer.resample import StreamResampler, to_mono_16k
from streamer.wire import Frame, decode
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


@pytest.fixture
def pull():
    """A PULL socket bound to a random loopback port: (socket, endpoint)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)
    ctx.term()


def start_worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "streamer.capture", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_worker(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "streamer.capture", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def receive_until_exit(sock, proc: subprocess.Popen, timeout: float = 20.0) -> list[Frame]:
    """Decode frames until the worker has exited and the socket has been idle for 0.3 s."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sock.poll(300):
            frames.append(decode(sock.recv()))
        elif proc.poll() is not None:
            return frames
    raise AssertionError(f"worker still running after {timeout} s ({len(frames)} frames)")


def receive_seconds(sock, seconds: float, timeout: float = 15.0) -> list[Frame]:
    """Decode frames until they hold `seconds` of 16 kHz audio."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while sum(f.sample_count for f in frames) < seconds * 16000:
        assert time.monotonic() < deadline, f"only {len(frames)} frames after {timeout} s"
        if sock.poll(100):
            frames.append(decode(sock.recv()))
    return frames


def wait_for_log(proc: subprocess.Popen, text: str, timeout: float = 10.0) -> str:
    """Read the worker's stderr until `text` shows up; returns what was read (stop() reads the rest)."""
    read, fd = "", proc.stderr.fileno()
    deadline = time.monotonic() + timeout
    while text not in read:
        assert time.monotonic() < deadline, f"no {text!r} in stderr after {timeout} s: {read}"
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"stderr closed before {text!r}: {read}"
            read += chunk.decode()
    return read


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM the worker; its exit code and stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    return proc.returncode, err


def assert_contiguous(frames: list[Frame]) -> None:
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + len(frames)))
    assert len({f.epoch for f in frames}) == 1
    mono = [f.capture_mono_ns for f in frames]
    assert mono == sorted(mono)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


# --- file ---


def test_file_fast_delivers_every_sample_in_order(pull, tmp_path):
    sock, endpoint = pull
    rate = 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(2.35 * rate)) / rate) * 32767).astype(np.int16)
    path = tmp_path / "tone.wav"
    sf.write(path, tone, rate, subtype="PCM_16")
    proc = start_worker("file", str(path), "--fast", "--stream", "t1", "--endpoint", endpoint)
    frames = receive_until_exit(sock, proc)
    code, err = stop(proc)
    assert code == 0, err
    assert_contiguous(frames)
    assert frames[0].seq == 0
    assert {(f.stream_id, f.sample_rate, f.channels) for f in frames} == {("t1", 16000, 1)}
    assert [f.sample_count for f in frames] == [1600] * 23 + [800]  # 37600 samples: the last frame is short
    received = np.concatenate([np.frombuffer(f.payload, "<i2") for f in frames])
    np.testing.assert_array_equal(received, tone)  # 16 kHz mono int16: sent bit-exact


def test_file_realtime_resamples_to_16k_mono(pull, tmp_path):
    sock, endpoint = pull
    rate = 44100
    t = np.arange(rate) / rate
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 1000 * t)], axis=1) * 0.5
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, rate)
    proc = start_worker("file", str(path), "--stream", "t2", "--endpoint", endpoint)
    frames = receive_until_exit(sock, proc)
    code, err = stop(proc)
    assert code == 0, err
    assert_contiguous(frames)
    assert {(f.sample_rate, f.channels) for f in frames} == {(16000, 1)}
    x = np.concatenate([f.samples()[:, 0] for f in frames])
    assert abs(len(x) - 16000) <= 1
    assert abs(peak_hz(x, 16000) - 1000) < 5
    # paced by the clock: first sample times 100 ms apart, the whole second spread over ~1 s
    steps = np.diff([f.capture_mono_ns for f in frames[:-1]])
    assert np.all(np.abs(steps - 100_000_000) < 1_000_000)
    assert 0.8e9 < frames[-1].capture_mono_ns - frames[0].capture_mono_ns < 1.2e9


@pytest.mark.parametrize(
    "args, message",
    [
        (["file", "does/not/exist.wav", "--stream", "x"], "file not found"),
        (["synth", "--stream", "x", "--event", "1.0:boom"], "bad event"),
        (["mic", "--stream", "x", "--device", "99"], "cannot use input device 99"),
        (["net", "--stream", "x", "--url", "http://h/a", "--ffmpeg", "/no/ffmpeg"], "ffmpeg not found"),
    ],
)
def test_unusable_source_is_one_line_and_exit_2(args, message):
    result = run_worker(*args, "--endpoint", "tcp://127.0.0.1:1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    if args[0] == "mic":  # PortAudio's ALSA/JACK probing may print its own lines on some machines
        lines = [line for line in lines if "streamer.capture" in line]
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr


def test_bad_stream_id_is_a_usage_error():
    result = run_worker("synth", "--stream", "no spaces/slashes")
    assert result.returncode == 2 and "Traceback" not in result.stderr


# --- synth ---


def test_synth_one_second(pull):
    sock, endpoint = pull
    proc = start_worker(
        "synth", "--stream", "s1", "--duration", "1", "--event", "0.5:beep", "--endpoint", endpoint
    )
    frames = receive_until_exit(sock, proc)
    code, err = stop(proc)
    assert code == 0, err
    assert_contiguous(frames)
    assert len(frames) == 10 and sum(f.sample_count for f in frames) == 16000
    assert "event beep at 0.500 s" in err


def test_synth_is_deterministic_and_chunking_free():
    events = [parse_event("0.2:beep"), parse_event("0.5 burst 0.2"), parse_event("0.8:silence:0.1")]

    def render(signal: str, seed: int, chunk: int) -> np.ndarray:
        synth = Synth(16000, signal, 440.0, -20.0, events, -6.0, seed)
        return np.concatenate([synth.render(s, min(chunk, 16000 - s)) for s in range(0, 16000, chunk)])

    tone = render("tone", 0, 1600)
    np.testing.assert_array_equal(tone, render("tone", 0, 333))  # events and tone: independent of chunking
    np.testing.assert_array_equal(render("pink", 5, 1600), render("pink", 5, 1600))
    assert not np.array_equal(render("pink", 5, 1600), render("pink", 6, 1600))
    assert np.all(tone[12800:14400] == 0)  # silence event mutes the bed
    assert abs(peak_hz(tone[3200:7200], 16000) - 1000) < 5  # the beep dominates 0.2-0.45 s


# --- net (ffmpeg) ---


def start_server(port: int) -> subprocess.Popen:
    """ffmpeg serving an endless 440 Hz tone as NUT over HTTP, to one client, at real-time rate."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi"]
    cmd += ["-i", "sine=frequency=440:sample_rate=16000", "-c:a", "pcm_s16le", "-f", "nut"]
    cmd += ["-listen", "1", f"http://127.0.0.1:{port}/live"]
    return subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@needs_ffmpeg
def test_net_reads_audio_and_never_logs_the_url(pull):
    sock, endpoint = pull
    port = free_port()
    server = start_server(port)
    url = f"http://viewer:hunter22@127.0.0.1:{port}/live?token=s3cr3t"
    try:
        time.sleep(0.3)
        proc = start_worker("net", "--url", url, "--stream", "cam1", "--endpoint", endpoint)
        frames = receive_seconds(sock, 1.0)
        code, err = stop(proc)
    finally:
        server.kill()
        server.wait()
    assert code == 0, err
    assert_contiguous(frames)
    assert {(f.stream_id, f.sample_rate, f.channels) for f in frames} == {("cam1", 16000, 1)}
    assert abs(peak_hz(np.concatenate([f.samples()[:, 0] for f in frames]), 16000) - 440) < 5
    for secret in (url, "hunter22", "viewer", "s3cr3t", "/live"):
        assert secret not in err
    assert f"http://127.0.0.1:{port}/…" in err


@needs_ffmpeg
def test_net_reconnects_after_the_server_restarts(pull):
    sock, endpoint = pull
    port = free_port()
    server = start_server(port)
    proc = None
    try:
        time.sleep(0.3)
        proc = start_worker(
            "net", "--url", f"http://127.0.0.1:{port}/live", "--stream", "cam2", "--endpoint", endpoint,
            "--backoff-base", "0.2",
        )  # fmt: skip
        before = receive_seconds(sock, 0.5)
        server.kill()
        server.wait()
        time.sleep(0.5)
        server = start_server(port)
        after = receive_seconds(sock, 0.5)
    finally:
        server.kill()
        server.wait()
        code, err = stop(proc) if proc else (None, "")
    assert code == 0, err
    assert_contiguous(before + after)  # same epoch, sequence runs on across the reconnect
    assert "reconnect" in err
    gaps = np.diff([f.capture_mono_ns for f in before + after])
    assert gaps.max() > 400_000_000  # the outage shows as a time gap, not as a new epoch


@needs_ffmpeg
def test_net_stall_triggers_a_reconnect(pull):
    sock, endpoint = pull
    with socket.socket() as listener:  # accepts the connection, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        proc = start_worker(
            "net", "--url", f"http://127.0.0.1:{port}/x", "--stream", "stall", "--endpoint", endpoint,
            "--stall-timeout", "0.7", "--backoff-base", "0.1",
        )  # fmt: skip
        seen = wait_for_log(proc, "reconnect attempt 1")
        code, err = stop(proc)
    assert code == 0, err
    assert "stalled: no audio for 0.7 s" in seen


# --- mic ---


def test_mic_list_devices_exits_0():
    result = run_worker("mic", "--list-devices")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # the devices, or a line saying there are none
    assert "Traceback" not in result.stderr


# --- in-process parts ---


def test_pusher_drops_without_an_engine_and_keeps_numbering():
    port = free_port()  # nothing listens here
    with Pusher(f"tcp://127.0.0.1:{port}", "p", 16000, 1, frame_ms=100) as pusher:
        pusher.push(np.zeros(16000 * 3 // 10, np.float32))
        assert pusher.stats.frames_dropped == 3 and pusher.stats.frames_sent == 0
        assert pusher.seq == 3  # dropped frames use up their numbers: the engine sees the gap


def test_pusher_frames_and_stamps_odd_chunks(pull):
    sock, endpoint = pull
    with Pusher(endpoint, "p", 16000, 2, frame_ms=10, block=True) as pusher:  # 160-sample frames
        time.sleep(0.1)
        x = np.arange(1000 * 2, dtype=np.int16).reshape(1000, 2)
        pusher.push(x[:250], mono_ns=10**12)
        pusher.push(x[250:], mono_ns=10**12 + 250 * 62_500)  # 62.5 us per sample at 16 kHz
        pusher.flush()
        frames = [decode(sock.recv()) for _ in range(7)]
    assert [f.sample_count for f in frames] == [160] * 6 + [40]
    assert [f.capture_mono_ns for f in frames] == [10**12 + i * 10_000_000 for i in range(7)]
    np.testing.assert_array_equal(
        np.concatenate([np.frombuffer(f.payload, "<i2") for f in frames]), x.ravel()
    )


def test_stream_resampler_matches_one_shot():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48000, 2)).astype(np.float32) * 0.1
    whole = to_mono_16k(x, 48000)
    resampler = StreamResampler(48000)
    parts = [resampler(x[i : i + 4410]) for i in range(0, len(x), 4410)] + [resampler.flush()]
    chunked = np.concatenate(parts)
    assert len(whole) == 16000 and len(chunked) == 16000 and chunked.dtype == np.float32
    np.testing.assert_allclose(chunked, whole, atol=1e-4)
    assert resampler.samples_in == 0  # flush starts the stream afresh


def test_redaction():
    url = "rtsp://admin:pa55word@cam.local:554/stream1?token=abc"
    assert redact_url(url) == "rtsp://cam.local:554/…"
    assert redact_url("not a url") == "<url>"
    line = redact_text(f"[rtsp @ 0x1] {url}: 401 Unauthorized for user admin", url)
    assert "pa55word" not in line and "admin" not in line and "token" not in line


def test_backoff_is_capped_jittered_and_resets():
    backoff = Backoff(0.5, 30.0)
    delays = [backoff.next_delay() for _ in range(12)]
    for attempt, delay in enumerate(delays):
        nominal = min(30.0, 0.5 * 2**attempt)
        assert 0.5 * nominal <= delay <= nominal
    backoff.reset()
    assert backoff.next_delay() <= 0.5


def test_the_engines_own_workers_send_one_frame_per_hop(pull, tmp_path):
    """A hop cannot be analysed before its last sample is in, so the workers `main.py` starts send
    whole hops (fewer wake-ups and receives, the same latency); capped at 500 ms per frame."""
    from streamer.cli import WorkerSupervisor, frame_ms_for_hop
    from streamer.config import EngineConfig

    assert (frame_ms_for_hop(0.5), frame_ms_for_hop(0.32), frame_ms_for_hop(2.0)) == (500, 320, 500)
    sock, endpoint = pull
    path = tmp_path / "noise.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.3, 0.3, 16000 * 3).astype(np.float32), 16000,
             subtype="PCM_16")
    cfg = EngineConfig.model_validate({"prompts": [{"label": "x", "text": "a dog barking"}],
                                       "sources": [{"kind": "file", "name": "f", "path": str(path), "realtime": False}]})
    supervisor = WorkerSupervisor(cfg.sources, endpoint, frame_ms=frame_ms_for_hop(cfg.context.hop_s))
    supervisor.start_all()
    try:
        frames = receive_seconds(sock, 3.0)
    finally:
        supervisor.stop()
    assert [f.sample_count for f in frames] == [8000] * 6  # 0.5 s hops: 3 s in six frames
