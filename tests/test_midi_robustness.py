"""Reading broken MIDI files: each kind gets a one-line reason, never a crash or a traceback.

The files live in tests/data/broken/ (made by make_broken.py there); the few that must be large
are made here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apollo.errors import MidiError
from apollo.midi import MAX_FILE_BYTES, MAX_TRACKS, read_notes
from apollo.roll import PianoRoll

BROKEN = Path(__file__).parent / "data" / "broken"

REASONS = {
    "empty.mid": "empty file",
    "text.mid": "not a MIDI file (it is text)",
    "zeros.mid": "not a MIDI file (no MThd header)",
    "bad_header.mid": "not a MIDI file (no MThd header)",
    "header_length.mid": "bad header length 2",
    "short_header.mid": "truncated (10 bytes, shorter than a MIDI header)",
    "truncated.mid": "truncated (track 1 runs past the end of the file)",
    "missing_tracks.mid": "truncated (header promises 65535 tracks, found 1)",
    "format2.mid": "MIDI format 2 (independent sequences) is not supported",
    "format9.mid": "unknown MIDI format 9",
    "smpte.mid": "SMPTE time division is not supported",
    "tpq0.mid": "ticks per quarter note is 0",
    "no_tracks.mid": "no tracks",
    "absurd_ticks.mid": "too long (2236962 steps, the limit is 65536)",
    "too_long.mid": "too long (70020 steps, the limit is 65536)",
    "overflow_ticks.mid": "absurd note times (negative ticks)",
    "no_notes.mid": "no notes",
    "drums_only.mid": "only drums (drum tracks are left out)",
    "bad_running_status.mid": "not a readable MIDI file (Unexpected running status)",
    "meta_overrun.mid": "not a readable MIDI file (Unexpected EOF in Meta Event)",
    "bad_velocity.mid": "not a readable MIDI file (Get velocity=255)",
    "rmid_no_data.mid": "RIFF-wrapped MIDI (RMID) without a MIDI data chunk",
    "riff_wave.mid": "a RIFF file that is not RMID (MIDI)",
}


def test_every_broken_file_has_a_test_and_is_small():
    files = {p.name for p in BROKEN.glob("*.mid")}
    assert files == set(REASONS) | {"tempo0.mid", "rmid.mid"}
    assert all((BROKEN / name).stat().st_size < 2048 for name in files)


@pytest.mark.parametrize("name, reason", sorted(REASONS.items()))
def test_broken_file_gives_its_one_line_reason(name, reason):
    with pytest.raises(MidiError) as caught:
        read_notes(BROKEN / name)
    assert caught.value.reason == reason
    assert str(caught.value) == f"{BROKEN / name}: {reason}"
    assert "\n" not in str(caught.value)


def test_tempo_zero_is_read_at_a_default_tempo():
    # Time is read in beats, so a nonsense tempo changes nothing but the playback speed.
    notes = read_notes(BROKEN / "tempo0.mid")
    assert notes.tempo == 120.0
    assert len(notes.pitch) == 16


def test_rmid_is_unwrapped_and_read():
    roll = PianoRoll.from_midi(BROKEN / "rmid.mid")
    assert roll.n_notes == 16  # sixteen repeated quarter notes survive as sixteen notes


def test_drums_are_read_when_asked_for():
    notes = read_notes(BROKEN / "drums_only.mid", include_drums=True)
    assert len(notes.pitch) == 16


def _track(n_notes: int) -> bytes:
    events = b"".join(b"\x00\x90\x3c\x50\x83\x60\x80\x3c\x00" for _ in range(n_notes))
    body = events + b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + body


def test_thousands_of_tracks_are_refused(tmp_path):
    n = MAX_TRACKS + 4000
    path = tmp_path / "tracks.mid"
    path.write_bytes(b"MThd" + struct.pack(">IHHH", 6, 1, n, 480) + _track(1) * n)
    with pytest.raises(MidiError) as caught:
        read_notes(path)
    assert caught.value.reason == f"too many tracks ({n}, the limit is {MAX_TRACKS})"


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.mid"
    with open(path, "wb") as f:
        f.truncate(MAX_FILE_BYTES + (1 << 20))  # sparse: costs no disk
    with pytest.raises(MidiError) as caught:
        read_notes(path)
    assert caught.value.reason == "too large (33 MB, the limit is 32 MB)"


def test_missing_file_and_folder_are_midi_errors(tmp_path):
    with pytest.raises(MidiError, match="cannot read"):
        read_notes(tmp_path / "nothing.mid")
    with pytest.raises(MidiError, match="cannot read"):
        read_notes(tmp_path)


def test_long_header_is_accepted():
    # The standard lets a header be longer than 6 bytes; readers must skip the rest.
    good = (BROKEN / "rmid.mid").read_bytes()[20:]  # the inner Standard MIDI File
    long_header = b"MThd" + struct.pack(">I", 10) + good[8:14] + b"\0\0\0\0" + good[14:]
    notes = read_notes(long_header)
    assert len(notes.pitch) == 16


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2), st.integers(0, 3), st.integers(0, 0xFFFF))
def test_arbitrary_bytes_give_notes_or_a_midi_error(body, fmt, n_tracks, division):
    data = b"MThd" + struct.pack(">IHHH", 6, fmt, n_tracks, division) + b"MTrk" + struct.pack(">I", len(body)) + body
    try:
        notes = read_notes(data)
    except MidiError as error:
        assert error.reason and "\n" not in error.reason
    else:
        assert len(notes.pitch) and notes.start.min() >= 0 and (notes.end > notes.start).all()
        assert np.all((notes.pitch >= 0) & (notes.pitch <= 127))
