"""Regenerate the hand-made broken MIDI files in this folder: ``python tests/data/broken/make_broken.py``.

Each file is a few bytes to a few hundred bytes and shows one way real MIDI files go wrong;
tests/test_midi_robustness.py names the reason Apollo gives for each. Files that must be large
(thousands of tracks, over the size limit) are made by the tests themselves instead.

The bytes are assembled here by hand, without Apollo's MIDI writer, so that the fixtures do not
depend on the code they test.
"""

from __future__ import annotations

import struct
from pathlib import Path

HERE = Path(__file__).parent


def vlq(n: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def smf(tracks: list[bytes], fmt: int = 1, division: int = 480, n_tracks: int | None = None) -> bytes:
    header = b"MThd" + struct.pack(">IHHH", 6, fmt, len(tracks) if n_tracks is None else n_tracks, division)
    return header + b"".join(b"MTrk" + struct.pack(">I", len(t)) + t for t in tracks)


def notes(n: int = 16, ticks: int = 480, pitch: int = 60, channel: int = 0) -> bytes:
    """``n`` repeated quarter notes (note-on, note-off) on one channel."""
    events = b""
    for _ in range(n):
        events += vlq(0) + bytes([0x90 | channel, pitch, 80]) + vlq(ticks) + bytes([0x80 | channel, pitch, 0])
    return events


END = vlq(0) + b"\xff\x2f\x00"
GOOD = smf([notes() + END])


def rmid(inner: bytes, with_data: bool = True) -> bytes:
    chunk = (b"data" if with_data else b"INFO") + struct.pack("<I", len(inner)) + inner + b"\0" * (len(inner) & 1)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"RMID" + chunk


FILES = {
    "empty.mid": b"",
    "text.mid": b"This is a text file that someone named .mid\nIt has no MIDI in it at all.\n",
    "zeros.mid": bytes(512),
    "bad_header.mid": b"MThx" + GOOD[4:],
    "header_length.mid": b"MThd" + struct.pack(">I", 2) + GOOD[8:],
    "short_header.mid": GOOD[:10],
    "truncated.mid": GOOD[: len(GOOD) - 20],
    "missing_tracks.mid": smf([notes() + END], n_tracks=65535),
    "format2.mid": smf([notes() + END, notes() + END], fmt=2),
    "format9.mid": smf([notes() + END], fmt=9),
    "smpte.mid": smf([notes() + END], division=0xE728),  # -25 fps, 40 ticks per frame
    "tpq0.mid": smf([notes() + END], division=0),
    "no_tracks.mid": smf([], n_tracks=0),
    "tempo0.mid": smf([vlq(0) + b"\xff\x51\x03\x00\x00\x00" + notes() + END]),
    "absurd_ticks.mid": smf([vlq(0) + b"\x90\x3c\x50" + vlq(0x0FFFFFFF) + b"\x80\x3c\x00" + END]),
    "too_long.mid": smf([notes(4) + vlq(70000 * 120) + b"\x90\x3c\x50" + vlq(480) + b"\x80\x3c\x00" + END]),
    # Nine maximal delta times (with empty text events between them) pass 2**31 ticks.
    "overflow_ticks.mid": smf(
        [(vlq(0x0FFFFFFF) + b"\xff\x01\x00") * 9 + vlq(0) + b"\x90\x3c\x50" + vlq(480) + b"\x80\x3c\x00" + END]
    ),
    "no_notes.mid": smf([vlq(0) + b"\xff\x51\x03\x07\xa1\x20" + END]),
    "drums_only.mid": smf([notes(channel=9) + END]),
    "bad_running_status.mid": smf([b"\x00\x3c\x50" * 20 + END]),
    "meta_overrun.mid": smf([vlq(0) + b"\xff\x01" + vlq(0x0FFFFFFF) + b"abc" + END]),
    "bad_velocity.mid": smf([vlq(0) + b"\x90\x3c\xff" + END]),
    "rmid.mid": rmid(GOOD),
    "rmid_no_data.mid": rmid(GOOD, with_data=False),
    "riff_wave.mid": b"RIFF" + struct.pack("<I", 4) + b"WAVE",
}


if __name__ == "__main__":
    for name, data in FILES.items():
        assert len(data) < 2048, name
        (HERE / name).write_bytes(data)
    print(f"wrote {len(FILES)} files to {HERE}")
