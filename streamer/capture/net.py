"""net: an RTSP/HTTP/UDP/... audio stream, decoded by an ffmpeg subprocess to 16 kHz mono int16.

ffmpeg (`-nostdin -i URL -vn -ac 1 -ar 16000 -f s16le -`) does the protocol, demuxing, decoding
and resampling; the worker reads its stdout. On end of stream, an ffmpeg error or a stall (no bytes
for --stall-timeout s) it kills ffmpeg and starts a new one after a capped exponential backoff
(--backoff-base * 2^attempt, at most --backoff-cap, times a random 0.5-1 jitter), forever; a
connection that delivered audio for --healthy-after s resets the backoff. The epoch and sequence
numbers run on across reconnects: the engine sees one stream with a time gap, not a restart.

The URL may hold credentials: logs show only scheme://host[:port]/…, and ffmpeg's own messages are
redacted the same way. Pass it with --url-env VAR to keep it out of this worker's command line
(ffmpeg's command line still holds it: that is visible to local users, as with any ffmpeg use).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import select
import shutil
import subprocess
import threading
import time
import urllib.parse

import numpy as np

from streamer.capture.pusher import SourceError, pusher_from_args
from streamer.resample import TARGET_RATE

log = logging.getLogger("streamer.capture.net")

BYTES_PER_SAMPLE = 2  # s16le mono
READ_BYTES = 65536  # per os.read: 2 s of 16 kHz s16le
POLL_S = 0.2  # wake at least this often to check stop and stall
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redact_url(url: str) -> str:
    """'rtsp://user:pw@cam.local:554/live?token=x' -> 'rtsp://cam.local:554/…' (no credentials, path, query)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<url>"
    if not parts.scheme or not host:
        return "<url>"
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}{f':{port}' if port else ''}/…"


def redact_text(text: str, url: str) -> str:
    """Remove `url`, its credentials and anything URL-shaped from a line of ffmpeg output."""
    text = text.replace(url, redact_url(url))
    secrets_ = urllib.parse.urlsplit(url)
    for secret in (secrets_.password, secrets_.username, secrets_.query, secrets_.path.strip("/")):
        if secret and len(secret) >= 3:
            text = text.replace(secret, "…")
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


class Backoff:
    """Capped exponential backoff with jitter: delay(attempt) = min(cap, base * 2**attempt) * U(0.5, 1)."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None):
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng or random.Random()
        self.attempt = 0  # failures since the last healthy connection

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.cap_s, self.base_s * 2 ** min(self.attempt, 30)) * self.rng.uniform(0.5, 1.0)
        self.attempt += 1
        return delay


def ffmpeg_command(ffmpeg: str, url: str, realtime: bool, rtsp_transport: str) -> list[str]:
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"]
    if realtime:
        cmd.append("-re")  # a file-like URL (not live): read it at its own rate
    if url.lower().startswith(("rtsp://", "rtsps://")):
        cmd += ["-rtsp_transport", rtsp_transport]
    cmd += ["-i", url, "-vn", "-ac", "1", "-ar", str(TARGET_RATE), "-f", "s16le", "-flush_packets", "1", "-"]
    return cmd


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="stream URL (rtsp://, http(s)://, udp://, srt://, ...); never logged")
    src.add_argument("--url-env", metavar="VAR", help="read the URL from environment variable VAR")
    p.add_argument(
        "--stall-timeout", type=float, default=10.0, metavar="S", help="reconnect after S s without bytes"
    )
    p.add_argument(
        "--backoff-base", type=float, default=0.5, metavar="S", help="first reconnect delay (default 0.5)"
    )
    p.add_argument(
        "--backoff-cap", type=float, default=30.0, metavar="S", help="longest reconnect delay (default 30)"
    )
    p.add_argument(
        "--healthy-after", type=float, default=10.0, metavar="S", help="audio for S s resets the backoff"
    )
    p.add_argument(
        "--realtime", action="store_true", help="pass -re to ffmpeg (for file URLs, not live streams)"
    )
    p.add_argument("--rtsp-transport", choices=["tcp", "udp"], default="tcp", help="for rtsp:// URLs")
    p.add_argument("--ffmpeg", default="ffmpeg", help="ffmpeg executable (default: from PATH)")


def _log_stderr(pipe, url: str) -> None:
    for raw in pipe:
        line = raw.decode("utf-8", "replace").strip()
        if line:
            log.warning("ffmpeg: %s", redact_text(line, url))


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Session:
    """One ffmpeg run: read PCM until end, error, stall or stop. Returns why it ended."""

    def __init__(self, cmd: list[str], url: str, stall_timeout: float):
        self.url = url
        self.stall_timeout_ns = int(stall_timeout * 1e9)
        self.first_audio_ns: int | None = None  # monotonic time of the first bytes
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        except OSError as e:  # found on PATH but not runnable
            raise SourceError(f"cannot start {cmd[0]}: {e.strerror}") from None
        self.stderr_thread = threading.Thread(target=_log_stderr, args=(self.proc.stderr, url), daemon=True)
        self.stderr_thread.start()

    def pump(self, pusher, stop: threading.Event) -> str:
        fd = self.proc.stdout.fileno()
        last_bytes_ns = time.monotonic_ns()
        odd = b""  # a byte of a sample split across reads
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], POLL_S)
            now = time.monotonic_ns()
            if not ready:
                if now - last_bytes_ns > self.stall_timeout_ns:
                    return f"stalled: no audio for {self.stall_timeout_ns / 1e9:g} s"
                continue
            data = os.read(fd, READ_BYTES)
            if not data:
                code = self.proc.wait()
                return "end of stream" if code == 0 else f"ffmpeg exited with code {code}"
            if self.first_audio_ns is None:
                self.first_audio_ns = now
                log.info("receiving audio from %s", redact_url(self.url))
            last_bytes_ns = now
            data = odd + data
            whole = len(data) - len(data) % BYTES_PER_SAMPLE
            odd = data[whole:]
            if whole:
                pusher.push(np.frombuffer(data[:whole], dtype="<i2"))
        return "stopped"

    def close(self) -> None:
        _stop_process(self.proc)
        self.proc.stdout.close()
        self.stderr_thread.join(timeout=1.0)

    def healthy_for_ns(self) -> int:
        return 0 if self.first_audio_ns is None else time.monotonic_ns() - self.first_audio_ns


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    url = args.url if args.url is not None else os.environ.get(args.url_env, "")
    if not url:
        raise SourceError(f"environment variable {args.url_env} is empty or not set")
    if shutil.which(args.ffmpeg) is None:
        raise SourceError(f"ffmpeg not found: {args.ffmpeg!r} (install ffmpeg or pass --ffmpeg PATH)")
    for name in ("stall_timeout", "backoff_base", "backoff_cap"):
        if not getattr(args, name) > 0:
            raise SourceError(f"--{name.replace('_', '-')} must be > 0 seconds")
    shown = redact_url(url)
    cmd = ffmpeg_command(args.ffmpeg, url, args.realtime, args.rtsp_transport)
    backoff = Backoff(args.backoff_base, args.backoff_cap)
    healthy_ns = int(args.healthy_after * 1e9)
    with pusher_from_args(args, TARGET_RATE, 1, stop, block=False) as pusher:
        log.info("net: %s -> stream %s (epoch %08x)", shown, args.stream, pusher.epoch)
        while not stop.is_set():
            log.info("connecting to %s", shown)
            session = _Session(cmd, url, args.stall_timeout)
            try:
                reason = session.pump(pusher, stop)
            finally:
                session.close()
            pusher.flush()  # the audio so far, before the gap
            if stop.is_set():
                break
            if session.healthy_for_ns() >= healthy_ns:
                backoff.reset()
            attempt = backoff.attempt + 1
            delay = backoff.next_delay()
            log.warning("stream %s lost (%s); reconnect attempt %d in %.2f s", shown, reason, attempt, delay)
            stop.wait(delay)
    return 0
