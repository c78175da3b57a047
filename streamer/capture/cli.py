"""Command line: `python -m streamer.capture {mic,file,synth,net} --stream NAME [options]`.

Exit codes: 0 done or stopped by SIGTERM/SIGINT; 1 the source failed while running;
2 bad arguments, or the source (file, device, ffmpeg, schedule) cannot be opened.
Errors are one line on stderr, never a traceback. Log lines go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from streamer.capture import file, mic, net, synth
from streamer.capture.pusher import (
    DEFAULT_FRAME_MS,
    DEFAULT_LINGER_MS,
    DEFAULT_SNDHWM,
    MAX_FRAME_MS,
    MIN_FRAME_MS,
    SourceError,
)
from streamer.wire import WireError, validate_stream_id

log = logging.getLogger("streamer.capture")

WORKERS = {"mic": mic, "file": file, "synth": synth, "net": net}


def _stream_id(text: str) -> str:
    try:
        return validate_stream_id(text)
    except WireError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def _frame_ms(text: str) -> int:
    value = int(text)
    if not MIN_FRAME_MS <= value <= MAX_FRAME_MS:
        raise argparse.ArgumentTypeError(f"must be {MIN_FRAME_MS}-{MAX_FRAME_MS} ms, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("engine connection")
    g.add_argument(
        "--endpoint", default="tcp://127.0.0.1:5555", help="engine PULL endpoint (default %(default)s)"
    )
    g.add_argument(
        "--stream", type=_stream_id, help="stream id: 1-64 characters of [A-Za-z0-9_.-] (required)"
    )
    g.add_argument(
        "--frame-ms", type=_frame_ms, default=DEFAULT_FRAME_MS, help="frame length (default %(default)s)"
    )
    g.add_argument(
        "--format", choices=["int16", "float32"], default="int16", help="sample format on the wire"
    )
    g.add_argument("--sndhwm", type=int, default=DEFAULT_SNDHWM, help="frames queued for a slow engine")
    g.add_argument(
        "--linger-ms", type=int, default=DEFAULT_LINGER_MS, help="on stop, time to send queued frames"
    )
    g.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    g.add_argument(
        "--curve-server-key", metavar="KEY", help="the engine's CURVE public key (Z85) or its .key file"
    )
    g.add_argument(
        "--curve-secret-key-file", metavar="FILE", help="this worker's CURVE key pair (.key_secret file)"
    )
    g.add_argument(
        "--metrics-port", type=int, metavar="PORT",
        help="serve this worker's Prometheus metrics on PORT (0: any free port; default: off)",
    )
    g.add_argument("--metrics-host", default="127.0.0.1", help="address of --metrics-port (default %(default)s)")

    parser = argparse.ArgumentParser(prog="python -m streamer.capture", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="worker", required=True, metavar="{mic,file,synth,net}")
    for name, module in WORKERS.items():
        summary = module.__doc__.split("\n")[0].split(": ", 1)[1]
        p = sub.add_parser(
            name,
            parents=[common],
            help=summary,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(module=module)
    return parser


PARENT_ENV = "SLAP_ENGINE_PID"  # set by the engine's WorkerSupervisor: its pid
PARENT_POLL_S = 0.5


def _stop_with_parent(stop: threading.Event) -> None:
    """A worker started by an engine stops when that engine is gone (even after kill -9), so no
    orphan keeps pushing into the ingest port of the next engine run."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit():
        return

    def watch() -> None:
        while not stop.wait(PARENT_POLL_S):
            if os.getppid() != int(parent):
                log.warning("engine (pid %s) is gone: stopping", parent)
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def curve_keys(server_key: str | None, secret_key_file: str | None) -> tuple[bytes, bytes, bytes] | None:
    """(server public, client public, client secret) for Pusher(curve=...), or None without CURVE.

    server_key: the engine's public key, 40 Z85 characters or a zmq.auth certificate file;
    secret_key_file: this worker's `.key_secret` file (zmq.auth.create_certificates)."""
    if server_key is None and secret_key_file is None:
        return None
    if server_key is None or secret_key_file is None:
        raise SourceError("CURVE needs both --curve-server-key and --curve-secret-key-file")
    import zmq.auth

    if len(server_key) == 40 and not os.path.exists(server_key):
        server_public = server_key.encode("ascii", "replace")
    else:
        try:
            server_public = zmq.auth.load_certificate(server_key)[0]
        except (OSError, ValueError) as e:
            raise SourceError(f"--curve-server-key: not a Z85 key nor a key file: {e}") from None
    try:
        public, secret = zmq.auth.load_certificate(secret_key_file)
    except (OSError, ValueError) as e:
        raise SourceError(f"--curve-secret-key-file: cannot read {secret_key_file}: {e}") from None
    if secret is None:
        raise SourceError(f"--curve-secret-key-file: {secret_key_file} holds no secret key (use the .key_secret file)")
    return server_public, public, secret


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.stream is None and not getattr(args, "list_devices", False):
        parser.error("--stream is required")
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _stop_with_parent(stop)
    try:
        args.curve = curve_keys(args.curve_server_key, args.curve_secret_key_file)
    except SourceError as e:
        log.error("%s", e)
        return e.exit_code
    metrics = _serve_metrics(args)
    try:
        return args.module.run(args, stop)
    except SourceError as e:
        log.error("%s", str(e).replace("\n", " "))
        return e.exit_code
    finally:
        if metrics is not None:
            metrics.close()


def _serve_metrics(args: argparse.Namespace):
    """--metrics-port: the worker's metrics server, fed with its pusher (pusher_from_args calls
    args.on_pusher). A port that cannot be bound is logged; the worker runs on without metrics."""
    if args.metrics_port is None or args.stream is None:
        return None
    try:
        from streamer.metrics import serve_worker_metrics

        server = serve_worker_metrics(args.stream, args.metrics_host, args.metrics_port)
    except (ImportError, OSError) as e:
        log.warning("worker metrics not served: %s", e)
        return None
    args.on_pusher = server.metrics.watch
    return server
