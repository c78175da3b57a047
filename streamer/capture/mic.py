"""mic: a sound card input (PortAudio through sounddevice), sent at the device's own rate.

The PortAudio callback only copies each block into a bounded queue; the main thread frames and
sends it (ZeroMQ sockets are not thread-safe). Each block is stamped with its capture time,
from PortAudio's ADC time where the driver reports it, else "the block ends now".
--list-devices prints the devices and exits 0, also when there are none.
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading
import time

import numpy as np

from streamer.capture.pusher import NS_PER_S, SourceError, pusher_from_args
from streamer.wire import MAX_CHANNELS, MIN_CHANNELS

log = logging.getLogger("streamer.capture.mic")

QUEUE_BLOCKS = 200  # blocks buffered between the callback and the sender (several seconds)
MAX_CAPTURE_LAG_S = 1.0  # an ADC time older than this is a driver quirk: ignore it


def _sounddevice():
    """Import sounddevice lazily: the other workers must run where PortAudio is missing."""
    try:
        import sounddevice

        return sounddevice
    except OSError as e:  # libportaudio not installed
        raise SourceError(f"PortAudio is not available: {e}") from None


def _device(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list-devices", action="store_true", help="print the audio devices and exit")
    p.add_argument("--device", help="input device: index or part of its name (default: the system default)")
    p.add_argument("--rate", type=int, default=None, help="sample rate in Hz (default: the device's)")
    p.add_argument("--channels", type=int, default=1, help="input channels (default 1)")
    p.add_argument(
        "--blocksize", type=int, default=0, help="PortAudio block in samples (default 0: its choice)"
    )


def list_devices() -> int:
    try:
        sd = _sounddevice()
        devices = sd.query_devices()
    except Exception as e:  # listing never fails: say why there is nothing and exit 0
        print(f"no audio devices: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return 0
    if len(devices) == 0:
        print("no audio devices found (PortAudio sees no sound card)")
        return 0
    for index, d in enumerate(devices):
        print(
            f"{index:3d}  {d['name']}  (in {d['max_input_channels']}, out {d['max_output_channels']}, "
            f"{d['default_samplerate']:g} Hz, {sd.query_hostapis(d['hostapi'])['name']})"
        )
    return 0


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    if args.list_devices:
        return list_devices()
    if not MIN_CHANNELS <= args.channels <= MAX_CHANNELS:
        raise SourceError(f"--channels must be {MIN_CHANNELS}-{MAX_CHANNELS}, got {args.channels}")
    sd = _sounddevice()
    device = _device(args.device)
    try:
        info = sd.query_devices(device, kind="input")
        rate = args.rate or int(info["default_samplerate"])
        sd.check_input_settings(device=device, channels=args.channels, samplerate=rate)
    except (sd.PortAudioError, ValueError) as e:
        raise SourceError(f"cannot use input device {args.device or '(default)'}: {e}") from None
    dtype = "int16" if args.format == "int16" else "float32"
    blocks: queue.Queue[tuple[np.ndarray, int]] = queue.Queue(maxsize=QUEUE_BLOCKS)
    overflows = {"input": 0, "queue": 0}  # written by the callback thread, read at the end

    def callback(indata: np.ndarray, frames: int, time_info, status) -> None:
        now = time.monotonic_ns()
        if status.input_overflow:
            overflows["input"] += 1
        lag = time_info.currentTime - time_info.inputBufferAdcTime
        if not 0 < lag < MAX_CAPTURE_LAG_S:
            lag = frames / rate  # no usable ADC time: the block ends now
        try:
            blocks.put_nowait((indata.copy(), now - int(lag * NS_PER_S)))
        except queue.Full:
            overflows["queue"] += 1

    log.info("mic: %s at %d Hz x %d ch -> stream %s", info["name"], rate, args.channels, args.stream)
    with pusher_from_args(args, rate, args.channels, stop, block=False) as pusher:
        try:
            stream = sd.InputStream(
                device=device,
                channels=args.channels,
                samplerate=rate,
                dtype=dtype,
                blocksize=args.blocksize,
                callback=callback,
            )
        except (sd.PortAudioError, ValueError) as e:
            raise SourceError(f"cannot open input device {info['name']!r}: {e}") from None
        with stream:
            while not stop.is_set():
                try:
                    chunk, mono_ns = blocks.get(timeout=0.2)
                except queue.Empty:
                    if not stream.active:
                        raise SourceError(f"input device {info['name']!r} stopped", exit_code=1) from None
                    continue
                pusher.push(chunk, mono_ns=mono_ns)
        if overflows["input"] or overflows["queue"]:
            log.warning(
                "input overflows: %d in the driver, %d in the queue", overflows["input"], overflows["queue"]
            )
    return 0
