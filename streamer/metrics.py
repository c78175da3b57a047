"""Prometheus metrics of the engine and the capture workers: the only module importing prometheus_client.

    server = serve_metrics(engine, "127.0.0.1", 9464)   # GET http://127.0.0.1:9464/metrics
    server.port, server.close()                          # port 0: any free port
    metrics = EngineMetrics(engine)                      # private registry, no server (tests):
    metrics.registry.get_sample_value("slap_hops_total")

Two paths fill one private `CollectorRegistry` per engine, and the hot loop never calls into
prometheus_client:
- histograms, observed from the engine's `on_hop(HopStats)` callback: `attach()` (called by
  `serve_metrics`) sets `engine.on_hop` to a function that calls the previous callback, then observes;
- counters and gauges, read at scrape time from the engine's plain stats objects (`EngineCounters`,
  each stream's `ContextStats`, `PublishStats`, `EventLogStats`, `ClipStats`) by a custom collector.

Every metric is defined once, in `Metrics`, between the metrics-definitions markers. Names have
the prefix `slap_` and base units (seconds, bytes); counters end in `_total`. Label values are
bounded by the config: `stream` takes the sources' names (never a URL), `label` the prompts' labels
(pre-initialised to 0, so a rate exists before the first event), `reason` and `kind` fixed sets.

Capture workers export their own counters (`slap_worker_*`) with `--metrics-port`
(`serve_worker_metrics`); the engine does not aggregate them (no multi-process mode).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from streamer.wire import WIRE_ERROR_REASONS

if TYPE_CHECKING:
    from streamer.capture.pusher import Pusher
    from streamer.engine import Engine, HopStats

log = logging.getLogger("streamer.metrics")

# Latency of a window (seconds): 5 ms .. 10 s. 0.65 = the default hop (0.5 s) + 150 ms, the
# end-to-end deadline of the benchmarks; 10 s = a context's worth of backlog.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.65, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
# One stage of one engine step (seconds): 0.5 ms (match, detect) .. 5 s (a 32-window encode on a slow CPU).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)  # windows per encoder call; engine.MAX_BATCH = 32
# Reasons known before they happen (pre-initialised to 0); streamer.engine's own lists win where it has them.
DROP_REASONS = ("late", "stale_epoch")  # EngineCounters.frames_dropped
REJECT_REASONS = (*WIRE_ERROR_REASONS, "unknown_stream")  # EngineCounters.frames_rejected
SOURCE_FAILURE_REASONS = ("source_error", "failed", "killed")  # EngineCounters.source_failures
PUBLISH_KINDS = ("events", "scores")
DEFAULT_HOST = "127.0.0.1"  # loopback: metrics name streams and prompts; expose them on purpose
_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class Scraped:
    """A counter, gauge or info metric whose value is read from a stats object at scrape time."""

    kind: str  # "counter" | "gauge" | "info"
    name: str  # as exposed: counters end in _total, info metrics in _info
    doc: str
    labels: tuple[str, ...] = ()

    def family(self, values: float | dict[tuple[str, ...], float] | dict[str, str]) -> Metric:
        """values: a number (no labels), {label values: number}, or for info {label: value}."""
        if self.kind == "info":
            return InfoMetricFamily(self.name.removesuffix("_info"), self.doc, value=values)
        cls = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        if not self.labels:
            return cls(self.name, self.doc, value=float(values))
        fam = cls(self.name, self.doc, labels=self.labels)
        for key, v in sorted(values.items()):
            fam.add_metric(list(key), float(v))
        return fam


def _histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
    return Histogram(name, doc, buckets=buckets, registry=None)  # yielded by a collector, never global


class Metrics:
    """Every metric of this project, defined once. Nothing is registered here: `EngineMetrics`
    and `WorkerMetrics` are the collectors that yield the ones of their process."""

    def __init__(self) -> None:
        # begin-metrics-definitions
        # -- engine, per window or per step: observed from on_hop(HopStats)
        self.capture_to_engine = _histogram(
            "slap_capture_to_engine_seconds",
            "Capture of a stream's newest sample to its frame entering the stream's context "
            "(socket transit and per-stream queueing)", LATENCY_BUCKETS)
        self.queue_wait = _histogram(
            "slap_queue_wait_seconds", "A hop falling due (its last frame read) to its encoder call starting",
            LATENCY_BUCKETS)
        self.encode = _histogram("slap_encode_seconds", "One batched encoder call", STAGE_BUCKETS)
        self.match = _histogram("slap_match_seconds", "Prompt matching of one step's batch", STAGE_BUCKETS)
        self.detect = _histogram("slap_detect_seconds", "Hysteresis detectors of one step's batch", STAGE_BUCKETS)
        self.publish = _histogram(
            "slap_publish_seconds", "Event log write and ZeroMQ publish of one step's batch", STAGE_BUCKETS)
        self.end_to_end = _histogram(
            "slap_end_to_end_seconds", "Capture (worker wall clock) of a window's newest sample to its events "
            "and scores published", LATENCY_BUCKETS)
        self.batch_size = _histogram("slap_batch_size", "Windows per encoder call", BATCH_BUCKETS)
        # -- engine, read at scrape time from EngineCounters
        self.hops = Scraped("counter", "slap_hops_total", "Windows encoded (one per stream per hop)")
        self.hops_skipped = Scraped(
            "counter", "slap_hops_skipped_total", "Hops that fell due while an earlier one was still waiting")
        self.deadline_misses = Scraped(
            "counter", "slap_hop_deadline_misses_total", "Windows whose queue wait + step exceeded the hop")
        self.audio = Scraped("counter", "slap_audio_seconds_total", "Stream-seconds of new audio analysed")
        self.busy = Scraped("counter", "slap_busy_seconds_total", "Wall seconds spent serving hops")
        self.real_time_factor = Scraped(
            "gauge", "slap_real_time_factor", "Engine seconds per stream-second of audio since the start (busy / "
            "audio); the engine keeps up while active streams x this < 1. Windowed: rate(slap_busy_seconds_total) "
            "/ rate(slap_audio_seconds_total); the engine's load: rate(slap_busy_seconds_total)")
        self.frames_received = Scraped(
            "counter", "slap_frames_received_total", "Frames accepted into a stream's context", ("stream",))
        self.frames_dropped = Scraped(
            "counter", "slap_frames_dropped_total", "Valid frames dropped (late or duplicate, replaced epoch)",
            ("reason",))
        self.frames_rejected = Scraped(
            "counter", "slap_frames_rejected_total", "Frames refused (undecodable, bad samples, unknown stream)",
            ("reason",))
        self.events = Scraped("counter", "slap_events_total", "Events started", ("label",))
        self.config_reloads = Scraped("counter", "slap_config_reloads_total", "Config hot reloads applied")
        self.config_reload_failures = Scraped(
            "counter", "slap_config_reload_failures_total", "Config reloads refused (invalid) or failed")
        self.stale_transitions = Scraped(
            "counter", "slap_stream_stale_transitions_total", "Streams going stale (no audio for 2 s)")
        self.summaries = Scraped(
            "counter", "slap_stream_summaries_total",
            "End-of-stream summaries (a stream ended or went stale while its scores or embeddings were read)")
        self.auth_refused = Scraped(
            "counter", "slap_auth_refused_total", "Worker connections refused by CURVE authentication")
        self.source_failures = Scraped(
            "counter", "slap_source_failures_total", "Capture workers that exited with an error: source_error "
            "(its source cannot be opened: a missing, empty or unreadable file, ...), failed (it failed while "
            "running: a file whose decoding stops part way, ...), killed (a signal)", ("stream", "reason"))
        self.prompts = Scraped("gauge", "slap_prompts", "Prompts of the running config")
        self.model = Scraped("info", "slap_model_info", "The encoder: model name and hash, backend, device, threads")
        # -- engine, per stream (StreamState, ContextStats)
        self.active_streams = Scraped("gauge", "slap_active_streams", "Streams receiving audio (not stale)")
        self.stream_up = Scraped(
            "gauge", "slap_stream_up", "1 while the stream receives audio, 0 stale or not started", ("stream",))
        self.stream_frame_age = Scraped(
            "gauge", "slap_stream_last_frame_age_seconds", "Seconds since the stream's last frame", ("stream",))
        self.stream_gaps = Scraped(
            "counter", "slap_stream_gaps_total", "Sequence gaps (frames lost before the engine)", ("stream",))
        self.stream_missing_frames = Scraped(
            "counter", "slap_stream_missing_frames_total", "Frames lost in those gaps", ("stream",))
        self.stream_resets = Scraped(
            "counter", "slap_stream_resets_total", "Context resets (worker restart, long gap)", ("stream",))
        self.queued_frames = Scraped(
            "gauge", "slap_queued_frames", "Frames read from the socket, waiting in the stream's queue", ("stream",))
        # -- engine, outputs (PublishStats, EventLogStats, ClipStats)
        self.published = Scraped("counter", "slap_published_total", "Messages sent on ZeroMQ", ("kind",))
        self.publish_dropped = Scraped(
            "counter", "slap_publish_dropped_total", "Messages dropped at a subscriber's high-water mark",
            ("kind",))
        self.event_log_writes = Scraped("counter", "slap_event_log_writes_total", "Event edges committed")
        self.event_log_errors = Scraped(
            "counter", "slap_event_log_write_errors_total", "Failed event-log writes (each may hold many edges)")
        self.event_log_backlog = Scraped(
            "gauge", "slap_event_log_backlog", "Event edges waiting in memory for the log")
        self.event_log_backlog_dropped = Scraped(
            "counter", "slap_event_log_backlog_dropped_total", "Event edges dropped from a full backlog, never logged")
        self.clips_written = Scraped("counter", "slap_clips_written_total", "Event clips written")
        self.clip_errors = Scraped("counter", "slap_clip_errors_total", "Event clips not written (storage)")
        self.embedding_hops = Scraped(
            "counter", "slap_embedding_store_hops_total", "Hop embeddings committed to the search store")
        self.embedding_errors = Scraped(
            "counter", "slap_embedding_store_write_errors_total", "Failed search-store commits (their rows are dropped)")
        # -- capture workers (one process per stream; PusherStats)
        self.worker_frames_sent = Scraped(
            "counter", "slap_worker_frames_sent_total", "Frames handed to ZeroMQ", ("stream",))
        self.worker_frames_dropped = Scraped(
            "counter", "slap_worker_frames_dropped_total", "Frames dropped: no engine, or its queue full", ("stream",))
        self.worker_bytes_sent = Scraped("counter", "slap_worker_sent_bytes_total", "Wire bytes sent", ("stream",))
        self.worker_audio = Scraped(
            "counter", "slap_worker_audio_seconds_total", "Seconds of audio sent", ("stream",))
        self.worker_reconnects = Scraped(
            "counter", "slap_worker_reconnects_total", "Source reconnects (net)", ("stream",))
        self.worker_device_errors = Scraped(
            "counter", "slap_worker_device_errors_total", "Capture device errors and overflows (mic)", ("stream",))
        # end-metrics-definitions

    @property
    def histograms(self) -> tuple[Histogram, ...]:
        return (self.capture_to_engine, self.queue_wait, self.encode, self.match, self.detect, self.publish,
                self.end_to_end, self.batch_size)


def _with_known(counts: dict[str, int | float], known: Iterable[str]) -> dict[tuple[str], float]:
    """Counts by one label, with the known values present (0) before they first happen."""
    out = {(k,): 0.0 for k in known}
    out.update({(k,): float(v) for k, v in counts.items()})
    return out


def _info_labels(model_id: str, info: dict) -> dict[str, str]:
    labels = {"model": model_id}
    for key, value in info.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        labels[_LABEL_NAME.sub("_", str(key))] = str(value)
    return labels


class EngineMetrics:
    """The engine's metrics in a private registry: a collector of the stats objects plus the on_hop
    histograms. engine: a streamer.engine.Engine (read at scrape time, from the server's thread)."""

    def __init__(self, engine: Engine, registry: CollectorRegistry | None = None):
        self.engine = engine
        self.m = Metrics()
        self.registry = registry if registry is not None else CollectorRegistry()
        try:
            info = dict(engine.backend.info())
        except Exception as e:  # info is descriptive only: never stop the engine for it
            info = {"backend": getattr(engine.backend, "name", "unknown"), "info_error": type(e).__name__}
        self._info = _info_labels(engine.model_id, info)
        from streamer import engine as engine_module  # loaded already (an Engine exists): its reason lists

        self.drop_reasons = getattr(engine_module, "DROP_REASONS", DROP_REASONS)
        self.reject_reasons = getattr(engine_module, "REJECT_REASONS", REJECT_REASONS)
        self.failure_reasons = getattr(engine_module, "SOURCE_FAILURE_REASONS", SOURCE_FAILURE_REASONS)
        self._previous: Callable[[HopStats], None] | None = None
        self._attached = False
        self.registry.register(self)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total

    # -- on_hop -------------------------------------------------------------------------------
    def attach(self) -> None:
        """Chain onto engine.on_hop: the previous callback runs first, then the histograms observe."""
        if self._attached:
            return
        self._previous = self.engine.on_hop
        self.engine.on_hop = self._on_hop
        self._attached = True

    def detach(self) -> None:
        """Give engine.on_hop back (if nobody chained onto ours meanwhile)."""
        if self._attached and self.engine.on_hop == self._on_hop:
            self.engine.on_hop = self._previous
        self._attached = False

    def _on_hop(self, stats: HopStats) -> None:
        if self._previous is not None:
            self._previous(stats)
        self.observe_hop(stats)

    def observe_hop(self, stats: HopStats) -> None:
        m = self.m
        m.batch_size.observe(stats.batch_size)
        m.encode.observe(stats.encode_s)
        m.match.observe(stats.match_s)
        m.detect.observe(stats.detect_s)
        m.publish.observe(stats.publish_s)
        for q in stats.queue_wait_s:
            m.queue_wait.observe(q)
        for e in stats.end_to_end_s:
            m.end_to_end.observe(e)
        for c in stats.capture_to_engine_s:
            m.capture_to_engine.observe(max(0.0, c))

    # -- scrape -------------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        m, engine = self.m, self.engine
        for h in m.histograms:
            yield from h.collect()
        c = engine.counters
        yield m.hops.family(c.hops)
        yield m.hops_skipped.family(c.hops_skipped)
        yield m.deadline_misses.family(c.deadline_misses)
        yield m.audio.family(c.audio_seconds)
        yield m.busy.family(c.busy_seconds)
        yield m.real_time_factor.family(c.busy_seconds / c.audio_seconds if c.audio_seconds else 0.0)
        yield m.frames_dropped.family(_with_known(dict(c.frames_dropped), self.drop_reasons))
        yield m.frames_rejected.family(_with_known(dict(c.frames_rejected), self.reject_reasons))
        matcher = engine.matcher
        yield m.events.family(_with_known(dict(c.events), matcher.labels))
        yield m.prompts.family(len(matcher.labels))
        yield m.config_reloads.family(c.config_reloads)
        yield m.config_reload_failures.family(c.config_reload_failures)
        yield m.stale_transitions.family(c.stale_transitions)
        yield m.summaries.family(getattr(c, "summaries", 0))
        if hasattr(c, "auth_refused"):
            yield m.auth_refused.family(c.auth_refused)
        failures = {(stream, reason): 0.0 for stream in engine.allowed or () for reason in self.failure_reasons}
        failures.update({key: float(v) for key, v in getattr(c, "source_failures", {}).items()})
        yield m.source_failures.family(failures)
        yield m.model.family(self._info)
        yield from self._streams()
        yield from self._outputs()

    def _streams(self) -> Iterator[Metric]:
        m, engine = self.m, self.engine
        configured = engine.allowed or ()
        states = list(engine.streams.values())  # a copy: the engine thread adds streams meanwhile
        now = time.monotonic()
        up = {(name,): 0.0 for name in configured}
        age, gaps, missing, resets = {}, {}, {}, {}
        for s in states:
            key = (s.name,)
            live = bool(s.last_seen) and not s.stale
            up[key] = 1.0 if live else 0.0
            if s.last_seen:
                age[key] = now - s.last_seen
            st = s.context.stats
            gaps[key], missing[key], resets[key] = st.gaps, st.missing_chunks, st.resets
        yield m.frames_received.family(_with_known(dict(engine.counters.frames_received), configured))
        yield m.active_streams.family(sum(up.values()))
        yield m.stream_up.family(up)
        yield m.stream_frame_age.family(age)
        yield m.stream_gaps.family(gaps)
        yield m.stream_missing_frames.family(missing)
        yield m.stream_resets.family(resets)
        queues = dict(getattr(engine, "queues", {}))  # per-stream frame queues (none: frames are fed as read)
        queued = {key: 0 for key in up}
        queued.update({(name,): len(q) for name, q in queues.items()})
        yield m.queued_frames.family(queued)

    def _outputs(self) -> Iterator[Metric]:
        m, engine = self.m, self.engine
        pub = engine.publisher
        if pub is not None:
            p = pub.stats
            yield m.published.family({("events",): p.events_sent, ("scores",): p.scores_sent})
            yield m.publish_dropped.family({("events",): p.events_dropped, ("scores",): p.scores_dropped})
            if pub.event_log is not None:
                s = pub.event_log.stats
                yield m.event_log_writes.family(s.writes)
                yield m.event_log_errors.family(s.write_errors)
                yield m.event_log_backlog.family(s.backlog)
                yield m.event_log_backlog_dropped.family(s.backlog_dropped)
        if engine.clips is not None:
            yield m.clips_written.family(engine.clips.stats.written)
            yield m.clip_errors.family(engine.clips.stats.errors)
        store = getattr(engine, "embeddings", None)
        if store is not None:
            yield m.embedding_hops.family(store.stats.hops_written)
            yield m.embedding_errors.family(store.stats.write_errors)


class WorkerMetrics:
    """A capture worker's counters (its Pusher's stats) in a private registry; `watch(pusher)` is
    called by `streamer.capture.pusher.pusher_from_args` once the worker has made its pusher."""

    def __init__(self, stream: str, registry: CollectorRegistry | None = None):
        self.stream = stream
        self.m = Metrics()
        self.pushers: list[Pusher] = []
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    def watch(self, pusher: Pusher) -> None:
        self.pushers.append(pusher)

    def collect(self) -> Iterator[Metric]:
        m, key = self.m, (self.stream,)
        stats = [p.stats for p in list(self.pushers)]
        audio = sum(p.stats.samples_sent / p.sample_rate for p in list(self.pushers))
        for scraped, value in (
            (m.worker_frames_sent, sum(s.frames_sent for s in stats)),
            (m.worker_frames_dropped, sum(s.frames_dropped for s in stats)),
            (m.worker_bytes_sent, sum(s.bytes_sent for s in stats)),
            (m.worker_audio, audio),
            (m.worker_reconnects, sum(s.reconnects for s in stats)),
            (m.worker_device_errors, sum(s.device_errors for s in stats)),
        ):
            yield scraped.family({key: value})


class MetricsServer:
    """prometheus_client's HTTP server (a daemon thread) for one registry. port: the bound port."""

    def __init__(self, metrics: EngineMetrics | WorkerMetrics, host: str, port: int):
        self.metrics = metrics
        self.host = host
        self._httpd, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port: int = self._httpd.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port; an engine's on_hop is given back."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = None
        if isinstance(self.metrics, EngineMetrics):
            self.metrics.detach()


def serve_metrics(engine: Engine, host: str = DEFAULT_HOST, port: int = 9464) -> MetricsServer:
    """Expose the engine's metrics on http://host:port/metrics (port 0: any free port; see `.port`).
    Chains onto engine.on_hop. Raises OSError when the address cannot be bound."""
    metrics = EngineMetrics(engine)
    metrics.attach()
    try:
        server = MetricsServer(metrics, host, port)
    except OSError:
        metrics.detach()
        raise
    log.info("metrics on %s", server.url)
    return server


def serve_worker_metrics(stream: str, host: str = DEFAULT_HOST, port: int = 0) -> MetricsServer:
    """A capture worker's metrics on http://host:port/metrics; `.metrics.watch(pusher)` adds its pusher."""
    server = MetricsServer(WorkerMetrics(stream), host, port)
    log.info("worker metrics on %s", server.url)
    return server
