"""Wire fuzzing: malformed and hostile messages through the engine's receive path, counted by outcome.

    python main.py bench fuzz [--messages 1000000] [--seed 0] [--socket]

Five kinds of message, in chunks of CHUNK of one kind, kinds taking turns:
    random     random bytes (a fifth of them behind a valid magic and version, to reach deeper checks)
    bitflip    a valid frame of stream "mut" with 1-8 bits flipped (half of them in the header)
    truncated  a valid frame of "mut" cut short at a random length
    oversize   a header of "mut" claiming too many samples, or a message past MAX_FRAME_BYTES
    valid      valid frames of stream "ctl" (the control: all are received)
A flipped epoch is a new worker run as far as the engine can tell: "mut" restarts on it, and its
frames of the replaced epoch are then dropped as stale_epoch (which is why "ctl" is separate).
Each message goes through `Engine.handle_message` (decode, validate, resample, stream context),
or with --socket through a real PUSH -> PULL socket on loopback and `Engine.poll_once` (queues,
round robin). Every message must end up counted exactly once: rejected (by reason), dropped (by
reason) or received. A crash is any exception out of the engine, or its `internal_error` count.
The encoder is a stand-in (random embeddings): the receive path is what is fuzzed.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import zmq

from streamer.config import EngineConfig
from streamer.engine import Engine, EngineCounters
from streamer.wire import (
    MAGIC,
    MAX_FRAME_BYTES,
    MAX_FRAME_SECONDS,
    MAX_SAMPLE_RATE,
    WIRE_VERSION,
    Frame,
    SampleFormat,
)

KINDS = ("random", "bitflip", "truncated", "oversize", "valid")
CHUNK = 1000  # messages of one kind in a row
# --socket: the engine takes each chunk before the next is sent; a chunk of valid frames arrives
# as a burst of one stream, so it stays under ingest.QUEUE_FRAMES (more would be dropped as a flood)
SOCKET_CHUNK = 200
STREAMS = ("ctl", "mut")  # the engine's known streams (a flipped id is an unknown stream)
CI_MESSAGES = 20_000  # the slice tests/test_reliability.py runs


class NullBackend:
    """Stands in for the encoder: random embeddings, instantly (hops served by poll_once cost nothing)."""

    manifest = {"model_name": "fuzz", "model_hash": "0" * 16}

    def embed_text(self, texts: list[str]) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        return rng.standard_normal((len(texts), 32)).astype(np.float32)

    def encode(self, mel: np.ndarray, lengths: np.ndarray):
        """mel (B, 64, T) -> columns (B, T // 16, 32), column_valid (B, T // 16), global (B, 32)."""
        b, c = mel.shape[0], mel.shape[2] // 16
        rng = np.random.default_rng(c)
        columns = rng.standard_normal((b, c, 32)).astype(np.float32)
        return columns, np.arange(c)[None, :] < (lengths[:, None] // 16), columns.mean(axis=1)


class Generator:
    """Fuzz messages of each kind; valid frames of STREAMS with running sequence numbers."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.seq = {name: 0 for name in STREAMS}
        self.epoch = 1234
        self.t0 = time.monotonic_ns()
        self.big = b"".join((struct.pack("<4sBBHIB", MAGIC, WIRE_VERSION, 1, 1, 16000, 1), b"a",
                                  bytes(MAX_FRAME_BYTES)))  # one big buffer, reused

    def valid(self, name: str = "ctl") -> bytes:
        seq = self.seq[name]
        self.seq[name] += 1
        fmt = SampleFormat.INT16 if self.rng.random() < 0.8 else SampleFormat.FLOAT32
        rate = 16000 if self.rng.random() < 0.8 else self.rng.choice((8000, 44100, 48000))
        channels = 1 if self.rng.random() < 0.8 else 2
        n = rate // 10
        samples = (0.1 * self.np_rng.standard_normal((n, channels))).astype(np.float32)
        return Frame.from_samples(samples, stream_id=name, epoch=self.epoch, seq=seq, sample_rate=rate,
                                  capture_mono_ns=self.t0 + seq * 100_000_000, capture_wall_ns=time.time_ns(),
                                  sample_format=fmt).encode()

    def random(self) -> bytes:
        body = os.urandom(self.rng.randrange(0, 200))
        if self.rng.random() < 0.2:
            return MAGIC + bytes([WIRE_VERSION]) + body
        return body

    def bitflip(self) -> bytes:
        buf = bytearray(self.valid("mut"))
        header = 45 + buf[12]
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(header) if self.rng.random() < 0.5 else self.rng.randrange(len(buf))
            buf[i] ^= 1 << self.rng.randrange(8)
        return bytes(buf)

    def truncated(self) -> bytes:
        buf = self.valid("mut")
        return buf[: self.rng.randrange(len(buf))]

    def oversize(self) -> bytes | memoryview:
        if self.rng.random() < 0.05:  # past MAX_FRAME_BYTES (a view: no 4 MiB copy per message)
            return memoryview(self.big)[: MAX_FRAME_BYTES + 1 + self.rng.randrange(64)]
        buf = bytearray(self.valid("mut"))  # a header claiming more samples than a frame may hold
        struct.pack_into("<I", buf, 41 + buf[12], self.rng.randrange(MAX_FRAME_SECONDS * MAX_SAMPLE_RATE + 1, 2**32))
        return bytes(buf)

    def message(self, kind: str) -> bytes | memoryview:
        return getattr(self, kind)()


@dataclass
class FuzzResult:
    messages: int = 0
    crashes: int = 0  # exceptions out of the engine + its internal_error count
    seconds: float = 0.0
    by_kind: dict[str, Counter] = field(default_factory=dict)  # kind -> outcome -> count
    first_crash: str | None = None

    @property
    def outcomes(self) -> Counter:
        total = Counter()
        for c in self.by_kind.values():
            total.update(c)
        return total

    @property
    def accounted(self) -> int:
        return sum(self.outcomes.values())


def _outcomes(c: EngineCounters) -> Counter:
    out = Counter({f"rejected:{k}": v for k, v in c.frames_rejected.items()})
    out.update({f"dropped:{k}": v for k, v in c.frames_dropped.items()})
    out["received"] = sum(c.frames_received.values())
    return out


def make_engine(bind: bool, context: zmq.Context | None = None) -> Engine:
    cfg = EngineConfig.model_validate({
        "prompts": [{"label": "x", "text": "anything"}],
        "outputs": {"event_log": None, "pub_endpoint": "tcp://127.0.0.1:0", "ingest_endpoint": "tcp://127.0.0.1:0"},
        "metrics": {"enabled": False},
    })
    return Engine(cfg, NullBackend(), streams=set(STREAMS), bind=bind, context=context)


def run_fuzz(messages: int, seed: int = 0, socket: bool = False, progress=None) -> FuzzResult:
    """Fuzz `messages` messages through a fresh engine's receive path; see the module docstring."""
    gen = Generator(seed)
    result = FuzzResult(by_kind={k: Counter() for k in KINDS})
    ctx = zmq.Context() if socket else None
    engine = make_engine(bind=socket, context=ctx)
    push = None
    if socket:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.SNDHWM, 100_000)
        push.connect(engine.ingest_endpoint)
    t0 = time.perf_counter()
    sent, chunk = 0, SOCKET_CHUNK if socket else CHUNK
    try:
        while sent < messages:
            kind = KINDS[(sent // chunk) % len(KINDS)]
            n = min(chunk, messages - sent)
            before = _outcomes(engine.counters)
            for _ in range(n):
                buf = gen.message(kind)
                if push is None:
                    try:
                        engine.handle_message(buf)
                    except Exception:
                        result.crashes += 1
                        result.first_crash = result.first_crash or traceback.format_exc()
                else:
                    push.send(buf)
            if push is not None:  # the engine takes the whole chunk before the next one is sent
                deadline = time.monotonic() + 60
                while sum((_outcomes(engine.counters) - before).values()) < n and time.monotonic() < deadline:
                    try:
                        engine.poll_once(10)
                    except Exception:
                        result.crashes += 1
                        result.first_crash = result.first_crash or traceback.format_exc()
            sent += n
            result.by_kind[kind].update(_outcomes(engine.counters) - before)
            if progress is not None:
                progress(sent)
    finally:
        result.seconds = time.perf_counter() - t0
        result.messages = sent
        result.crashes += engine.counters.frames_rejected["internal_error"]
        if push is not None:
            push.close(0)
        engine.close()
        if ctx is not None:
            ctx.term()
    return result


def report(result: FuzzResult) -> str:
    outcomes = sorted(result.outcomes)
    width = max(len(o) for o in outcomes) if outcomes else 10
    lines = [f"{'outcome':<{width}} " + " ".join(f"{k:>10}" for k in KINDS) + f" {'total':>10}"]
    for o in outcomes:
        row = [result.by_kind[k][o] for k in KINDS]
        lines.append(f"{o:<{width}} " + " ".join(f"{v:>10}" for v in row) + f" {sum(row):>10}")
    lines.append(f"{'messages':<{width}} " + " ".join(f"{sum(result.by_kind[k].values()):>10}" for k in KINDS)
                 + f" {result.accounted:>10}")
    lines.append(f"{result.messages} messages in {result.seconds:.1f} s ({result.messages / max(result.seconds, 1e-9):,.0f}/s), "
                 f"{result.accounted} accounted for, {result.crashes} crashes")
    if result.first_crash:
        lines.append("first crash:\n" + result.first_crash)
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="main.py bench fuzz", description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--socket", action="store_true", help="through a PUSH -> PULL socket and poll_once")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)  # the engine's rate-limited warnings would flood the report

    def progress(sent: int) -> None:
        if sent % 100_000 == 0:
            print(f"  {sent:,} messages", file=sys.stderr, flush=True)

    result = run_fuzz(args.messages, args.seed, args.socket, progress)
    print(report(result))
    ok = result.crashes == 0 and result.accounted == result.messages
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
