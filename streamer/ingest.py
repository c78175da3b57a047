"""The engine's receive side: one bounded queue of decoded frames per stream, and the CURVE
credentials check for capture workers (see the engine's module docstring for how they are used)."""

from __future__ import annotations

import ipaddress
import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path

from streamer.wire import Frame

log = logging.getLogger("streamer.engine")

QUEUE_FRAMES = 512  # frames queued per stream (51 s of 100 ms frames) ...
QUEUE_BYTES = 16 * 1024 * 1024  # ... holding at most 16 MiB of samples; past either, the oldest go


class FrameQueue:
    """One stream's decoded frames between the socket and its context, oldest first.

    Bounded by `max_frames` and `max_bytes` of payload: `push` drops the oldest frames past either
    bound and returns how many (a lossless queue never drops: its caller stops reading instead).
    """

    def __init__(self, max_frames: int = QUEUE_FRAMES, max_bytes: int = QUEUE_BYTES, lossless: bool = False):
        self.frames: deque[Frame] = deque()
        self.bytes = 0
        self.max_frames, self.max_bytes, self.lossless = max_frames, max_bytes, lossless
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def full(self) -> bool:
        return len(self.frames) >= self.max_frames or self.bytes >= self.max_bytes

    def push(self, frame: Frame) -> int:
        self.frames.append(frame)
        self.bytes += len(frame.payload)
        dropped = 0
        while not self.lossless and len(self.frames) > 1 and (
                len(self.frames) > self.max_frames or self.bytes > self.max_bytes):
            self.bytes -= len(self.frames.popleft().payload)
            dropped += 1
        self.dropped += dropped
        return dropped

    def pop(self) -> Frame:
        frame = self.frames.popleft()
        self.bytes -= len(frame.payload)
        return frame


class WorkerKeys:
    """ZAP credentials check for CURVE: the public keys in a directory (re-read at each connection,
    so adding or removing a key file needs no restart) plus keys given at start. Runs on the
    authenticator's thread."""

    def __init__(self, directory: Path, extra: set[bytes], on_refused: Callable[[bytes], None]):
        self.directory, self.extra, self.on_refused = directory, extra, on_refused

    def allowed(self) -> set[bytes]:
        from zmq.auth import load_certificates

        try:
            return set(load_certificates(str(self.directory))) | self.extra
        except (OSError, ValueError) as e:
            log.error("CURVE: cannot read the authorized keys in %s (%s): only the engine's own workers are admitted",
                      self.directory, e)
            return set(self.extra)

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.allowed()
        if not ok:
            self.on_refused(key)
        return ok


def is_loopback(endpoint: str) -> bool:
    """True for inproc/ipc endpoints and tcp ones bound to a loopback address or localhost."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or "*": every address
