"""Audio files -> float32 samples: the one reader of `main.py tag` and the file capture worker.

    with open_audio(path) as f:              # AudioFileError (one line: the file and why) if unusable
        f.samplerate, f.channels, f.frames   # frames: None when the decoder cannot tell before the end
        block = f.read(1600)                 # (n, channels) float32; n < 1600 only at the end
    audio = read_audio(path)                 # the whole file: .samples (n, channels), .rate, .error

libsndfile (soundfile) decodes wav, flac, ogg (vorbis, opus), mp3, aiff and the other formats it
knows, at any bit depth (8-bit, 24-bit, float). A file it does not recognise (m4a/aac, wma, ...)
is decoded by an ffmpeg subprocess when ffmpeg is installed. Before any decoder runs, a missing
path, a directory, an empty file or an unreadable one is refused with its reason, so a batch can
report it and go on with the next file. A file with no samples is refused too: it has nothing to
score.

Damage is never fatal, and never silent:
- NaN and infinite samples (float files) become 0 and are counted in `nonfinite`: one of them
  would otherwise turn a whole resampler filter length, and every score after it, into NaN;
- a file whose decoding fails part way (a truncated or corrupt FLAC, an ffmpeg decode error)
  ends there: the samples before it are returned and `error` says where and why.

Numpy, soundfile and the standard library only: the capture workers import this module.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger("streamer.audio_file")

READ_FRAMES = 16000  # frames per block when a whole file is read (1 s at 16 kHz)
SALVAGE_FRAMES = 160  # after a decode failure, the block is read again in pieces this long: at most this is lost
FFMPEG_TIMEOUT_S = 30.0  # ffprobe's answer about one local file
FFMPEG_FORMATS = "m4a, aac, wma, ..."  # what the ffmpeg fallback is for, for the "not installed" message
_FLOAT_SUBTYPES = ("FLOAT", "DOUBLE", "VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III")


class AudioFileError(ValueError):
    """A file that cannot be used; the message is one line: `<path>: <reason>`."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _reason(e: Exception) -> str:
    """libsndfile's 'Error : flac decoder lost sync.' -> 'flac decoder lost sync'."""
    text = _first_line(getattr(e, "error_string", "") or e)
    return text.removeprefix("Error : ").rstrip(".") or type(e).__name__


def check_path(path: Path) -> None:
    """Raise AudioFileError unless `path` is a non-empty regular file this process may read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise AudioFileError(path, "file not found") from None
    except OSError as e:
        raise AudioFileError(path, f"cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioFileError(path, "is a directory, not an audio file (give its files, e.g. DIR/*.wav)")
    if not stat.S_ISREG(st.st_mode):
        raise AudioFileError(path, "not a regular file (a pipe or a device?)")
    if st.st_size == 0:
        raise AudioFileError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise AudioFileError(path, f"cannot read it ({e.strerror})") from None


class AudioFile:
    """An open audio file read in blocks; see the module docstring. A context manager.

    samplerate, channels: the file's own; frames: its length in frames (None: unknown until the end);
    integer_pcm: True when the samples are integers (libsndfile PCM), so `read(n, "int16")` is exact
    for 16-bit files; nonfinite: samples replaced by 0 so far; error: why decoding stopped early (or None).
    """

    decoder = "libsndfile"

    def __init__(self, path: Path, handle: sf.SoundFile):
        self.path = path
        self._f = handle
        self.samplerate: int = handle.samplerate
        self.channels: int = handle.channels
        self.frames: int | None = handle.frames
        self.integer_pcm = handle.subtype not in _FLOAT_SUBTYPES
        self.nonfinite = 0
        self.error: str | None = None
        self.position = 0  # frames returned since the start (or the last rewind)

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, n: int, dtype: str = "float32") -> np.ndarray:
        """Up to n frames -> (k, channels) float32 (or int16 for integer PCM when asked); k = 0 at the end.

        A decode failure ends the file there: the frames before it are returned, `error` is set,
        and later reads return no frames."""
        if self.error is not None:
            return np.zeros((0, self.channels), np.float32)
        dtype = dtype if self.integer_pcm else "float32"
        failure = None
        try:
            block = self._read(n, dtype)
        except (RuntimeError, OSError, ValueError) as e:  # sf.LibsndfileError is a RuntimeError
            failure = f"{_reason(e)}: truncated or corrupt?"
            block = self._salvage(n, dtype)
        if block.dtype.kind == "f":
            bad = ~np.isfinite(block)
            if bad.any():
                block = np.where(bad, np.float32(0), block)
                self.nonfinite += int(bad.sum())
        self.position += len(block)
        if failure is not None:
            self._stop(failure)
        return block

    def _read(self, n: int, dtype: str) -> np.ndarray:
        return self._f.read(n, dtype=dtype, always_2d=True)

    def _salvage(self, n: int, dtype: str) -> np.ndarray:
        """After a failed read of n frames, the frames before the failure: read again in small pieces."""
        pieces = []
        try:
            self._f.seek(self.position)
            while (got := sum(map(len, pieces))) < n:
                piece = self._f.read(min(SALVAGE_FRAMES, n - got), dtype=dtype, always_2d=True)
                if not len(piece):
                    break
                pieces.append(piece)
        except (RuntimeError, OSError, ValueError):
            pass  # the piece that fails is the one lost
        return np.concatenate(pieces) if pieces else np.zeros((0, self.channels), dtype)

    def _stop(self, reason: str) -> None:
        total = f" of {self.frames / self.samplerate:.2f} s" if self.frames else ""
        self.error = f"decoding stopped at {self.position / self.samplerate:.2f} s{total} ({reason})"

    def rewind(self) -> None:
        """Back to the first frame (a looping source); clears `error`."""
        self._f.seek(0)
        self.position, self.error = 0, None

    def close(self) -> None:
        self._f.close()


class FfmpegAudioFile(AudioFile):
    """The same reader over an ffmpeg subprocess that writes float32 at the file's own rate and
    channels (`-f f32le`); its rate and channels come from ffprobe. ffmpeg's messages go to a
    temporary file (a pipe nobody reads could fill and stall it); any of them at the end is an error."""

    decoder = "ffmpeg"

    def __init__(self, path: Path, ffmpeg: str, ffprobe: str):
        self.path = path
        self._ffmpeg = ffmpeg
        self.samplerate, self.channels, duration = _probe(path, ffprobe)
        self.frames = round(duration * self.samplerate) if duration else None
        self.integer_pcm = False
        self.nonfinite = 0
        self.error = None
        self.position = 0
        self._proc: subprocess.Popen | None = None
        self._start()

    def _start(self) -> None:
        cmd = [self._ffmpeg, "-nostdin", "-v", "error", "-i", str(self.path), "-map", "0:a:0", "-vn",
               "-f", "f32le", "-acodec", "pcm_f32le", "-"]
        self._messages = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._messages)
        self._failure: str | None = None  # ffmpeg's error, raised once the samples before it are read

    def _read(self, n: int, dtype: str) -> np.ndarray:
        if self._failure is not None:
            raise RuntimeError(self._failure)
        frame_bytes = 4 * self.channels
        data = self._proc.stdout.read(n * frame_bytes)  # n frames, or fewer at the end of the output
        if len(data) < n * frame_bytes:
            code = self._proc.wait()
            self._messages.seek(0)
            message = _first_line(self._messages.read().decode(errors="replace"))
            if code != 0 or message:
                self._failure = f"ffmpeg: {message or f'exit code {code}'}"
                if len(data) < frame_bytes:
                    raise RuntimeError(self._failure)
        data = data[: len(data) - len(data) % frame_bytes]
        return np.frombuffer(data, "<f4").reshape(-1, self.channels).astype(np.float32)

    def _salvage(self, n: int, dtype: str) -> np.ndarray:
        return np.zeros((0, self.channels), np.float32)  # ffmpeg returned the frames before its error already

    def rewind(self) -> None:
        self.close()
        self._start()
        self.position, self.error = 0, None

    def close(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        self._proc.stdout.close()
        self._messages.close()
        self._proc = None


def _probe(path: Path, ffprobe: str) -> tuple[int, int, float | None]:
    """(sample rate, channels, duration in s or None) of the first audio stream, by ffprobe."""
    cmd = [ffprobe, "-v", "error", "-select_streams", "a:0", "-show_entries",
           "stream=sample_rate,channels:format=duration", "-of", "json", str(path)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=FFMPEG_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AudioFileError(path, f"ffprobe failed ({e})") from None
    if out.returncode != 0:
        raise AudioFileError(path, f"not an audio file libsndfile or ffmpeg can read ({_first_line(out.stderr).removeprefix(f'{path}: ')})")
    try:
        info = json.loads(out.stdout)
        streams = info.get("streams") or []
        if not streams:
            raise AudioFileError(path, "no audio stream in it (ffprobe)")
        rate, channels = int(streams[0]["sample_rate"]), int(streams[0]["channels"])
        duration = info.get("format", {}).get("duration")
        duration = float(duration) if duration not in (None, "N/A") else None
    except (ValueError, KeyError, TypeError) as e:
        raise AudioFileError(path, f"ffprobe gave no sample rate and channels ({e})") from None
    if rate <= 0 or channels <= 0:
        raise AudioFileError(path, f"ffprobe says {rate} Hz x {channels} channels")
    return rate, channels, duration


def open_audio(path: str | os.PathLike) -> AudioFile:
    """Open a file with libsndfile, else ffmpeg; raises AudioFileError (one line) when neither
    can use it, or when it has no samples."""
    path = Path(path)
    check_path(path)
    try:
        f: AudioFile = AudioFile(path, sf.SoundFile(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        reason = _reason(e)
        ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
        if ffmpeg is None or ffprobe is None:
            raise AudioFileError(path, f"libsndfile cannot read it ({reason}); install ffmpeg to read "
                                       f"{FFMPEG_FORMATS}") from None
        f = FfmpegAudioFile(path, ffmpeg, ffprobe)
    if f.frames == 0:
        f.close()
        raise AudioFileError(path, "no audio in it (0 samples)")
    return f


@dataclass(frozen=True)
class Audio:
    """A whole file: samples (n, channels) float32 in [-1, 1] (n >= 1) at `rate` Hz; error: why
    decoding stopped early (the samples are those before it), or None; nonfinite: samples set to 0."""

    samples: np.ndarray
    rate: int
    error: str | None = None
    nonfinite: int = 0

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate


def read_audio(path: str | os.PathLike) -> Audio:
    """The whole file as float32; raises AudioFileError (one line) for an unusable or empty file,
    including one whose decoding fails before its first sample."""
    with open_audio(path) as f:
        blocks = []
        while True:
            block = f.read(READ_FRAMES)
            if not len(block):
                break
            blocks.append(block)
        if not blocks:
            raise AudioFileError(path, f.error or "no audio in it (0 samples)")
        if f.nonfinite:
            log.warning("%s: %d NaN or infinite samples replaced by 0", path, f.nonfinite)
        return Audio(np.concatenate(blocks), f.samplerate, f.error, f.nonfinite)
