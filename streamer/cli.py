"""The engine's commands (dispatched from main.py):

    python main.py --source mic|file:PATH|synth|net:URL [--config F]   workers + engine, events printed
    python main.py tag PATH... [--config F | --prompt P ...] [--json] [--scores]
    python main.py subscribe [--topic T] [--endpoint E]                   print live events
    python main.py events [--since T] [--label L] [--stream S] [--json]   query the event log
    python main.py config schema [--out F]                                JSON Schema of the config
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from streamer.capture.pusher import MIN_FRAME_MS
from streamer.config import (
    ConfigError,
    ConfigWatcher,
    DetectorConfig,
    EngineConfig,
    config_json_schema,
    load_config,
)

DEFAULT_CONFIG = Path("configs/default.yaml")
log = logging.getLogger("streamer.cli")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _open_backend(cfg: EngineConfig, prog: str):
    """The config's encoder backend, or None after printing the one-line reason."""
    from encoder.runtime import BackendError, open_backend

    try:
        return open_backend(cfg.model.backend, cfg.model.path, cfg.model.cache_dir or "cache",
                            cfg.model.threads or None, precision=cfg.model.precision)
    except BackendError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None


def _format_event(p: dict) -> str:
    when = p.get("stream_onset") if p["kind"] == "start" else p.get("stream_offset")
    extra = f" ({p['reason']})" if p.get("reason") else ""
    return f"{p['stream']:>12} {p['kind']:<5} {p['label']:<16} t={when if when is not None else '?':>8}s score={p['score']:.2f}{extra}"


# --- run --------------------------------------------------------------------------------------


def source_from_flag(flag: str) -> dict:
    """`mic`, `mic:DEVICE`, `file:PATH`, `synth`, `net:URL` -> a config `sources` entry."""
    kind, _, arg = flag.partition(":")
    if kind == "mic":
        return {"kind": "mic", "name": "mic", "device": arg or None}
    if kind == "file" and arg:
        return {"kind": "file", "name": _stream_name(Path(arg).stem), "path": arg, "realtime": True}
    if kind == "synth":
        return {"kind": "synth", "name": "synth", "signal": "pink", "level_db": -40,
                "events": ["2.0:beep:0.8", "5.0:burst:0.5", "8.0:chirp:0.6"]}
    if kind == "net" and arg:
        return {"kind": "net", "name": "net", "url": arg}
    raise ValueError(f"--source: expected mic, mic:DEVICE, file:PATH, synth or net:URL, got {flag!r}")


def _stream_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:64] or "stream"


WORKER_FRAME_CAP_MS = 500  # 192 kHz x 8 ch float32 stays under the wire's 4 MiB payload


def frame_ms_for_hop(hop_s: float) -> int:
    """The frame length the engine's own workers send: one frame per hop, up to 500 ms.

    The engine cannot analyse a hop before the hop's last sample has arrived, so shorter frames buy
    no latency; each frame costs a worker wake-up and an engine receive, and at 100 ms frames the
    workers of 128 streams used about a quarter of a 2-core machine (docs/capacity.md)."""
    return min(max(round(hop_s * 1000), MIN_FRAME_MS), WORKER_FRAME_CAP_MS)


def worker_command(source, endpoint: str, frame_ms: int | None = None) -> list[str]:
    """The capture worker command line for a configured source (URLs go through the environment);
    frame_ms: the worker's --frame-ms (None: the worker's default)."""
    cmd = [sys.executable, "-m", "streamer.capture", source.kind, "--endpoint", endpoint, "--stream", source.name]
    cmd += [f"--frame-ms={frame_ms}"] if frame_ms is not None else []
    if source.kind == "file":
        cmd += [str(source.path), "--realtime" if source.realtime else "--fast"]
        cmd += ["--loop"] if source.loop else []
        cmd += ["--start-delay", str(source.start_delay_s)] if source.start_delay_s else []
    elif source.kind == "mic":
        cmd += ["--device", str(source.device)] if source.device is not None else []
        cmd += ["--rate", str(source.rate)] if source.rate else []
        cmd += ["--channels", str(source.channels)]
    elif source.kind == "synth":
        cmd += ["--signal", source.signal, "--freq", str(source.freq_hz), "--level-db", str(source.level_db),
                "--event-level-db", str(source.event_level_db), "--seed", str(source.seed)]
        for ev in source.events:
            cmd += ["--event", ev]
        cmd += ["--realtime" if source.realtime else "--fast"]
    elif source.kind == "net":
        cmd += ["--url-env", source.url_env or "SLAP_NET_URL", "--stall-timeout", str(source.stall_timeout_s),
                "--rtsp-transport", source.rtsp_transport]
        cmd += ["--realtime"] if source.realtime else []
    return cmd


def worker_env(source) -> dict:
    import os

    from streamer.capture.cli import PARENT_ENV

    env = dict(os.environ)
    env[PARENT_ENV] = str(os.getpid())  # the worker stops when this engine is gone, even after kill -9
    if source.kind == "net" and source.url is not None:
        env["SLAP_NET_URL"] = source.url.get_secret_value()  # never on a command line
    return env


def lossless_streams(sources) -> set[str]:
    """Sources that send as fast as the engine reads (realtime: false): their frames are never dropped."""
    return {s.name for s in sources if s.kind in ("file", "synth") and not s.realtime}


def failure_reason(returncode: int) -> str:
    """A worker's error exit -> a reason of streamer.engine.SOURCE_FAILURE_REASONS (see
    streamer/capture/cli.py for the exit codes)."""
    if returncode == 2:
        return "source_error"
    return "killed" if returncode < 0 else "failed"


class WorkerSupervisor:
    """Starts one capture worker per source and restarts any that exits, with capped backoff.
    extra_args: appended to every worker's command line (the engine's CURVE flags); frame_ms: each
    worker's frame length (frame_ms_for_hop of the engine's hop; None: the workers' default).

    Every error exit is counted (`failures`, by (source, reason)) and handed to on_failure (the
    engine's counters, so a metric shows it). A file source that is not looped is not restarted
    after one: its file is missing, empty or unreadable, or failed part way, and playing it again
    would fail again or send its first part twice; `gave_up` names those sources."""

    def __init__(self, sources, endpoint: str, extra_args: list[str] | None = None, metrics_port: int | None = None,
                 on_failure: Callable[[str, str], None] | None = None, frame_ms: int | None = None):
        self.on_failure = on_failure
        self.frame_ms = frame_ms
        self.failures: Counter = Counter()
        self.gave_up: set[str] = set()
        self.sources = {s.name: s for s in sources}
        self.endpoint = endpoint
        self.extra_args = list(extra_args or [])
        # worker i exports its own metrics on metrics_port + 1 + i (the engine's is metrics_port)
        self.metrics_ports = {name: metrics_port + 1 + i for i, name in enumerate(self.sources)} if metrics_port else {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self.next_start: dict[str, float] = {}

    def start(self, name: str) -> None:
        s = self.sources[name]
        metrics = ["--metrics-port", str(self.metrics_ports[name])] if name in self.metrics_ports else []
        self.procs[name] = subprocess.Popen(worker_command(s, self.endpoint, self.frame_ms) + self.extra_args + metrics,
                                            env=worker_env(s), stdin=subprocess.DEVNULL)
        log.info("worker %s (%s) started, pid %d", name, s.kind, self.procs[name].pid)

    def start_all(self) -> None:
        for name in self.sources:
            self.start(name)

    def check(self) -> None:
        now = time.monotonic()
        for name, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is None:
                continue
            src = self.sources[name]
            if src.kind == "file" and not src.loop and rc == 0:
                log.info("worker %s finished its file", name)
                del self.procs[name]
                continue
            if name not in self.next_start and rc != 0:
                reason = failure_reason(rc)
                self.failures[(name, reason)] += 1
                if self.on_failure is not None:
                    self.on_failure(name, reason)
                if src.kind == "file" and not src.loop:
                    log.error("worker %s failed (exit %s, %s): its file is not played again", name, rc, reason)
                    self.gave_up.add(name)
                    del self.procs[name]
                    continue
            if name not in self.next_start:
                n = self.restarts.get(name, 0)
                delay = min(0.5 * 2**n, 30.0)
                self.next_start[name] = now + delay
                log.warning("worker %s exited with %s; restarting in %.1f s", name, rc, delay)
            elif now >= self.next_start.pop(name):
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.start(name)

    @property
    def alive(self) -> bool:
        return bool(self.procs)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="main.py", description="Run capture workers and the engine; print events.")
    p.add_argument("--source", action="append", help="mic | mic:DEVICE | file:PATH | synth | net:URL (repeatable); "
                   "replaces the config's sources")
    p.add_argument("--config", type=Path, help=f"engine config YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--json", action="store_true", help="print each event as its JSON payload")
    p.add_argument("--list-devices", action="store_true", help="list audio input devices and exit")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--exit-when-done", action="store_true", help="stop once every (non-looping) file worker finished")
    p.add_argument("--web", action="store_true", help="also serve the web view on 127.0.0.1 (main.py web); "
                   "turns on scores_topic and watches the config for prompt edits")
    p.add_argument("--web-port", type=int, default=8765)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    _setup_logging(args.log_level)
    if args.list_devices:
        return subprocess.call([sys.executable, "-m", "streamer.capture", "mic", "--list-devices", "--stream", "x"])
    path = args.config or DEFAULT_CONFIG
    try:
        cfg = load_config(path)
        if args.source:
            cfg = EngineConfig.model_validate(cfg.model_dump() | {"sources": [source_from_flag(s) for s in args.source]})
    except (ConfigError, ValueError) as e:
        print(f"main.py: {e}".splitlines()[0], file=sys.stderr)
        return 2
    if not cfg.sources:
        print(f"main.py: {path}: no sources; give --source mic|file:PATH|synth|net:URL", file=sys.stderr)
        return 2

    def with_flags(new: EngineConfig) -> EngineConfig:
        """What the command line overrides stays overridden across reloads of the file."""
        if args.source:
            new = new.model_copy(update={"sources": cfg.sources})
        if args.web:  # the web view's live plot needs the scores
            new = new.model_copy(update={"outputs": new.outputs.model_copy(update={"scores_topic": True})})
        return new

    cfg = with_flags(cfg)
    from streamer.engine import Engine

    backend = _open_backend(cfg, "main.py")
    if backend is None:
        return 2

    def show(payloads: list[dict]) -> None:
        for pl in payloads:
            print(json.dumps(pl) if args.json else _format_event(pl), flush=True)

    import zmq

    try:
        engine = Engine(cfg, backend, streams={s.name for s in cfg.sources}, on_events=show,
                        lossless=lossless_streams(cfg.sources))
    except (zmq.ZMQError, OSError, ValueError) as e:  # an endpoint in use, a bad key file, ...
        print(f"main.py: cannot start the engine: {e}".splitlines()[0], file=sys.stderr)
        return 2
    metrics = None
    if cfg.metrics.enabled:
        try:
            from streamer.metrics import serve_metrics

            metrics = serve_metrics(engine, cfg.metrics.host, cfg.metrics.port)
        except ImportError:
            metrics = None
        except OSError as e:
            log.warning("metrics endpoint not started: %s", e)
    watcher = ConfigWatcher(path) if (not args.source and args.config) or args.web else None
    if watcher is not None:
        watcher.prime()
    def count_failure(name: str, reason: str) -> None:
        engine.counters.source_failures[(name, reason)] += 1

    supervisor = WorkerSupervisor(cfg.sources, engine.ingest_endpoint, engine.worker_args,
                                  cfg.metrics.port if metrics is not None else None, count_failure,
                                  frame_ms=frame_ms_for_hop(cfg.context.hop_s))
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    deadline = time.monotonic() + args.duration if args.duration else None
    supervisor.start_all()
    log.info("engine: %s, %d prompts, events on %s", engine.model_id, len(cfg.prompts), engine.publisher.endpoint)
    web = subprocess.Popen([sys.executable, "-m", "streamer.web", "--config", str(path), "--port", str(args.web_port)],
                           stdin=subprocess.DEVNULL) if args.web else None

    def idle() -> None:
        supervisor.check()
        if watcher is not None:
            new = watcher.poll()
            if isinstance(new, ConfigError):
                engine.counters.config_reload_failures += 1
                log.error("config reload refused, keeping the running config: %s", str(new).splitlines()[0])
            elif new is not None:
                try:
                    engine.apply_config(with_flags(new))
                except Exception as e:  # a reload must never stop the engine
                    engine.counters.config_reload_failures += 1
                    log.error("config reload failed, keeping the running config: %s", e)
        if args.exit_when_done and not supervisor.alive:
            stop["now"] = True
        if deadline is not None and time.monotonic() > deadline:
            stop["now"] = True

    try:
        engine.run(lambda: stop["now"], idle)
        if args.exit_when_done:  # drain what the workers sent last (and what waits in the queues), then close
            t_end = time.monotonic() + 1.0
            while time.monotonic() < t_end or (engine.queued_frames and time.monotonic() < t_end + 60):
                engine.poll_once(50)
            for name in list(engine.streams):
                engine.finish_stream(name)
    finally:
        supervisor.stop()
        engine.close()
        if metrics is not None:
            metrics.close()
        if web is not None:
            web.terminate()
            try:
                web.wait(timeout=5)
            except subprocess.TimeoutExpired:
                web.kill()
    return 1 if supervisor.gave_up else 0  # a file that could not be played is a failed run


# --- eval ---------------------------------------------------------------------------------------


def engine_detect(d: DetectorConfig) -> Callable[[np.ndarray, float], np.ndarray]:
    """The engine's detector with d's settings as `main.py eval` scores events with it: (C, P)
    column scores and an on-threshold -> (C, P) bool. Eval searches the on-threshold for each
    system; the off-threshold keeps d's ratio to it (0.35 / 0.5), so the hysteresis band scales."""
    from streamer.detector import Smoothing, event_mask, seconds_to_frames

    ratio = d.off_threshold / d.on_threshold
    smoothing = Smoothing(d.smoothing.kind, d.smoothing.alpha, d.smoothing.window)
    min_frames, gap = max(1, seconds_to_frames(d.min_duration_s)), seconds_to_frames(d.merge_gap_s)
    return lambda scores, on: event_mask(scores, on, on * ratio, min_frames, gap, smoothing)


def eval_main(argv: list[str]) -> int:
    """`main.py eval`: encoder/evaluate.py's command, its dev frame metrics scored on the events
    of the detector the default config runs (configs/default.yaml; the built-in defaults where the
    command runs outside the repo)."""
    from encoder.evaluate import main

    d = load_config(DEFAULT_CONFIG).detector if DEFAULT_CONFIG.is_file() else DetectorConfig()
    return main(argv, detect=engine_detect(d))


# --- tag ----------------------------------------------------------------------------------------


def tag_config(args) -> EngineConfig:
    if args.config:
        cfg = load_config(args.config)
    elif args.prompt:
        cfg = EngineConfig.model_validate({"prompts": [{"label": _stream_name(p.replace(" ", "_"))[:64], "text": p}
                                                       for p in args.prompt]})
    else:
        cfg = load_config(DEFAULT_CONFIG)
    update = {"outputs": cfg.outputs.model_dump() | {"event_log": None, "clips": {"enabled": False}}}
    if args.model:
        update["model"] = cfg.model.model_dump() | {"path": args.model}
    return EngineConfig.model_validate(cfg.model_dump() | update)


def tag_file(engine, path: Path, mono: np.ndarray, chunk_s: float = 0.1) -> None:
    """Run one file's 16 kHz mono audio (n,) float32 through the streaming path (context -> hops ->
    detector) as fast as possible; its end is scored with the last partial column padded
    (Engine.finish_stream), so a clip shorter than one column is scored too."""
    name = _stream_name(path.name)
    step = int(chunk_s * 16000)
    try:
        for seq, i in enumerate(range(0, len(mono), step)):
            engine.feed(name, mono[i:i + step, None], 16000, seq=seq, epoch=1)
            while engine.step() is not None:
                pass
        engine.finish_stream(name)
    finally:
        engine.streams.pop(name, None)  # the next file of the same name starts a fresh stream at 0 s


CLIP_WINDOW_COLUMNS = 187  # 29.92 s: the whole columns of the encoder's longest training clip (30 s)


def clip_scores(backend, matcher, mono: np.ndarray, prompts: dict[str, str]) -> dict[str, float]:
    """Whole-clip scores by prompt text (label -> text in `prompts`) of 16 kHz mono audio (n,) from
    the global embedding: a clip shorter than one 160 ms column is padded to one with silence
    (`frontend.pad_to_columns`); a longer one is cut into 30 s windows whose embeddings are averaged,
    each weighted by its length (a 2 s tail does not count as much as 30 s)."""
    from encoder.frontend import PATCH_FRAMES, log_mel, pad_to_columns

    mel = log_mel(pad_to_columns(mono))
    n_columns = mel.shape[1] // PATCH_FRAMES  # at least one (pad_to_columns)
    n_windows = -(-n_columns // CLIP_WINDOW_COLUMNS)
    bounds = np.linspace(0, n_columns, n_windows + 1).round().astype(int) * PATCH_FRAMES
    globs, weights = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):  # windows of whole columns, as equal as they can be
        part = np.ascontiguousarray(mel[None, :, a:b])
        globs.append(backend.encode(part, np.array([b - a], np.int64))[2][0])
        weights.append(b - a)
    glob = np.average(np.stack(globs), axis=0, weights=weights)[None].astype(np.float32)  # (1, E)
    s = matcher(glob, np.zeros((1, 0, glob.shape[1]), np.float32))  # no columns: clip-level scores only
    return {prompts.get(label, label): round(float(v), 4) for label, v in zip(s.labels, s.global_scores[0])}


def _read_mono(path: Path) -> tuple[np.ndarray, str | None]:
    """A file as 16 kHz mono float32 in [-1, 1], and why its decoding stopped early (or None).
    Raises AudioFileError (one line) for a file that cannot be used."""
    from streamer.audio_file import read_audio
    from streamer.resample import to_mono_16k

    audio = read_audio(path)
    # float files may hold any finite value and resampling overshoots: keep the mel finite, as the engine does
    return np.clip(to_mono_16k(audio.samples, audio.rate), -1.0, 1.0), audio.error


def tag_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="main.py tag", description="Tag audio files through the streaming path. A file that cannot be "
        "read is one line on stderr (the file and why) and the next file goes on; exit status 1 if any failed.")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--config", type=Path)
    p.add_argument("--prompt", action="append", help="a prompt (repeatable); instead of --config")
    p.add_argument("--model", help="weights file (default: the config's)")
    p.add_argument("--json", action="store_true", help="one JSON line per event, and one per file "
                   '(kind "file_end": its number of events and seconds)')
    p.add_argument("--scores", action="store_true", help="one JSON line per file with clip-level scores")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        cfg = tag_config(args)
    except (ConfigError, ValueError) as e:
        print(f"main.py tag: {e}".splitlines()[0], file=sys.stderr)
        return 2
    from streamer.audio_file import AudioFileError
    from streamer.engine import Engine

    backend = _open_backend(cfg, "main.py tag")
    if backend is None:
        return 2
    starts: dict[str, int] = {}  # start events by stream, for each file's closing line

    def show(payloads: list[dict]) -> None:
        for pl in payloads:
            starts[pl["stream"]] = starts.get(pl["stream"], 0) + (pl["kind"] == "start")
            if args.json:
                print(json.dumps({k: pl[k] for k in ("stream", "label", "prompt", "kind", "score", "model", "reason")}
                                 | {"onset": pl["stream_onset"], "offset": pl["stream_offset"]}), flush=True)
            elif not args.scores:
                print(_format_event(pl), flush=True)

    def fail(path: Path, reason: str) -> None:
        print(f"main.py tag: {path}: {reason}".splitlines()[0], file=sys.stderr, flush=True)

    engine = Engine(cfg, backend, on_events=None if args.scores else show, bind=False)
    prompts = {p.label: " | ".join(p.text) for p in cfg.prompts}
    status = 0
    for path in args.paths:
        try:
            mono, error = _read_mono(path)
            if args.scores:
                print(json.dumps({"file": str(path), "scores": clip_scores(backend, engine.matcher, mono, prompts)}),
                      flush=True)
            else:
                name = _stream_name(path.name)
                starts[name] = 0
                tag_file(engine, path, mono)
                seconds = round(len(mono) / 16000, 3)
                print(json.dumps({"file": str(path), "stream": name, "kind": "file_end", "events": starts[name],
                                  "seconds": seconds}) if args.json
                      else f"{name:>12} done  {starts[name]} events in {seconds:.2f} s", flush=True)
            if error is not None:  # scored up to where decoding stopped; still a failed file
                fail(path, error)
                status = 1
        except AudioFileError as e:
            fail(path, e.reason)
            status = 1
        except Exception as e:  # a bug must not lose the rest of the batch: one line, and the next file
            log.debug("%s", path, exc_info=True)
            fail(path, f"internal error ({type(e).__name__}: {e}); rerun with --log-level DEBUG for the traceback")
            status = 1
    return status


# --- subscribe / events / config --------------------------------------------------------------------


def subscribe_main(argv: list[str]) -> int:
    import zmq

    p = argparse.ArgumentParser(prog="main.py subscribe", description="Print live events.")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5556")
    p.add_argument("--topic", default="events.", help="topic prefix, e.g. events.kitchen. or scores. or stream.")
    p.add_argument("--json", action="store_true")
    p.add_argument("--count", type=int, help="exit after this many messages")
    p.add_argument("--timeout", type=float, help="exit after this many seconds")
    args = p.parse_args(argv)
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.connect(args.endpoint)
    sock.setsockopt_string(zmq.SUBSCRIBE, args.topic)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    n = 0
    try:
        while args.count is None or n < args.count:
            wait = 200 if deadline is None else max(0, min(200, int((deadline - time.monotonic()) * 1000)))
            if deadline is not None and time.monotonic() >= deadline:
                break
            if not sock.poll(wait):
                continue
            topic, body = sock.recv_multipart()
            payload = json.loads(body)
            if args.json or payload.get("type") != "event":
                print(json.dumps(payload), flush=True)
            else:
                print(_format_event(payload), flush=True)
            n += 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close(0)
    return 0


def _parse_since(text: str) -> float:
    """Unix seconds, an ISO time, or a relative '10m' / '2h' / '1d'."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text)
    if m:
        return time.time() - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text)
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def events_main(argv: list[str]) -> int:
    from streamer.publish import query_events

    p = argparse.ArgumentParser(prog="main.py events", description="Query the event log.")
    p.add_argument("--log", type=Path, help="SQLite event log (default: the config's)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--since", help="Unix seconds, ISO time, or relative (10m, 2h, 1d)")
    p.add_argument("--label")
    p.add_argument("--stream")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        path = args.log or load_config(args.config).outputs.event_log
        since = _parse_since(args.since) if args.since else None
    except (ConfigError, ValueError) as e:
        print(f"main.py events: {e}".splitlines()[0], file=sys.stderr)
        return 2
    if path is None or not Path(path).exists():
        print(f"main.py events: no event log at {path}", file=sys.stderr)
        return 2
    for row in query_events(path, since=since, label=args.label, stream=args.stream, limit=args.limit):
        d = row.__dict__
        if args.json:
            print(json.dumps(d))
        else:
            when = datetime.fromtimestamp(row.onset, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            dur = f"{row.offset - row.onset:6.2f}s" if row.offset is not None else "  open "
            print(f"{when} {row.stream:>12} {row.label:<16} {dur} score={row.score:.2f} {row.reason or ''}")
    return 0


def config_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="main.py config", description="Config tools.")
    sub = p.add_subparsers(dest="cmd", required=True)
    schema = sub.add_parser("schema", help="write the JSON Schema of the engine config")
    schema.add_argument("--out", type=Path)
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("path", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "schema":
        text = json.dumps(config_json_schema(), indent=2)
        if args.out:
            args.out.write_text(text + "\n")
        else:
            print(text)
        return 0
    try:
        cfg = load_config(args.path)
    except ConfigError as e:
        print(str(e).splitlines()[0], file=sys.stderr)
        return 2
    print(f"{args.path}: ok ({len(cfg.sources)} sources, {len(cfg.prompts)} prompts)")
    return 0
