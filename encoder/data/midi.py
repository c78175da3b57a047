"""A minimal Standard MIDI File (format 0) writer: enough to drive fluidsynth renders.

Time is kept in seconds at the edges and in ticks inside the file; at 120 bpm and 480 ticks per
quarter note one tick is 1/960 s, fine enough for note placement.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

TICKS_PER_QUARTER = 480
TEMPO_US_PER_QUARTER = 500_000  # 120 bpm
TICKS_PER_SECOND = TICKS_PER_QUARTER * 1_000_000 // TEMPO_US_PER_QUARTER  # 960 ticks per second
DRUM_CHANNEL = 9  # General MIDI percussion channel (channel 10 counting from 1)


@dataclass(frozen=True)
class Note:
    start_s: float
    dur_s: float
    pitch: int  # MIDI key 0-127; on the drum channel it picks the instrument
    velocity: int = 100


@dataclass
class Part:
    """Notes for one preset on one channel. bank: 0-127 melodic variation bank (CC0);
    on DRUM_CHANNEL `program` picks the drum kit and bank is ignored."""

    channel: int
    program: int
    notes: list[Note] = field(default_factory=list)
    bank: int = 0
    start_s: float = 0.0  # when the bank/program change is sent


def _vlq(n: int) -> bytes:
    """Variable-length quantity, as SMF delta times are stored."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    return bytes(reversed(out))


def _ticks(seconds: float) -> int:
    return max(0, round(seconds * TICKS_PER_SECOND))


def midi_bytes(parts: list[Part], end_s: float | None = None) -> bytes:
    """Encode parts as one SMF format-0 file. end_s: keep the file running until then, so the
    renderer also writes release tails after the last note-off."""
    events: list[tuple[int, int, bytes]] = []  # (tick, order, message); order puts note-offs first
    for part in parts:
        if not 0 <= part.channel < 16:
            raise ValueError(f"MIDI channel must be 0-15, got {part.channel}")
        t = _ticks(part.start_s)
        ch = part.channel
        if ch != DRUM_CHANNEL:
            events.append((t, 1, bytes([0xB0 | ch, 0, part.bank & 0x7F])))  # bank select MSB
            events.append((t, 1, bytes([0xB0 | ch, 32, 0])))  # bank select LSB
        events.append((t, 2, bytes([0xC0 | ch, part.program & 0x7F])))
        for n in part.notes:
            on, off = _ticks(n.start_s), _ticks(n.start_s + n.dur_s)
            key, vel = n.pitch & 0x7F, max(1, min(127, n.velocity))
            events.append((on, 3, bytes([0x90 | ch, key, vel])))
            events.append((max(off, on + 1), 0, bytes([0x80 | ch, key, 0])))
    if end_s is not None:
        # A harmless controller (all channels' CC 110, undefined) marks the end time.
        events.append((_ticks(end_s), 4, bytes([0xB0, 110, 0])))
    events.sort(key=lambda e: (e[0], e[1]))

    track = bytearray()
    track += _vlq(0) + b"\xff\x51\x03" + TEMPO_US_PER_QUARTER.to_bytes(3, "big")
    last = 0
    for tick, _, msg in events:
        track += _vlq(tick - last) + msg
        last = tick
    track += _vlq(0) + b"\xff\x2f\x00"  # end of track
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_QUARTER)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


def write_midi(path: Path, parts: list[Part], end_s: float | None = None) -> Path:
    path = Path(path)
    path.write_bytes(midi_bytes(parts, end_s))
    return path
