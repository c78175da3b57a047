"""The engine: one PULL socket, many streams, batched encoder calls, events out.

    frames (PULL) -> decode + validate -> resample to 16 kHz mono -> StreamContext (per stream)
    -> every hop: the due windows of all streams in one padded encoder call; with
       context.encoder "incremental" (default) only each window's new columns are encoded,
       against the stream's cached keys/values (encoder/incremental.py), else the whole window
    -> Matcher (prompts x global / columns) -> EventDetector per (stream, label)
    -> EventLog (SQLite, first) -> Publisher (ZeroMQ PUB)

The hot loop fills plain stats objects (`EngineCounters`, one `HopStats` per step); the metrics
module maps them onto Prometheus, so nothing here imports prometheus_client.

Bad input never stops the engine: a frame that fails to decode, comes from an unknown stream, or
carries unusable samples is counted by reason, logged (rate-limited), and dropped.

Receive path (`poll_once`): the PULL socket is drained (decode + validate only, cheap) into one
bounded queue per stream; the queues are then served round-robin, one frame per stream per round,
for at most SERVE_BUDGET_S, and then the due hops run. A stream that sends faster than the engine
analyses fills its own queue and loses its own oldest frames (counted: frames_dropped["queue_full"]);
the other streams keep their place in every round. Streams named in `lossless` (sources that send
as fast as the engine reads, e.g. `file` with realtime: false) are never dropped: when their queue
is full the engine stops draining the socket, so their worker waits (ZeroMQ back-pressure).

Ingest security: the sockets bind where the config says (127.0.0.1 by default). With
`outputs.curve`, the PULL socket is a CURVE server and a ZAP handler admits only the workers whose
public keys are in `authorized_keys_dir` (re-read at each connection) plus the engine's own
workers, which get a key pair made at start (`worker_args`).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq
from threadpoolctl import threadpool_limits

from encoder.frontend import PATCH_FRAMES, SECONDS_PER_COLUMN
from encoder.runtime.stream_cache import StreamCache, encode_new_columns
from streamer.config import CurveConfig, EngineConfig
from streamer.context import COLUMN_SAMPLES, StreamContext, Window
from streamer.detector import EventDetector, EventEdge, Smoothing
from streamer.embedding_store import EmbeddingStore
from streamer.ingest import QUEUE_BYTES, QUEUE_FRAMES, FrameQueue, WorkerKeys, is_loopback
from streamer.matcher import Calibration, Matcher, PromptCache, prompt_embeddings
from streamer.publish import ClipWriter, Event, EventLog, Publisher, new_event_id, scores_topic
from streamer.resample import TARGET_RATE, StreamResampler
from streamer.wire import MAX_FRAME_BYTES, WIRE_ERROR_REASONS, Frame, WireError

log = logging.getLogger("streamer.engine")

MAX_BATCH = 32  # windows per encoder call; more due hops wait for the next call
# Incremental hops per call: past ~8 streams a batch's caches (3 MB each) outgrow the CPU's caches
# and a stream-hop costs more, not less (docs/capacity.md).
MAX_INCREMENTAL_BATCH = 8
RECV_BUDGET = 512  # messages read from the socket per loop turn (decode only: ~6 us each)
SERVE_BUDGET_S = 0.05  # seconds of feeding queued frames per loop turn before due hops are served
MAX_STREAMS = 256  # distinct stream ids taken when the engine has no list of streams (tag, tests)
MAX_MESSAGE_BYTES = 2 * MAX_FRAME_BYTES  # larger messages are cut by ZeroMQ (it drops the peer)
STALE_AFTER_S = 2.0  # no frame for this long: the stream is stale (events closed, status sent)
RCVHWM = 10_000  # frames queued in the PULL socket (~17 min of audio in 100 ms frames)
LOG_RETRY_S = 1.0  # how often the loop offers a failing event log its backlog (EventLog paces the tries)

# Reasons of EngineCounters.frames_rejected and frames_dropped (stable: metric labels).
REJECT_REASONS = (
    *WIRE_ERROR_REASONS,
    "unknown_stream",  # not one of the config's sources
    "reserved_stream_id",  # "." or "..": valid on the wire, but not as a directory name
    "too_many_streams",  # a new id past MAX_STREAMS (engines without a list of streams)
    "internal_error",  # a bug: the frame raised inside the engine (logged with its traceback)
)
DROP_REASONS = (
    "late",  # seq at or before the last one of its epoch (duplicate, reordered)
    "stale_epoch",  # from a worker run already replaced
    "queue_full",  # its stream's queue was full: the oldest frame made room
)
RESERVED_STREAM_IDS = (".", "..")
# Reasons of EngineCounters.source_failures: why a capture worker exited with an error (counted by
# the supervisor of `main.py`; stable: metric labels).
SOURCE_FAILURE_REASONS = (
    "source_error",  # exit 2: the source cannot be opened (a missing, empty or unreadable file, no device, ...)
    "failed",  # another error exit: it failed while running (a file whose decoding stops part way, ...)
    "killed",  # ended by a signal
)


@dataclass
class EngineCounters:
    """Cumulative counts since the engine started."""

    frames_received: Counter = field(default_factory=Counter)  # by stream
    frames_rejected: Counter = field(default_factory=Counter)  # by reason (wire reasons, unknown_stream, ...)
    frames_dropped: Counter = field(default_factory=Counter)  # by reason: DROP_REASONS
    events: Counter = field(default_factory=Counter)  # start edges by label
    hops: int = 0
    hops_skipped: int = 0
    deadline_misses: int = 0
    config_reloads: int = 0
    config_reload_failures: int = 0
    stale_transitions: int = 0
    summaries: int = 0  # end-of-stream summaries (one full-window pass each on the incremental encoder)
    auth_refused: int = 0  # worker connections refused by CURVE authentication (unknown key)
    source_failures: Counter = field(default_factory=Counter)  # by (stream, reason): SOURCE_FAILURE_REASONS
    audio_seconds: float = 0.0  # stream-seconds of new audio analysed
    busy_seconds: float = 0.0  # wall seconds spent serving hops (real-time factor = busy / audio)


@dataclass
class HopStats:
    """One engine step: a batch of due windows through encoder, matcher, detector and publisher."""

    batch_size: int
    queue_wait_s: list[float]  # per window: from the hop falling due (its last sample arriving) to encode start
    encode_s: float
    match_s: float
    detect_s: float
    publish_s: float
    end_to_end_s: list[float]  # per window: capture wall time of its newest sample -> published
    deadline_misses: int  # windows whose queue wait + step exceeded the hop (served after the next fell due)
    new_events: int
    streams: list[str] = field(default_factory=list)  # stream of each window, in window order
    capture_to_engine_s: list[float] = field(default_factory=list)  # per window with a capture time: newest sample's capture -> fed to the context


@dataclass
class StreamState:
    name: str
    context: StreamContext
    detectors: dict[str, EventDetector]
    resampler: StreamResampler | None = None
    format_key: tuple[int, int] | None = None  # (rate, channels) the resampler was made for
    open_events: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # label -> (id, onset column, peak)
    last_seen: float = 0.0  # monotonic seconds of the last accepted frame
    due_since: float | None = None  # monotonic seconds when the pending hop fell due
    newest_wall: float | None = None  # capture wall clock (Unix s) of the newest sample
    arrival_lag: float | None = None  # seconds from the newest sample's capture to its feed into the context
    stale: bool = False
    level_energy: float = 0.0  # sum of squared samples fed since the last hop (the scores' level_db)
    level_samples: int = 0
    cache: StreamCache | None = None  # the incremental encoder's keys/values (None: window mode)

    def take_level_db(self) -> float:
        """The RMS level (dB re full scale) of the audio fed since the last call, then start afresh."""
        level_db = 10 * np.log10(max(self.level_energy / max(self.level_samples, 1), 1e-10))
        self.level_energy, self.level_samples = 0.0, 0
        return level_db


@dataclass
class Encoded:
    """One encoder call's output for a batch of due windows: row i scores columns
    [first[i], first[i] + count[i]) of its stream (count 0: nothing new to score)."""

    columns: np.ndarray  # (B, C, E)
    valid: np.ndarray  # (B, C) bool
    glob: np.ndarray  # (B, E)
    first: list[int]
    count: list[int]
    new_from: list[int]  # row-local index of the first column new in this hop (score publication)


class Engine:
    """Owns the sockets and per-stream state; `run()` loops, `step()` serves due hops once.

    backend: an encoder runtime (encoder.runtime); streams: the accepted stream ids (None: any
    valid id, up to MAX_STREAMS, for `tag` and tests). lossless: streams whose queued frames are
    never dropped (see the module docstring). on_events: called with each published batch of payloads.
    """

    def __init__(
        self,
        cfg: EngineConfig,
        backend,
        *,
        streams: set[str] | None = None,
        context: zmq.Context | None = None,
        on_events: Callable[[list[dict]], None] | None = None,
        on_hop: Callable[[HopStats], None] | None = None,
        bind: bool = True,
        stale_after_s: float = STALE_AFTER_S,
        lossless: set[str] | None = None,
        queue_frames: int = QUEUE_FRAMES,
    ):
        # numpy's BLAS (OpenBLAS) goes multi-threaded on a frame's log-mel product past a size and
        # its idle threads then spin: with 0.5 s frames one stream cost 0.26 CPU s/s instead of
        # 0.04. The encoder runtime's own threads are the engine's parallelism.
        threadpool_limits(1, user_api="blas")
        self.backend = backend
        self.manifest = getattr(backend, "manifest", {})
        self.model_id = f"{self.manifest.get('model_name', 'slap')}@{self.manifest.get('model_hash', 'unknown')[:8]}"
        self.allowed = streams
        self.on_events, self.on_hop = on_events, on_hop
        self.stale_after_s = stale_after_s
        self.counters = EngineCounters()
        self.streams: dict[str, StreamState] = {}
        self.zmq = context or zmq.Context.instance()
        self.pull: zmq.Socket | None = None
        self.lossless = lossless or set()
        self.queue_frames = queue_frames
        self.queues: dict[str, FrameQueue] = {}
        self._rr = 0  # round-robin offset: which queued stream goes first in the next turn
        self._next_log_retry = 0.0
        self.authenticator = None
        self.worker_args: list[str] = []  # CURVE flags for the capture workers this engine starts
        self._key_dir: str | None = None
        self._last_log: dict[str, float] = {}
        self.prompt_cache = PromptCache(cfg.model.cache_dir)
        cal = self.manifest.get("calibration")
        self.calibration = Calibration.from_manifest(cal) if cal else Calibration(10.0, -5.0)
        self.cfg = cfg
        self.incremental = cfg.context.encoder == "incremental" and hasattr(backend, "incremental")
        self.max_batch = MAX_INCREMENTAL_BATCH if self.incremental else MAX_BATCH
        if cfg.context.encoder == "incremental" and not self.incremental:
            log.warning("backend %s has no incremental encoder: every hop re-encodes its whole window",
                        getattr(backend, "name", type(backend).__name__))
        self.matcher = self._make_matcher(cfg)
        event_log = EventLog(cfg.outputs.event_log) if cfg.outputs.event_log else None
        self.publisher: Publisher | None = None
        self.clips = None
        if bind:
            self.pull = self.zmq.socket(zmq.PULL)
            self.pull.setsockopt(zmq.RCVHWM, RCVHWM)
            self.pull.setsockopt(zmq.LINGER, 0)
            self.pull.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
            if cfg.outputs.curve is not None:
                self._secure_ingest(cfg.outputs.curve)
            self.pull.bind(cfg.outputs.ingest_endpoint)
            self.ingest_endpoint = self.pull.getsockopt(zmq.LAST_ENDPOINT).decode()
            if cfg.outputs.curve is None and not is_loopback(self.ingest_endpoint):
                log.warning("ingest endpoint %s accepts audio from other machines without authentication; "
                            "set outputs.curve to admit only known workers", self.ingest_endpoint)
            self.publisher = Publisher(cfg.outputs.pub_endpoint, event_log=event_log, context=self.zmq)
            if event_log is not None:
                closed = event_log.close_open_events("engine_restart")
                if closed:
                    log.warning("closed %d events left open by the previous run (reason engine_restart)", len(closed))
                    self._emit_payloads(self.publisher.publish_events(closed))
        c = cfg.outputs.clips
        if cfg.outputs.clips_dir is not None:
            self.clips = ClipWriter(cfg.outputs.clips_dir, pre_roll_s=c.pre_roll_s, post_roll_s=c.post_roll_s,
                                    fmt=c.format, max_age_days=c.max_age_days, max_total_mb=c.max_total_mb)
        self.embeddings: EmbeddingStore | None = None
        if bind and cfg.outputs.embeddings_path is not None:
            self.embeddings = self._open_embeddings(cfg)

    def _open_embeddings(self, cfg: EngineConfig) -> EmbeddingStore | None:
        """The per-hop embedding store for search; None (logged) when its file cannot be opened."""
        e = cfg.outputs.embeddings
        try:
            return EmbeddingStore(cfg.outputs.embeddings_path, model=self.model_id, hop_s=cfg.context.hop_s,
                                  context_s=cfg.context.max_context_s, max_age_days=e.max_age_days,
                                  max_total_mb=e.max_total_mb, audio=e.audio, audio_max_total_mb=e.audio_max_total_mb)
        except (OSError, sqlite3.Error) as err:
            log.error("embedding store %s not opened (%s): the engine runs without search",
                      cfg.outputs.embeddings_path, err)
            return None

    def _secure_ingest(self, curve: CurveConfig) -> None:
        """CURVE server on the PULL socket; a ZAP handler admits known worker keys only."""
        from zmq.auth import create_certificates, load_certificate
        from zmq.auth.thread import ThreadAuthenticator

        public, secret = load_certificate(curve.server_secret_key_file)
        self._key_dir = tempfile.mkdtemp(prefix="slap-worker-key-")  # 0700: the local workers' key pair
        _, worker_secret_file = create_certificates(self._key_dir, "local-worker")
        worker_public, _ = load_certificate(worker_secret_file)
        # "--flag=value": a Z85 key may start with "-", which argparse would read as another flag
        self.worker_args = [f"--curve-server-key={public.decode()}", f"--curve-secret-key-file={worker_secret_file}"]

        def refused(key: bytes) -> None:
            self.counters.auth_refused += 1
            self._warn("auth_refused", f"worker refused: CURVE key {key[:8].decode(errors='replace')}... is not in "
                       f"{curve.authorized_keys_dir} [{self.counters.auth_refused} so far]")

        self.authenticator = ThreadAuthenticator(self.zmq, log=logging.getLogger("streamer.auth"))
        self.authenticator.start()
        self.authenticator.configure_curve_callback(
            "*", WorkerKeys(Path(curve.authorized_keys_dir), {worker_public}, refused))
        self.pull.curve_secretkey = secret
        self.pull.curve_publickey = public
        self.pull.curve_server = True
        log.info("ingest: CURVE on, worker keys from %s", curve.authorized_keys_dir)

    def _warn_due(self, key: str) -> bool:
        """True at most once per 5 s per key: log lines about bad input are rate-limited."""
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) > 5.0:
            self._last_log[key] = now
            return True
        return False

    def _warn(self, key: str, message: str) -> None:
        if self._warn_due(key):
            log.warning("%s", message)

    # -- prompts and config ---------------------------------------------------------------
    def _make_matcher(self, cfg: EngineConfig) -> Matcher:
        emb = prompt_embeddings([p.text for p in cfg.prompts], self.manifest.get("model_hash", "unknown"),
                                self.backend.embed_text, self.prompt_cache)
        return Matcher(emb, [p.label for p in cfg.prompts], self.calibration)

    def _detector(self, label: str) -> EventDetector:
        d = self.cfg.detector_for(label)
        s = d.smoothing
        return EventDetector.from_seconds(d.on_threshold, d.off_threshold, d.min_duration_s, d.merge_gap_s,
                                          Smoothing(s.kind, s.alpha, s.window), d.lookback_s)

    def apply_config(self, new: EngineConfig) -> None:
        """Hot reload: re-embed prompts and rebuild the detectors whose settings changed; audio
        context is kept. Events of removed or changed labels are closed with reason config_reload."""
        old = self.cfg
        matcher = self._make_matcher(new)  # may raise: then nothing changed
        self.cfg, self.matcher = new, matcher
        for state in self.streams.values():
            edges_by_label = {}
            for label in list(state.detectors):
                keep = label in matcher.labels and old.detector_for(label) == new.detector_for(label) \
                    and old.prompt(label).text == new.prompt(label).text
                if not keep:
                    edges_by_label[label] = state.detectors.pop(label).flush("config_reload")
            for label in matcher.labels:
                if label not in state.detectors:
                    state.detectors[label] = self._detector(label)
            self._publish(state, edges_by_label)
        self.counters.config_reloads += 1
        log.info("config reloaded: %d prompts (%s)", len(matcher.labels), ", ".join(matcher.labels))

    # -- streams ----------------------------------------------------------------------------
    def _stream(self, name: str) -> StreamState:
        state = self.streams.get(name)
        if state is None:
            c = self.cfg.context
            state = StreamState(name, StreamContext(c.max_context_s, c.hop_s, c.gap_policy, c.max_gap_s),
                                {label: self._detector(label) for label in self.matcher.labels})
            if self.incremental:
                state.cache = StreamCache(state.context.window_frames // PATCH_FRAMES, self.backend.cache_spec)
            self.streams[name] = state
            log.info("stream %s: first frame", name)
        return state

    def _reject(self, reason: str, message: str) -> None:
        self.counters.frames_rejected[reason] += 1
        self._warn(reason, f"frame rejected ({reason}): {message} [{self.counters.frames_rejected[reason]} so far]")

    def _accept(self, buf) -> Frame | None:
        """Decode and validate one wire message: the frame, or None (rejection counted by reason)."""
        try:
            frame = Frame.decode(buf)
        except WireError as e:
            self._reject(e.reason, str(e))
            return None
        name = frame.stream_id
        if self.allowed is not None:
            if name not in self.allowed:
                self._reject("unknown_stream", f"stream {name!r} is not in the config's sources")
                return None
        elif name in RESERVED_STREAM_IDS:
            self._reject("reserved_stream_id", f"stream id {name!r} would name a parent directory")
            return None
        elif name not in self.streams and name not in self.queues and \
                len(self.streams.keys() | self.queues.keys()) >= MAX_STREAMS:
            self._reject("too_many_streams", f"stream {name!r} would be one too many "
                         f"(at most {MAX_STREAMS} without a list of sources)")
            return None
        return frame

    def _feed_frame(self, frame: Frame) -> None:
        try:
            self.feed(frame.stream_id, frame.samples(), frame.sample_rate, seq=frame.seq, epoch=frame.epoch,
                      mono_ns=frame.capture_mono_ns, wall_ns=frame.capture_wall_ns)
        except Exception:  # a bug, never bad input (that is refused above): count it and carry on
            self.counters.frames_rejected["internal_error"] += 1
            if self._warn_due("internal_error"):
                log.exception("frame of stream %s raised inside the engine (dropped)", frame.stream_id)

    def handle_message(self, buf: bytes) -> None:
        """Decode and feed one wire message now (no queue); never raises on bad input."""
        frame = self._accept(buf)
        if frame is not None:
            self._feed_frame(frame)

    def enqueue(self, buf) -> bool:
        """Decode one wire message into its stream's queue (served by `serve_queues`). Returns False
        when the message was a lossless stream's frame that filled its queue: stop reading for now."""
        frame = self._accept(buf)
        if frame is None:
            return True
        name = frame.stream_id
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = FrameQueue(self.queue_frames, QUEUE_BYTES, lossless=name in self.lossless)
        dropped = queue.push(frame)
        if dropped:
            self.counters.frames_dropped["queue_full"] += dropped
            self._warn(f"queue_full.{name}", f"stream {name}: queue full ({queue.max_frames} frames), dropped its "
                       f"oldest frames [{queue.dropped} so far]: it sends faster than the engine analyses")
        return not (queue.lossless and queue.full)

    @property
    def queued_frames(self) -> int:
        """Frames waiting in the per-stream queues."""
        return sum(len(q) for q in self.queues.values())

    def serve_queues(self, budget_s: float = SERVE_BUDGET_S) -> int:
        """Feed queued frames round-robin (one per stream per round) until the queues are empty
        or budget_s has passed; the first stream served rotates from turn to turn. A lossless stream
        stops at a due hop, so each of its hops is analysed (none skipped). Returns frames fed."""
        names = [name for name, q in self.queues.items() if q.frames and not self._hop_waits(name)]
        if not names:
            return 0
        self._rr = (self._rr + 1) % len(names)
        names = names[self._rr:] + names[:self._rr]
        deadline = time.monotonic() + budget_s
        fed = 0
        while names:
            for name in names:
                self._feed_frame(self.queues[name].pop())
                fed += 1
            names = [name for name in names if self.queues[name].frames and not self._hop_waits(name)]
            if time.monotonic() >= deadline:
                break
        return fed

    def _hop_waits(self, name: str) -> bool:
        """A lossless stream whose due hop is not served yet: feeding it more would skip that hop."""
        state = self.streams.get(name)
        return name in self.lossless and state is not None and state.context.hop_due

    def feed(self, name: str, samples: np.ndarray, rate: int, *, seq: int, epoch: int,
             mono_ns: int | None = None, wall_ns: int | None = None) -> None:
        """samples: (n, channels) float32 at `rate`; resampled to 16 kHz mono, then into the context."""
        state = self._stream(name)
        key = (rate, samples.shape[1])
        if key != (TARGET_RATE, 1):
            if state.format_key != key:
                state.resampler, state.format_key = StreamResampler(rate), key
            mono = state.resampler(samples)
        else:
            mono = samples[:, 0]
        # float32 frames may hold any finite value, and resampling overshoots: keep the mel finite
        mono = np.clip(mono, -1.0, 1.0, dtype=np.float32)
        late_before = state.context.stats.dropped_late
        push = state.context.push(mono, seq=seq, epoch=epoch, mono_ns=mono_ns, wall_ns=wall_ns)
        if not push.accepted:
            self.counters.frames_dropped["late" if state.context.stats.dropped_late > late_before else "stale_epoch"] += 1
            return
        self.counters.frames_received[name] += 1
        now = time.monotonic()
        state.last_seen = now
        if wall_ns is not None:
            state.newest_wall = wall_ns / 1e9 + len(mono) / TARGET_RATE
            state.arrival_lag = time.time() - state.newest_wall
        if state.stale:
            state.stale = False
            log.info("stream %s: live again", name)
            self._send_status(name, "live", None)
        if push.reset is not None:
            # the context restarted (new worker epoch or a long gap): open events end where the old clock stopped
            self._publish(state, {label: d.flush("worker_restart" if push.reset == "epoch" else "gap")
                                  for label, d in state.detectors.items()})
        if self.clips is not None:
            self.clips.push(name, mono, push.start_sample)
        if self.embeddings is not None:
            self.embeddings.push_audio(name, mono, push.start_sample, None if wall_ns is None else wall_ns / 1e9)
        state.level_energy += float(np.dot(mono, mono))
        state.level_samples += len(mono)
        if state.due_since is None and state.context.hop_due:
            state.due_since = now

    # -- hops ---------------------------------------------------------------------------------
    def step(self) -> HopStats | None:
        """Serve the due hops of all streams (up to max_batch) in one encoder call."""
        due = [s for s in self.streams.values() if s.context.hop_due][:self.max_batch]
        if not due:
            return None
        t_start = time.monotonic()
        windows: list[Window] = []
        for s in due:
            before = s.context.stats.hops_skipped
            windows.append(s.context.next_window())
            self.counters.hops_skipped += s.context.stats.hops_skipped - before
        queue_wait = [t_start - (s.due_since or t_start) for s in due]
        for s in due:
            s.due_since = time.monotonic() if s.context.hop_due else None
        enc = self._encode_incremental(due, windows) if self.incremental else self._encode_windows(due, windows)
        keep = [n > 0 for n in enc.count]
        t_enc = time.monotonic()
        scores = self.matcher(enc.glob, enc.columns, enc.valid)
        t_match = time.monotonic()
        edges_per_stream = []
        for i, s in enumerate(due):
            if not keep[i]:
                edges_per_stream.append({})
                continue
            n, first = enc.count[i], enc.first[i]
            edges_per_stream.append({label: s.detectors[label](scores.column_scores[i, :n, p], first)
                                     for p, label in enumerate(scores.labels) if label in s.detectors})
        t_detect = time.monotonic()
        new_events = 0
        for i, (s, w) in enumerate(zip(due, windows)):
            new_events += self._publish(s, edges_per_stream[i])
            level_db = s.take_level_db()
            if self.embeddings is not None and keep[i]:
                self.embeddings.add(s.name, enc.glob[i], w.first_column, w.n_columns,
                                    s.context.wall_time(w.first_column * PATCH_FRAMES),
                                    s.context.wall_time((w.first_column + w.n_columns) * PATCH_FRAMES))
            if self.publisher is not None and self.cfg.outputs.scores_topic and keep[i]:
                lo, hi = enc.new_from[i], enc.count[i]
                column = enc.first[i] + lo
                self.publisher.publish_scores(
                    s.name, model=self.model_id, labels=scores.labels, columns=scores.column_scores[i, lo:hi],
                    first_column=column, start=s.context.wall_time(column * PATCH_FRAMES),
                    global_scores=scores.global_scores[i], level_db=level_db)
        t_pub = time.monotonic()
        now_wall = time.time()
        e2e = [now_wall - s.newest_wall for s in due if s.newest_wall is not None]
        misses = sum(1 for s, q in zip(due, queue_wait) if q + (t_pub - t_start) > s.context.hop_frames / 100)
        self.counters.hops += len(due)
        self.counters.deadline_misses += misses
        self.counters.audio_seconds += sum(s.context.hop_frames / 100 for s in due)
        self.counters.busy_seconds += t_pub - t_start
        stats = HopStats(len(due), queue_wait, t_enc - t_start, t_match - t_enc, t_detect - t_match,
                         t_pub - t_detect, e2e, misses, new_events, [s.name for s in due],
                         [s.arrival_lag for s in due if s.arrival_lag is not None])
        if self.on_hop is not None:
            self.on_hop(stats)
        return stats

    def _encode_windows(self, due: list[StreamState], windows: list[Window]) -> Encoded:
        """Window mode: every due window whole, in one padded call."""
        lengths = np.array([w.mel.shape[1] for w in windows], np.int64)
        mel = np.zeros((len(windows), windows[0].mel.shape[0], max(int(lengths.max()), PATCH_FRAMES)), np.float32)
        for i, w in enumerate(windows):
            mel[i, :, : w.mel.shape[1]] = w.mel
        columns, valid, glob = self.backend.encode(mel, np.maximum(lengths, PATCH_FRAMES))
        count = [w.n_columns for w in windows]  # a window shorter than a column has none: not scored
        hop_cols = [max(1, min(n, s.context.hop_frames // PATCH_FRAMES)) for s, n in zip(due, count)]
        return Encoded(columns, valid, glob, [w.first_column for w in windows], count,
                       [n - h for n, h in zip(count, hop_cols)])

    def _encode_incremental(self, due: list[StreamState], windows: list[Window]) -> Encoded:
        """Incremental mode: each window's columns after its stream's cache, in one padded call.
        A window that does not continue the cache (the context was reset, or it is the first)
        starts the cache afresh."""
        new, caches = [], []
        for s, w in zip(due, windows):
            c = s.cache
            end = w.first_column + w.n_columns
            if not (w.first_column <= c.end_column <= end):
                c.clear(w.first_column)
            new.append(end - c.end_column)
            caches.append(c)
        first = [c.end_column for c in caches]
        n_max = max(new)
        if n_max == 0:  # no window has a new whole column yet
            E = int(self.manifest.get("embed_dim", 1))
            return Encoded(np.zeros((len(due), 1, E), np.float32), np.zeros((len(due), 1), bool),
                           np.zeros((len(due), E), np.float32), first, new, [0] * len(due))
        rows = [i for i, n in enumerate(new) if n]
        mel = np.zeros((len(rows), windows[0].mel.shape[0], n_max * PATCH_FRAMES), np.float32)
        for r, i in enumerate(rows):
            mel[r, :, : new[i] * PATCH_FRAMES] = windows[i].mel[:, (windows[i].n_columns - new[i]) * PATCH_FRAMES :]
        columns, glob = encode_new_columns(self.backend, mel, np.array([new[i] for i in rows]), [caches[i] for i in rows])
        if len(rows) < len(due):  # rows without new columns get zeros (not scored: count 0)
            full_c = np.zeros((len(due), *columns.shape[1:]), np.float32)
            full_g = np.zeros((len(due), glob.shape[1]), np.float32)
            full_c[rows], full_g[rows] = columns, glob
            columns, glob = full_c, full_g
        valid = np.arange(n_max)[None] < np.array(new)[:, None]
        return Encoded(columns, valid, glob, first, new, [0] * len(due))

    def _publish(self, state: StreamState, edges_by_label: dict[str, list[EventEdge]]) -> int:
        """Turn detector edges into events; log, publish, count. Returns the number of starts."""
        events: list[Event] = []
        ctx = state.context
        for label, edges in edges_by_label.items():
            prompt = " | ".join(self.cfg.prompt(label).text) if label in self.matcher.labels else label
            for e in edges:
                frame = e.column * PATCH_FRAMES
                wall = ctx.wall_time(frame)
                stream_t = e.column * SECONDS_PER_COLUMN
                if e.kind == "start":
                    event_id = new_event_id()
                    state.open_events[label] = (event_id, e.column, e.score)
                    clip = str(self.clips.begin(state.name, label, event_id, e.column * COLUMN_SAMPLES)) if self.clips else None
                    events.append(Event(state.name, label, prompt, "start", event_id, wall if wall is not None else stream_t,
                                        None, e.score, self.model_id, None, clip, stream_t, None))
                    self.counters.events[label] += 1
                else:
                    opened = state.open_events.pop(label, None)
                    if opened is None:
                        continue
                    event_id, onset_col, _ = opened
                    onset_wall = ctx.wall_time(onset_col * PATCH_FRAMES)
                    clip = self.clips.end(event_id, e.column * COLUMN_SAMPLES) if self.clips else None
                    events.append(Event(state.name, label, prompt, "end", event_id,
                                        onset_wall if onset_wall is not None else onset_col * SECONDS_PER_COLUMN,
                                        wall if wall is not None else stream_t, e.score, self.model_id, e.reason,
                                        str(clip) if clip else None, onset_col * SECONDS_PER_COLUMN, stream_t))
        if events:
            if self.publisher is not None:
                payloads = self.publisher.publish_events(events)
            else:
                payloads = [ev.payload(0) for ev in events]
            self._emit_payloads(payloads)
        return sum(1 for ev in events if ev.kind == "start")

    def _emit_payloads(self, payloads: list[dict]) -> None:
        if self.on_events is not None and payloads:
            self.on_events(payloads)

    def _send_status(self, stream: str, status: str, reason: str | None) -> None:
        if self.publisher is not None:
            self.publisher.publish_status(stream, status, reason)

    def check_stale(self) -> None:
        """Streams silent for stale_after_s: close their events (reason stale) and say so once."""
        now = time.monotonic()
        for state in self.streams.values():
            queue = self.queues.get(state.name)
            if queue is not None and queue.frames:
                continue  # its frames are here, waiting their turn: the worker is alive
            if not state.stale and state.last_seen and now - state.last_seen > self.stale_after_s:
                state.stale = True
                self.counters.stale_transitions += 1
                log.warning("stream %s: stale (no audio for %.1f s)", state.name, now - state.last_seen)
                self._score_tail(state)  # what came after its last hop (a file worker's end, say) is scored too
                self._publish(state, {label: d.flush("stale") for label, d in state.detectors.items()})
                self._send_status(state.name, "stale", "no_audio")

    def finish_stream(self, name: str, reason: str = "stream_end") -> None:
        """Flush a stream's last partial hop and close its events (end of a file)."""
        state = self.streams.get(name)
        if state is None:
            return
        while self.step() is not None:
            pass
        self._score_tail(state)
        self._publish(state, {label: d.flush(reason) for label, d in state.detectors.items()})
        if self.clips is not None:
            self.clips.flush(name)

    def _score_tail(self, state: StreamState) -> None:
        """Score the audio after a stream's last hop, its partial column padded with silence
        (StreamContext.tail_window): a file's last 160 ms, or all of a clip shorter than one column.
        Then the end-of-stream summary (`_summarise`), where someone reads it."""
        w = state.context.tail_window()
        if not w.n_columns:
            return
        n, first = 0, w.first_column + w.n_columns
        columns = np.zeros((1, 0, int(self.manifest.get("embed_dim", 1))), np.float32)
        valid = np.zeros((1, 0), bool)
        glob = None
        if self.incremental:
            c = state.cache
            end = w.first_column + w.n_columns
            if w.first_column <= c.end_column < end:  # else nothing after the last hop's columns (or a cache that does not continue)
                n, first = end - c.end_column, c.end_column
                # the padded tail is scored, never cached: the stream clock does not move for it
                columns, glob = encode_new_columns(self.backend, w.mel[None, :, (w.n_columns - n) * PATCH_FRAMES :].copy(),
                                                   np.array([n]), [c], commit=False)
                valid = np.ones((1, n), bool)
        else:
            columns, valid, glob = self.backend.encode(w.mel[None].copy(), np.array([w.mel.shape[1]], np.int64))
            n, first = w.n_columns, w.first_column
        if n:
            scores = self.matcher(glob, columns, valid)
            self._publish(state, {label: state.detectors[label](scores.column_scores[0, :n, p], first)
                                  for p, label in enumerate(scores.labels) if label in state.detectors})
        self._summarise(state, w, columns[:, :n], glob if not self.incremental else None, first)

    def _summarise(self, state: StreamState, w: Window, tail_columns: np.ndarray, whole_glob: np.ndarray | None,
                   first: int) -> None:
        """The end-of-stream summary: the last window's global embedding with every column seeing
        all of the window (one full-window pass on the incremental encoder, whose hops' globals
        pool columns that each saw only up to their own hop), to the scores topic (`final`) and
        the embedding store. Skipped when neither would read it, so tagging files pays nothing."""
        wants_scores = (self.publisher is not None and bool(self.cfg.outputs.scores_topic)
                        and self.publisher.has_subscribers(scores_topic(state.name)))
        if not (wants_scores or self.embeddings is not None):
            return
        if whole_glob is None:
            _, _, whole_glob = self.backend.encode(w.mel[None].copy(), np.array([w.mel.shape[1]], np.int64))
        self.counters.summaries += 1
        if self.embeddings is not None:
            self.embeddings.add(state.name, whole_glob[0], w.first_column, w.n_columns,
                                state.context.wall_time(w.first_column * PATCH_FRAMES),
                                state.context.wall_time((w.first_column + w.n_columns) * PATCH_FRAMES))
        if wants_scores:
            scores = self.matcher(whole_glob, tail_columns, np.ones(tail_columns.shape[:2], bool))
            self.publisher.publish_scores(
                state.name, model=self.model_id, labels=scores.labels, columns=scores.column_scores[0],
                first_column=first, start=state.context.wall_time(first * PATCH_FRAMES),
                global_scores=scores.global_scores[0], level_db=state.take_level_db(), final=True)

    # -- loop -----------------------------------------------------------------------------------
    def poll_once(self, timeout_ms: int = 20) -> int:
        """One loop turn: read up to RECV_BUDGET messages into the stream queues (waiting up to
        timeout_ms for the first when nothing is queued), feed them round-robin for SERVE_BUDGET_S,
        serve the due hops, check for stale streams. Returns the messages read."""
        n = 0
        wait = 0 if self.queued_frames else min(timeout_ms, self._batch_wait_left_ms())
        if self.pull is not None and self.pull.poll(wait):
            while n < RECV_BUDGET:
                try:
                    buf = self.pull.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                n += 1
                if not self.enqueue(buf):
                    break  # a lossless stream's queue is full: its worker waits
        self.serve_queues()
        while self._batch_ready() and self.step() is not None:
            pass
        self.check_stale()
        self._retry_event_log()
        if self.embeddings is not None:
            self.embeddings.tick()
        return n

    def _oldest_due(self) -> tuple[int, float | None, bool]:
        """(due hops, when the oldest fell due, whether a lossless stream's hop is due)."""
        due = [s for s in self.streams.values() if s.context.hop_due]
        oldest = min((s.due_since for s in due if s.due_since is not None), default=None)
        return len(due), oldest, any(s.name in self.lossless for s in due)

    def _batch_ready(self) -> bool:
        """Serve the due hops now, or let them wait (context.batch_wait_s) for other streams'
        hops to join the same encoder call. A single stream, a full batch, a lossless stream (its
        worker waits for the hop) or a hop that has waited long enough is served at once."""
        wait = self.cfg.context.batch_wait_s
        if not wait:  # the default: no scan of every stream on every loop turn (step() finds the due hops)
            return True
        n, oldest, lossless = self._oldest_due()
        if n == 0:
            return False
        active = sum(1 for s in self.streams.values() if not s.stale)
        return (active <= 1 or n >= self.max_batch or lossless or oldest is None
                or time.monotonic() - oldest >= wait)

    def _batch_wait_left_ms(self) -> int:
        """Milliseconds until the oldest waiting hop must be served (the socket poll's timeout)."""
        if not self.cfg.context.batch_wait_s:
            return 1 << 30
        n, oldest, _ = self._oldest_due()
        if n == 0 or oldest is None:
            return 1 << 30
        return max(0, int(1e3 * (oldest + self.cfg.context.batch_wait_s - time.monotonic())) + 1)

    def _retry_event_log(self) -> None:
        """Edges held while the event log failed are written once it works again, event or not."""
        event_log = self.publisher.event_log if self.publisher is not None else None
        now = time.monotonic()
        if event_log is not None and event_log.stats.backlog and now >= self._next_log_retry:
            self._next_log_retry = now + LOG_RETRY_S
            event_log.write([])

    def run(self, should_stop: Callable[[], bool], on_idle: Callable[[], None] | None = None) -> None:
        while not should_stop():
            self.poll_once()
            if on_idle is not None:
                on_idle()

    def close(self) -> None:
        for name in list(self.streams):
            self._publish(self.streams[name], {label: d.flush("engine_stop") for label, d in self.streams[name].detectors.items()})
        if self.clips is not None:
            self.clips.flush()
        if self.embeddings is not None:
            self.embeddings.close()
        if self.publisher is not None:
            if self.publisher.event_log is not None:
                self.publisher.event_log.close()
            self.publisher.close()
        if self.pull is not None:
            self.pull.close(0)
        if self.authenticator is not None:
            self.authenticator.stop()
        if self._key_dir is not None:
            shutil.rmtree(self._key_dir, ignore_errors=True)
