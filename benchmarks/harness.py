"""What the streaming benchmarks (capacity, latency, memory) share.

    engine = EngineProcess("onnx", threads=2, ...).start()     # python -m benchmarks.engine_proc
    workers = Workers(engine.ingest, audio_path)               # python -m streamer.capture file --realtime --loop
    workers.resize(8); time.sleep(warmup)
    t0 = time.monotonic(); time.sleep(10); w = engine.window(t0, time.monotonic())   # WindowStats

The engine and every capture worker are separate processes, as in deployment; this process only
starts them and reads the engine's per-step records (HopStats) from its stdout. Latency is the
engine's `end_to_end_s`: from the capture wall clock of a window's newest sample (stamped by the
worker) to its events published. Outputs of a run: runs/bench/<scenario>-<time>.{txt,json,png}.
"""

from __future__ import annotations

import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from benchmarks.engine_proc import proc_status_bytes
from encoder.frontend import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
CONTEXT_S = 10.0  # encoder context per window (the engine's default)
HOP_S = 0.5  # new audio between two windows of a stream
DEADLINE_MARGIN_S = 0.150  # deadline = hop + this, on the p99 end-to-end latency
BENCH_AUDIO_S = 60.0  # the file every stream loops (each worker starts at its own time)
OUT_DIR = Path("runs/bench")


def default_threads() -> int:
    return min(4, os.cpu_count() or 1)


def add_engine_args(p) -> None:
    """The engine options every load scenario shares (capacity, latency, memory)."""
    p.add_argument("--model", default="slap-tiny", help="weights file or config name (random weights)")
    p.add_argument("--cache-dir", type=Path, default=Path("cache"))
    p.add_argument("--threads", type=int, default=default_threads(), help="intra-op threads, engine and YAMNet")
    p.add_argument("--context", type=float, default=CONTEXT_S, help="seconds of context per window")
    p.add_argument("--hop", type=float, default=HOP_S, help="seconds between a stream's windows")
    p.add_argument("--frame-ms", type=int, default=None,
                   help="capture workers' frame length (default: one frame per hop, as the engine's own workers)")


def worker_frame_ms(args) -> int:
    """--frame-ms, or what `main.py` gives the workers it starts: one frame per hop (streamer.cli)."""
    from streamer.cli import frame_ms_for_hop

    return args.frame_ms or frame_ms_for_hop(args.hop)


# ------------------------------------------------------------------------------------ progress


class Progress:
    """One line per step on stderr, with the seconds since the run started."""

    def __init__(self, name: str):
        self.name = name
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:5.0f} s] {self.name}: {message}", file=sys.stderr, flush=True)

    def wait(self, seconds: float, what: str) -> None:
        self(f"{what} ({seconds:.0f} s)")
        time.sleep(seconds)


# ------------------------------------------------------------------------------------ audio


def bench_audio(cache_dir: Path, seconds: float = BENCH_AUDIO_S) -> Path:
    """A 16 kHz mono WAV of `seconds`: the corpus's first dev clips back to back (varied sounds, so
    detectors fire), or, without a corpus, tone + noise + clicks. Made once under cache_dir/bench."""
    import soundfile as sf

    path = cache_dir / "bench" / f"bench-{seconds:g}s.wav"
    if path.is_file():
        return path
    need = int(seconds * SAMPLE_RATE)
    audio = _corpus_audio(cache_dir / "corpus", need)
    if audio is None:
        from benchmarks.encoder_bench import synth_audio

        audio = synth_audio(1, seconds)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.wav")
    sf.write(tmp, np.clip(audio, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    os.replace(tmp, path)
    return path


def _corpus_audio(corpus: Path, need: int) -> np.ndarray | None:
    manifest = corpus / "manifest.jsonl"
    if not manifest.is_file():
        return None
    parts, have = [], 0
    with manifest.open() as f:
        for line in f:
            clip = json.loads(line)
            if clip.get("split") != "dev":
                continue
            shard = np.load(corpus / clip["shard"], mmap_mode="r")
            part = np.asarray(shard[clip["offset"]:clip["offset"] + clip["n_samples"]], np.float32) / 32768
            parts.append(part)
            have += len(part)
            if have >= need:
                return np.concatenate(parts)[:need]
    return None


# ------------------------------------------------------------------------------------ statistics


def percentiles(xs: list[float] | np.ndarray) -> dict:
    """n, mean, p50, p95, p99, max of a sample, in the sample's unit (None when empty)."""
    a = np.asarray(xs, np.float64)
    if a.size == 0:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    q = np.quantile(a, [0.5, 0.95, 0.99])
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(q[0]), "p95": float(q[1]),
            "p99": float(q[2]), "max": float(a.max())}


def ms(x: float | None) -> str:
    return "-" if x is None else f"{1e3 * x:.0f}"


@dataclass
class WindowStats:
    """The engine over one measurement window [t0, t1) (monotonic seconds)."""

    seconds: float
    steps: int
    end_to_end: dict  # percentiles of end_to_end_s, seconds
    queue_wait: dict
    capture_to_engine: dict  # derived per window: end to end - queue wait - step
    encode: dict  # per step
    match_s: float  # mean per step
    detect_s: float
    publish_s: float
    batch_mean: float
    windows: int
    deadline_misses: int  # as the engine counts them (queue wait + step > hop)
    skipped: int  # hops skipped: the engine fell behind
    rtf: float | None  # busy / audio seconds over the window
    cpu_per_s: float | None  # engine process CPU seconds per wall second (all its threads)
    busy_per_s: float | None  # engine seconds serving hops per wall second
    gaps: int  # frames lost before the engine (worker queue full)
    rss: int  # engine RSS at the end of the window, bytes
    hwm: int  # engine peak RSS so far, bytes
    e2e_samples: list[float] = field(default_factory=list, repr=False)


# ------------------------------------------------------------------------------------ engine


class EngineProcess:
    """The engine under test: `python -m benchmarks.engine_proc` (see there), read by a thread."""

    def __init__(self, backend: str, *, model: str = "slap-tiny", threads: int = 2, context_s: float = CONTEXT_S,
                 hop_s: float = HOP_S, cache_dir: Path = Path("cache"), metrics: bool = True,
                 encoder: str = "incremental", precision: str = "int8", batch_wait_s: float = 0.0):
        self.cmd = [sys.executable, "-m", "benchmarks.engine_proc", "--backend", backend, "--model", model,
                    "--threads", str(threads), "--context", str(context_s), "--hop", str(hop_s),
                    "--cache-dir", str(cache_dir), "--encoder", encoder, "--precision", precision,
                    "--batch-wait", str(batch_wait_s)] \
            + ([] if metrics else ["--no-metrics"])
        self.backend = backend
        self.hops: list[list] = []
        self.samples: list[dict] = []
        self.ready: dict | None = None
        self.profiles: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()

    def start(self, timeout: float = 180.0) -> EngineProcess:
        self._log = tempfile.TemporaryFile("w+")  # the engine's log lines, shown if it fails to start
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, bufsize=1,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.ready is None:
            self.stop()
            self._log.seek(0)
            last = ([line.strip() for line in self._log.read().splitlines() if line.strip()] or ["no output"])[-1]
            raise RuntimeError(f"engine ({self.backend}) did not start: {last}")
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            with self._lock:
                if "h" in msg:
                    self.hops.append(msg["h"])
                elif "s" in msg:
                    self.samples.append(msg["s"])
                elif "ready" in msg:
                    self.ready = msg["ready"]
                    self._ready.set()
                elif "profile" in msg:
                    self.profiles.append(msg["profile"])
        self._ready.set()

    @property
    def ingest(self) -> str:
        return self.ready["ingest"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def _sample_at(self, t: float) -> dict | None:
        """The engine's 1 s sample nearest to monotonic time t."""
        with self._lock:
            samples = list(self.samples)
        return min(samples, key=lambda s: abs(s["t"] - t)) if samples else None

    def window(self, t0: float, t1: float) -> WindowStats:
        time.sleep(1.2)  # the sample after t1 has arrived
        with self._lock:
            hops = [h for h in self.hops if t0 <= h[0] < t1]
        a, b = self._sample_at(t0), self._sample_at(t1)
        e2e = [e for h in hops for e in h[7]]
        queue = [q for h in hops for q in h[6]]
        c2e = []
        for h in hops:
            if len(h[6]) == len(h[7]):
                step = h[2] + h[3] + h[4] + h[5]
                c2e += [max(0.0, e - q - step) for q, e in zip(h[6], h[7])]
        dt = (b["t"] - a["t"]) if a and b and b["t"] > a["t"] else 0.0

        def delta(key: str) -> float:
            return b[key] - a[key] if dt else 0

        def mean(i: int) -> float:
            return float(np.mean([h[i] for h in hops])) if hops else 0.0

        return WindowStats(
            seconds=t1 - t0, steps=len(hops), end_to_end=percentiles(e2e), queue_wait=percentiles(queue),
            capture_to_engine=percentiles(c2e), encode=percentiles([h[2] for h in hops]),
            match_s=mean(3), detect_s=mean(4), publish_s=mean(5), batch_mean=mean(1),
            windows=sum(h[1] for h in hops), deadline_misses=sum(h[8] for h in hops), skipped=delta("skipped"),
            rtf=delta("busy") / delta("audio") if delta("audio") > 0 else None,
            cpu_per_s=delta("cpu") / dt if dt else None, busy_per_s=delta("busy") / dt if dt else None,
            gaps=delta("missing"), rss=b["rss"] if b else 0, hwm=b["hwm"] if b else 0, e2e_samples=e2e)

    def profile(self, seconds: float, path: Path, top: int = 15) -> list[dict]:
        """cProfile the engine thread for `seconds`; the top functions by own time."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.command("profile on")
        time.sleep(seconds)
        self.command(f"profile off {path.resolve()}")
        end = time.monotonic() + 30
        while str(path.resolve()) not in self.profiles and time.monotonic() < end:
            time.sleep(0.2)
        if not path.is_file():
            return []
        return profile_top(path, top)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.command("stop")
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def profile_top(path: Path, top: int = 15) -> list[dict]:
    """pstats -> [{function, own_s, own_share, cum_s, calls}] by own time, share of all own time."""
    st = pstats.Stats(str(path))
    rows = st.stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    total = sum(v[2] for v in rows.values()) or 1.0
    out = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in sorted(rows.items(), key=lambda kv: -kv[1][2])[:top]:
        where = name if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{line}({name})"
        out.append({"function": where, "own_s": tt, "own_share": tt / total, "cum_s": ct, "calls": nc})
    return out


# ------------------------------------------------------------------------------------ workers


class Workers:
    """Capture worker subprocesses playing the bench file in real time, looping: stream s000, s001, ..."""

    def __init__(self, endpoint: str, audio: Path, frame_ms: int | None = None):
        self.endpoint = endpoint
        self.audio = audio
        self.frame_args = [f"--frame-ms={frame_ms}"] if frame_ms else []
        self.procs: list[subprocess.Popen] = []

    def resize(self, n: int) -> None:
        while len(self.procs) < n:
            name = f"s{len(self.procs):03d}"
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "streamer.capture", "file", str(self.audio), "--realtime", "--loop",
                 "--endpoint", self.endpoint, "--stream", name, "--log-level", "WARNING", *self.frame_args],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(ROOT)}))
        while len(self.procs) > n:
            _stop(self.procs.pop())

    def rss(self) -> list[int]:
        return [proc_status_bytes(p.pid, "VmRSS") for p in self.procs]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the running workers (from /proc/<pid>/stat)."""
        total = 0
        for p in self.procs:
            try:
                fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.poll() is None)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            _stop(p)
        self.procs = []


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------------------------ the host


def _proc_stat_cpu() -> tuple[float, ...]:
    """The machine's CPU seconds since boot by kind (/proc/stat's first line): user, nice, system,
    idle, iowait, irq, softirq, steal."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return tuple(x / tick for x in (fields + [0] * 8)[:8])


def host_cpu_seconds() -> float:
    """CPU seconds used on this machine by everything since boot (/proc/stat: all but idle and iowait)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = _proc_stat_cpu()
    return user + nice + system + irq + softirq + steal


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave other guests while this machine wanted them, since boot
    (/proc/stat steal): on a virtual machine, the share of a deadline miss no code here caused."""
    return _proc_stat_cpu()[7]


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class CpuMeter:
    """Machine CPU over a window, and the part used outside the benchmark: another job on the
    machine competes for the same cores, and the tables say how much.

        meter = CpuMeter(); ...; meter.stop(); other = meter.other_per_s(engine_cpu + workers_cpu)
    """

    def __init__(self):
        self.t0, self.host0, self.own0 = time.monotonic(), host_cpu_seconds(), own_cpu_seconds()
        self.host_per_s = self.own_per_s = 0.0

    def stop(self) -> CpuMeter:
        dt = time.monotonic() - self.t0
        self.host_per_s = (host_cpu_seconds() - self.host0) / dt
        self.own_per_s = (own_cpu_seconds() - self.own0) / dt  # this process (the harness, or YAMNet in it)
        return self

    def other_per_s(self, accounted_per_s: float = 0.0) -> float:
        """CPU s per s of everything but this process and `accounted_per_s` (engine, workers)."""
        return max(0.0, self.host_per_s - self.own_per_s - accounted_per_s)


# ------------------------------------------------------------------------------------ baseline


def yamnet_streams(cache_dir: Path, audio_path: Path, threads: int, hop_s: float = HOP_S):
    """The YAMNet streaming baseline (benchmarks.yamnet_stream), in this process."""
    import soundfile as sf

    from benchmarks.yamnet_baseline import YamNetBaseline
    from benchmarks.yamnet_stream import YamNetStreams

    audio, _ = sf.read(str(audio_path), dtype="float32")
    return YamNetStreams(YamNetBaseline(cache_dir, threads), audio, hop_s)


# ------------------------------------------------------------------------------------ outputs


def machine() -> dict:
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "platform": platform.platform()}


def held(stats_p99: float | None, skipped: int, windows: int, expected: float, deadline: float) -> bool:
    """A load is held when the p99 end to end is within the deadline, no hop was skipped, and the
    windows expected (streams x seconds / hop) were served (at least 80 %: start-up jitter)."""
    return stats_p99 is not None and stats_p99 <= deadline and skipped == 0 and windows >= 0.8 * expected


def write_outputs(scenario: str, result: dict, table: str, figure=None, out: Path | None = None) -> list[Path]:
    """runs/bench/<scenario>-<time>.txt/.json(/.png); `out` names the JSON instead."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = out or OUT_DIR / f"{scenario}-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    txt = json_path.with_suffix(".txt")
    txt.write_text(table + "\n")
    paths = [txt, json_path]
    if figure is not None:
        png = json_path.with_suffix(".png")
        figure.savefig(png, dpi=110, bbox_inches="tight")
        paths.append(png)
    return paths


def _jsonable(o):
    if isinstance(o, WindowStats):
        d = asdict(o)
        d.pop("e2e_samples")
        return d
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
