"""synth: generated audio for demos and tests: a tone or noise bed plus scheduled sound events.

Events are `TIME:KIND[:DURATION]` (seconds from the stream start), from --event (repeatable)
or a --schedule file with one event a line (`4.0 beep`, `6.5:burst:1.0`; `#` starts a comment).
Kinds: beep (1 kHz tone), chirp (300 Hz -> 3 kHz sweep), click (3 kHz ping, 20 ms),
burst (white noise), silence (mutes the bed). Each event is logged as it is sent, as ground truth.

Deterministic: the same flags and --seed give the same samples (noise is drawn chunk by chunk from
numpy's PCG64 seeded with --seed, so --frame-ms is part of "the same flags").
"""

from __future__ import annotations

import argparse
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.capture.pusher import Pacer, SourceError, pusher_from_args
from streamer.wire import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_CHANNELS, MIN_SAMPLE_RATE

log = logging.getLogger("streamer.capture.synth")

EVENT_DURATIONS = {"beep": 0.25, "chirp": 0.5, "click": 0.02, "burst": 0.3, "silence": 1.0}  # default s
MAX_EVENT_S = 60.0
RAMP_S = 0.005  # 5 ms raised-cosine fade in/out: no clicks at event edges (except "click")
PINK_ROWS = 16  # Voss-McCartney rows: 1/f from rate / 2**16 (0.24 Hz at 16 kHz) up to Nyquist


@dataclass(frozen=True)
class Event:
    onset_s: float
    kind: str
    duration_s: float


def parse_event(text: str) -> Event:
    """'4.0:beep' or '4.0 beep 0.3' -> Event. Raises ValueError with one line."""
    parts = [p for p in re.split(r"[:\s]+", text.strip()) if p]
    if len(parts) not in (2, 3) or parts[1] not in EVENT_DURATIONS:
        raise ValueError(
            f"bad event {text!r}: expected TIME:KIND[:DURATION], KIND one of {sorted(EVENT_DURATIONS)}"
        )
    try:
        onset = float(parts[0])
        duration = float(parts[2]) if len(parts) == 3 else EVENT_DURATIONS[parts[1]]
    except ValueError:
        raise ValueError(f"bad event {text!r}: TIME and DURATION must be numbers of seconds") from None
    if not (0 <= onset < float("inf")) or not 0 < duration <= MAX_EVENT_S:
        raise ValueError(f"bad event {text!r}: need TIME >= 0 and 0 < DURATION <= {MAX_EVENT_S:g} s")
    return Event(onset, parts[1], duration)


def read_schedule(path: Path) -> list[Event]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise SourceError(f"cannot read schedule {path}: {e.strerror}") from None
    events = []
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                events.append(parse_event(line))
            except ValueError as e:
                raise SourceError(f"{path}:{number}: {e}") from None
    return events


def _ramp(x: np.ndarray, rate: int) -> np.ndarray:
    n = min(int(RAMP_S * rate), len(x) // 2)
    if n > 0:
        fade = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
        x[:n] *= fade
        x[len(x) - n :] *= fade[::-1]
    return x


def render_event(kind: str, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float64 waveform of peak about 1 for one event (silence: zeros, a mask of the bed)."""
    t = np.arange(n) / rate
    if kind == "beep":
        return _ramp(np.sin(2 * np.pi * 1000.0 * t), rate)
    if kind == "chirp":  # exponential sweep f0 -> f1 over the event: phase = 2 pi f0 T / ln(k) (k^(t/T) - 1)
        f0, f1, dur = 300.0, min(3000.0, 0.45 * rate), n / rate
        k = f1 / f0
        return _ramp(np.sin(2 * np.pi * f0 * dur / np.log(k) * (k ** (t / dur) - 1)), rate)
    if kind == "click":
        return np.sin(2 * np.pi * min(3000.0, 0.45 * rate) * t) * np.exp(-t / 0.003)
    if kind == "burst":
        return _ramp(np.clip(rng.standard_normal(n) / 3, -1, 1), rate)
    return np.zeros(n)  # silence


class PinkNoise:
    """Voss-McCartney pink noise, chunk by chunk: the sum of PINK_ROWS held random values, row k
    redrawn every 2**k samples (row 0: every sample, the white term). Unit variance."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.rows = rng.standard_normal(PINK_ROWS)
        self.index = 0  # stream index of the next sample

    def __call__(self, n: int) -> np.ndarray:
        out = np.zeros(n)
        positions = np.arange(n)
        for k in range(PINK_ROWS):
            step = 1 << k
            redraw = np.arange((-self.index) % step, n, step)  # chunk positions where row k changes
            values = np.concatenate(([self.rows[k]], self.rng.standard_normal(len(redraw))))
            out += values[np.searchsorted(redraw, positions, side="right")]  # index 0: value carried in
            self.rows[k] = values[-1]
        self.index += n
        return out / np.sqrt(PINK_ROWS)


class Synth:
    """Renders the stream sample by sample index, in order: render(start, n) -> (n,) float32."""

    def __init__(
        self,
        rate: int,
        signal: str,
        freq: float,
        level_db: float,
        events: list[Event],
        event_level_db: float,
        seed: int,
    ):
        self.rate = rate
        self.signal = signal
        self.freq = freq
        self.level = 10 ** (level_db / 20)  # tone: peak; noise: RMS (dBFS)
        self.event_level = 10 ** (event_level_db / 20)
        self.seed = seed
        self.events = sorted(events, key=lambda e: e.onset_s)
        self.spans = [(round(e.onset_s * rate), max(1, round(e.duration_s * rate))) for e in self.events]
        self.noise_rng = np.random.default_rng([seed, 0])
        self.pink = PinkNoise(np.random.default_rng([seed, 1]))
        self._waves: dict[int, np.ndarray] = {}  # event index -> waveform, while it plays

    def bed(self, start: int, n: int) -> np.ndarray:
        if self.signal == "tone":
            t = (start + np.arange(n)) / self.rate  # from the stream index: phase-continuous across chunks
            return self.level * np.sin(2 * np.pi * self.freq * t)
        if self.signal == "white":
            return self.level * self.noise_rng.standard_normal(n)
        if self.signal == "pink":
            return self.level * self.pink(n)
        return np.zeros(n)

    def render(self, start: int, n: int) -> np.ndarray:
        out = self.bed(start, n)
        end = start + n
        for i, (onset, length) in enumerate(self.spans):
            if onset >= end:
                break
            if onset + length <= start:
                self._waves.pop(i, None)
                continue
            kind = self.events[i].kind
            if i not in self._waves:
                rng = np.random.default_rng([self.seed, 2, i])  # per event: independent of chunking
                self._waves[i] = render_event(kind, length, self.rate, rng)
            a, b = max(start, onset), min(end, onset + length)
            segment = self._waves[i][a - onset : b - onset]
            if kind == "silence":
                out[a - start : b - start] = 0.0
            else:
                out[a - start : b - start] += self.event_level * segment
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def onsets_in(self, start: int, n: int) -> list[Event]:
        return [
            e for e, (onset, _) in zip(self.events, self.spans, strict=True) if start <= onset < start + n
        ]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=int, default=16000, help="sample rate in Hz (default %(default)s)")
    p.add_argument("--channels", type=int, default=1, help="channels, all the same signal (default 1)")
    p.add_argument("--signal", choices=["tone", "white", "pink", "silence"], default="tone", help="the bed")
    p.add_argument("--freq", type=float, default=440.0, help="tone frequency in Hz (default %(default)s)")
    p.add_argument("--level-db", type=float, default=-20.0, help="bed level, dBFS (tone: peak, noise: RMS)")
    p.add_argument("--event", action="append", default=[], metavar="T:KIND[:DUR]", help="a scheduled event")
    p.add_argument("--schedule", type=Path, help="file of events, one TIME KIND [DURATION] a line")
    p.add_argument("--event-level-db", type=float, default=-6.0, help="event peak level, dBFS")
    p.add_argument(
        "--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: endless)"
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (default %(default)s)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime", dest="realtime", action="store_true", default=True, help="real time (default)"
    )
    pace.add_argument(
        "--fast", dest="realtime", action="store_false", help="as fast as the engine takes frames"
    )


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    if not MIN_SAMPLE_RATE <= args.rate <= MAX_SAMPLE_RATE:
        raise SourceError(f"--rate must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, got {args.rate}")
    if not MIN_CHANNELS <= args.channels <= MAX_CHANNELS:
        raise SourceError(f"--channels must be {MIN_CHANNELS}-{MAX_CHANNELS}, got {args.channels}")
    if args.duration is not None and not args.duration > 0:
        raise SourceError(f"--duration must be > 0 seconds, got {args.duration}")
    try:
        events = [parse_event(text) for text in args.event]
    except ValueError as e:
        raise SourceError(str(e)) from None
    if args.schedule is not None:
        events += read_schedule(args.schedule)
    synth = Synth(args.rate, args.signal, args.freq, args.level_db, events, args.event_level_db, args.seed)
    total = None if args.duration is None else round(args.duration * args.rate)  # samples, None: endless
    log.info(
        "synth: %s at %d Hz x %d ch, %d event(s), %s -> stream %s",
        args.signal,
        args.rate,
        args.channels,
        len(events),
        "endless" if total is None else f"{args.duration:g} s",
        args.stream,
    )
    with pusher_from_args(args, args.rate, args.channels, stop, block=not args.realtime) as pusher:
        pacer = Pacer(args.rate, stop)
        start = 0
        while not stop.is_set():
            n = pusher.frame_samples if total is None else min(pusher.frame_samples, total - start)
            if n <= 0:
                break
            mono = synth.render(start, n)
            chunk = np.repeat(mono[:, None], args.channels, axis=1)  # (n, channels)
            if args.realtime and not pacer.wait_until(start + n):
                break
            for e in synth.onsets_in(start, n):
                log.info("event %s at %.3f s for %.3f s", e.kind, e.onset_s, e.duration_s)
            pusher.push(chunk, mono_ns=pacer.time_of(start) if args.realtime else None)
            start += n
        if not stop.is_set():
            pusher.finish()
    return 0
