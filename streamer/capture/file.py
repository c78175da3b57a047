"""file: play an audio file (wav, flac, ogg, mp3; m4a and others via ffmpeg) into the engine.

The file is read by `streamer.audio_file`, as `main.py tag` reads it: a missing, empty or
unreadable file is refused with one line and exit code 2 (the engine counts it); NaN samples
become 0; a file whose decoding fails part way is sent up to the failure, then the worker exits
with code 1 and says where it stopped.

The worker sends 16 kHz mono: it down-mixes and resamples with soxr (streamer.resample) before
the wire, which cuts the traffic of a 48 kHz stereo file 6x and spares the engine the work. A file
already at 16 kHz mono is sent bit-exact (int16 straight from the file). --native sends the file's
own rate and channels instead (the frame carries them; the engine resamples).

Pacing (--realtime, the default) waits for each frame's absolute deadline on the monotonic clock,
so the stream keeps the file's rate however long each step takes. --fast sends as fast as the
engine takes frames (back-pressure: a full queue waits instead of dropping).
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

import numpy as np

from streamer.audio_file import AudioFile, AudioFileError, open_audio
from streamer.capture.pusher import Pacer, SourceError, frame_samples_for, pusher_from_args
from streamer.resample import TARGET_RATE, StreamResampler
from streamer.wire import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

log = logging.getLogger("streamer.capture.file")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", type=Path, help="audio file (what libsndfile reads: wav, flac, ogg, mp3; else ffmpeg)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--realtime",
        dest="realtime",
        action="store_true",
        default=True,
        help="pace at the file's rate (default)",
    )
    pace.add_argument(
        "--fast", dest="realtime", action="store_false", help="send as fast as the engine takes frames"
    )
    p.add_argument("--loop", action="store_true", help="start again at the end, forever")
    p.add_argument(
        "--start-delay", type=float, default=0.0, metavar="S", help="wait S seconds before sending"
    )
    p.add_argument(
        "--native", action="store_true", help="send the file's own rate and channels (no resampling)"
    )


def _open(path: Path, native: bool) -> AudioFile:
    try:
        f = open_audio(path)
    except AudioFileError as e:
        raise SourceError(str(e)) from None
    if native and not (f.channels <= MAX_CHANNELS and MIN_SAMPLE_RATE <= f.samplerate <= MAX_SAMPLE_RATE):
        f.close()
        raise SourceError(f"{path}: --native sends {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz and up to {MAX_CHANNELS} "
                          f"channels, the file has {f.samplerate} Hz x {f.channels}; leave --native out to resample")
    return f


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    with _open(args.path, args.native) as f:
        passthrough = args.native or (f.samplerate == TARGET_RATE and f.channels == 1)
        out_rate, out_channels = (f.samplerate, f.channels) if passthrough else (TARGET_RATE, 1)
        resampler = None if passthrough else StreamResampler(f.samplerate, TARGET_RATE)
        read_dtype = "int16" if passthrough and args.format == "int16" else "float32"  # int16: integer PCM only
        block = frame_samples_for(f.samplerate, args.frame_ms)  # input samples per read: one frame's worth
        log.info(
            "file %s (%s): %d Hz x %d ch, %s s -> stream %s at %d Hz x %d ch, %s%s",
            args.path.name,
            f.decoder,
            f.samplerate,
            f.channels,
            "?" if f.frames is None else f"{f.frames / f.samplerate:.2f}",
            args.stream,
            out_rate,
            out_channels,
            "real time" if args.realtime else "fast",
            ", looping" if args.loop else "",
        )
        with pusher_from_args(args, out_rate, out_channels, stop, block=not args.realtime) as pusher:
            if args.start_delay > 0 and stop.wait(args.start_delay):  # connected meanwhile
                return 0
            pacer = Pacer(out_rate, stop)
            sent = 0  # output samples handed to the pusher
            while not stop.is_set():
                chunk = f.read(block, dtype=read_dtype)
                if len(chunk) == 0:
                    if f.position == 0:  # nothing decoded from the start: no stream at all
                        raise SourceError(f"{args.path}: {f.error or 'no audio in it (0 samples)'}")
                    if not args.loop or f.error is not None:
                        break
                    f.rewind()
                    continue
                out = chunk if resampler is None else resampler(chunk)[:, None]
                sent = _send(pusher, pacer, out, sent, args.realtime)
            if stop.is_set():
                return 0
            if resampler is not None:
                _send(pusher, pacer, resampler.flush()[:, None], sent, args.realtime)
            pusher.finish()
        if f.nonfinite:
            log.warning("%s: %d NaN or infinite samples sent as 0", args.path, f.nonfinite)
        if f.error is not None:
            raise SourceError(f"{args.path}: {f.error}; the audio before it was sent", exit_code=1)
    return 0


def _send(pusher, pacer: Pacer, out: np.ndarray, sent: int, realtime: bool) -> int:
    """Push `out` (stream samples sent .. sent + len(out)); in real time, once its last sample is due."""
    if realtime:
        if not pacer.wait_until(sent + len(out)):
            return sent
        pusher.push(out, mono_ns=pacer.time_of(sent))
    else:
        pusher.push(out)
    return sent + len(out)
