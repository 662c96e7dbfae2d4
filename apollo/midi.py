"""MIDI files in and out, as plain note arrays.

Reading checks the file's structure in Python before the native parser (symusic) sees it, so that
the common kinds of broken file (empty, text, truncated, bad header, format 2, SMPTE timing, ticks
per quarter 0, thousands of tracks, absurd lengths) fail with a :class:`~apollo.errors.MidiError`
that names the cause in one line, and lengths are bounded before anything is allocated. The native
parser can still crash or run away on inputs nobody foresaw, so :mod:`apollo.preprocess` also runs
it in worker processes with a memory limit and a timeout. Notes are quantized in beats: a tick
``t`` falls on step ``round(t * steps_per_beat / ticks_per_quarter)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apollo.errors import MidiError
from apollo.io import atomic_path

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_STEPS",
    "MAX_TRACKS",
    "MidiNotes",
    "NoteTrack",
    "check_structure",
    "read_bytes",
    "read_notes",
    "unwrap_rmid",
    "write_notes",
    "write_tracks",
]

MAX_STEPS = 1 << 16  # longest piece read, in steps (4096 bars of 4/4 at sixteenths)
MAX_FILE_BYTES = 32 << 20  # the largest real MIDI files are a few MB; bigger ones are not music
MAX_TRACKS = 1024  # real files have at most a few hundred; thousands mean a broken writer
DRUM_CHANNEL = 9  # General MIDI's percussion channel (channel 10 counting from 1)


@dataclass
class MidiNotes:
    """Notes of one MIDI file on a step grid (end exclusive), with the file's first tempo."""

    pitch: np.ndarray
    start: np.ndarray
    end: np.ndarray
    velocity: np.ndarray
    tempo: float = 120.0


def _error(label: object, reason: str) -> MidiError:
    """A MidiError whose message names the file; ``.reason`` holds the reason alone (for manifests)."""
    error = MidiError(f"{label}: {reason}")
    error.reason = reason  # type: ignore[attr-defined]
    return error


def read_notes(
    source: str | Path | bytes,
    steps_per_beat: int = 4,
    *,
    include_drums: bool = False,
    max_steps: int = MAX_STEPS,
    name: str | None = None,
) -> MidiNotes:
    """All notes of a MIDI file (non-drum tracks merged), quantized to ``steps_per_beat``.

    ``source`` is a path or the file's bytes (``name`` then labels errors). Raises MidiError with a
    one-line reason for anything unusable: unreadable, empty, not MIDI, broken structure, no notes,
    only drums, absurd times, longer than ``max_steps``. A RIFF-wrapped file (RMID) is unwrapped.
    A missing or absurd tempo (0, negative, over 1000 bpm) becomes 120: time is read in beats, so
    the tempo never changes the notes.
    """
    import symusic

    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "<bytes>"
    else:
        label = name or source
        data = read_bytes(source, label)
    if len(data) > MAX_FILE_BYTES:
        raise _error(label, f"too large ({len(data) / 2**20:.0f} MB, the limit is {MAX_FILE_BYTES >> 20} MB)")
    data = unwrap_rmid(data, label)
    data = check_structure(data, label)
    try:
        score = symusic.Score.from_midi(data)
    except Exception as error:  # the parser's own message says what is wrong
        raise _error(label, f"not a readable MIDI file ({_parser_message(error)})") from None

    tpq = score.ticks_per_quarter
    tracks = [t for t in score.tracks if len(t.notes)]
    arrays = [t.notes.numpy() for t in tracks if include_drums or not t.is_drum]
    if not arrays:
        raise _error(label, "only drums (drum tracks are left out)" if tracks else "no notes")
    time = np.concatenate([a["time"] for a in arrays]).astype(np.int64)
    duration = np.concatenate([a["duration"] for a in arrays]).astype(np.int64)
    # Every note needs a note-on and a note-off, at least 3 bytes each even with running status;
    # more notes than that means the parser went wrong, and its output is not to be trusted.
    if len(time) > len(data) // 3:
        raise _error(label, f"implausible note count ({len(time)} notes in {len(data)} bytes)")
    if time.min() < 0:  # tick counts that overflowed the parser's 32-bit times
        raise _error(label, "absurd note times (negative ticks)")
    start = np.rint(time * (steps_per_beat / tpq)).astype(np.int64)
    end = np.rint((time + np.maximum(duration, 0)) * (steps_per_beat / tpq)).astype(np.int64)
    if end.max() > max_steps:
        raise _error(label, f"too long ({int(end.max())} steps, the limit is {max_steps})")
    tempo = 120.0
    if len(score.tempos):
        tempo = float(score.tempos[0].qpm)
        if not 1.0 <= tempo <= 1000.0:  # tempo 0 (infinite qpm) and friends
            tempo = 120.0
    return MidiNotes(
        pitch=np.concatenate([a["pitch"] for a in arrays]).astype(np.int64),
        start=start,
        end=np.maximum(end, start + 1),
        velocity=np.concatenate([a["velocity"] for a in arrays]).astype(np.int64),
        tempo=tempo,
    )


def read_bytes(path: str | Path, label: object = None) -> bytes:
    """A file's bytes, refusing (MidiError) files over ``MAX_FILE_BYTES`` before reading them."""
    label = path if label is None else label
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:  # never load a 10 GB "MIDI" file
                raise _error(label, f"too large ({size / 2**20:.0f} MB, the limit is {MAX_FILE_BYTES >> 20} MB)")
            return f.read()
    except OSError as error:
        raise _error(label, f"cannot read ({error.strerror or error})") from None


def _parser_message(error: Exception) -> str:
    """symusic's message on one line, without its "MiniMidi:" and "iostream error" decoration."""
    message = " ".join(str(error).split())
    message = message.removeprefix("MiniMidi: ").removesuffix(": iostream error")
    message = message.split("!")[0]  # the first sentence; the rest is cursor arithmetic
    return message[:100] or type(error).__name__


def unwrap_rmid(data: bytes, label: object = "<bytes>") -> bytes:
    """The Standard MIDI File inside a RIFF RMID wrapper (``data`` unchanged if not wrapped)."""
    if data[:4] != b"RIFF":
        return data
    if data[8:12] != b"RMID":
        raise _error(label, "a RIFF file that is not RMID (MIDI)")
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], int.from_bytes(data[offset + 4 : offset + 8], "little")
        if chunk == b"data":
            return data[offset + 8 : offset + 8 + size]
        offset += 8 + size + (size & 1)  # RIFF chunks are padded to even sizes
    raise _error(label, "RIFF-wrapped MIDI (RMID) without a MIDI data chunk")


def check_structure(data: bytes, label: object = "<bytes>") -> bytes:
    """Check ``data`` is a well-formed Standard MIDI File at the chunk level; raise MidiError if not.

    This runs before the native parser sees the bytes, so that every chunk length is known to lie
    inside the file. Returns the data, with a longer-than-6-byte header (allowed by the standard,
    refused by symusic) cut to 6 bytes.
    """
    if not data:
        raise _error(label, "empty file")
    if data[:4] != b"MThd":
        head = data[:64]
        if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
            raise _error(label, "not a MIDI file (it is text)")
        raise _error(label, "not a MIDI file (no MThd header)")
    if len(data) < 14:
        raise _error(label, f"truncated ({len(data)} bytes, shorter than a MIDI header)")
    header_length = int.from_bytes(data[4:8], "big")
    fmt, n_tracks, division = (int.from_bytes(data[i : i + 2], "big") for i in (8, 10, 12))
    if header_length < 6 or 8 + header_length > len(data):
        raise _error(label, f"bad header length {header_length}")
    if header_length > 6:
        data = data[:4] + (6).to_bytes(4, "big") + data[8:14] + data[8 + header_length :]
        header_length = 6
    if fmt == 2:
        raise _error(label, "MIDI format 2 (independent sequences) is not supported")
    if fmt > 2:
        raise _error(label, f"unknown MIDI format {fmt}")
    if division & 0x8000:
        raise _error(label, "SMPTE time division is not supported")
    if division == 0:
        raise _error(label, "ticks per quarter note is 0")
    if n_tracks == 0:
        raise _error(label, "no tracks")
    offset, found = 8 + header_length, 0
    while offset + 8 <= len(data) and found < n_tracks:
        length = int.from_bytes(data[offset + 4 : offset + 8], "big")
        if offset + 8 + length > len(data):
            raise _error(label, f"truncated (track {found + 1} runs past the end of the file)")
        found += data[offset : offset + 4] == b"MTrk"
        offset += 8 + length
    if found < n_tracks:
        raise _error(label, f"truncated (header promises {n_tracks} tracks, found {found})")
    if n_tracks > MAX_TRACKS:
        raise _error(label, f"too many tracks ({n_tracks}, the limit is {MAX_TRACKS})")
    return data


def write_notes(
    path: str | Path | None,
    pitch: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    *,
    steps_per_beat: int = 4,
    tempo: float = 120.0,
    program: int = 0,
    velocity: int | np.ndarray = 80,
    is_drum: bool = False,
    n_steps: int | None = None,
) -> bytes:
    """Notes on a step grid as the bytes of a one-track Standard MIDI File (saved to ``path`` if given).

    The file carries the tempo, a 4/4 time signature and the General MIDI ``program``, and lasts
    ``n_steps`` steps (default: to the end of the last note), so trailing rests are kept. It is
    written to a temporary file and renamed, so an existing file is never left half-written.
    """
    if not 0 <= program <= 127:
        raise ValueError(f"program must lie in 0..127, got {program}")
    track = NoteTrack(pitch, start, end, program=None if is_drum else program,
                      channel=DRUM_CHANNEL if is_drum else 0, velocity=velocity)
    return write_tracks(path, [track], steps_per_beat=steps_per_beat, tempo=tempo, n_steps=n_steps, midi_format=0)


@dataclass
class NoteTrack:
    """One track of a MIDI file to write: notes on a step grid (end exclusive), on one channel.

    ``program`` None sends no program change (the drum channel, 9, has none); ``name`` becomes the
    track's name event, which notation programs and DAWs show as the part's name.
    """

    pitch: np.ndarray
    start: np.ndarray
    end: np.ndarray
    program: int | None = 0
    channel: int = 0
    name: str | None = None
    velocity: int | np.ndarray = 80


def write_tracks(
    path: str | Path | None,
    tracks: Sequence[NoteTrack],
    *,
    steps_per_beat: int = 4,
    tempo: float = 120.0,
    n_steps: int | None = None,
    midi_format: int = 1,
) -> bytes:
    """Tracks of notes as the bytes of a Standard MIDI File (saved atomically to ``path`` if given).

    The first track carries the tempo and a 4/4 time signature (format 1 allows notes beside
    them, so a one-part file stays one track). Every track lasts ``n_steps`` steps (default: to
    the end of the last note of any track). ``midi_format`` 0 allows exactly one track.
    The bytes are encoded here directly: per-message objects made this 20x slower.
    """
    if midi_format not in (0, 1):
        raise ValueError(f"midi_format must be 0 or 1, got {midi_format}")
    if not tracks or (midi_format == 0 and len(tracks) != 1):
        raise ValueError(f"a format {midi_format} file needs {'exactly one' if midi_format == 0 else 'at least one'} track")
    tpq = 480 if 480 % steps_per_beat == 0 else 120 * steps_per_beat
    ticks_per_step = tpq // steps_per_beat
    last_step = max((int(np.max(t.end, initial=0)) for t in tracks), default=0)
    last_tick = max(last_step, n_steps or 0) * ticks_per_step  # every track ends together

    data = bytearray(b"MThd" + (6).to_bytes(4, "big") + midi_format.to_bytes(2, "big")
                     + len(tracks).to_bytes(2, "big") + tpq.to_bytes(2, "big"))
    for i, track in enumerate(tracks):
        body = bytearray()
        if i == 0:
            body += b"\x00\xff\x51\x03" + round(60_000_000 / tempo).to_bytes(3, "big")
            body += b"\x00\xff\x58\x04\x04\x02\x18\x08"  # 4/4
        body += _track_events(track, ticks_per_step, last_tick)
        data += b"MTrk" + len(body).to_bytes(4, "big") + body
    data = bytes(data)
    if path is not None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return data


def _track_events(track: NoteTrack, ticks_per_step: int, last_tick: int) -> bytes:
    """A track's events after the tempo map: its name, program, notes and end of track."""
    if not 0 <= track.channel <= 15:
        raise ValueError(f"channel must lie in 0..15, got {track.channel}")
    if track.program is not None and not 0 <= track.program <= 127:
        raise ValueError(f"program must lie in 0..127, got {track.program}")
    pitch = np.asarray(track.pitch, dtype=np.int64)
    start = np.asarray(track.start, dtype=np.int64) * ticks_per_step
    end = np.asarray(track.end, dtype=np.int64) * ticks_per_step
    velocity = np.clip(np.broadcast_to(np.asarray(track.velocity, dtype=np.int64), pitch.shape), 1, 127)
    if len(pitch) and not ((pitch >= 0) & (pitch <= 127)).all():
        raise ValueError("pitches must lie in 0..127")

    # Note-offs sort before note-ons at the same tick, so a repeated note is released, then struck.
    tick = np.concatenate([end, start])
    is_on = np.concatenate([np.zeros(len(end), bool), np.ones(len(start), bool)])
    status = np.where(is_on, 0x90, 0x80) | track.channel
    data2 = np.concatenate([np.zeros(len(end), np.int64), velocity])
    order = np.lexsort((is_on, tick))

    body = bytearray()
    if track.name:
        name = track.name.encode("utf-8")
        body += b"\x00\xff\x03" + _varlen(len(name)) + name
    if track.program is not None:
        body += bytes((0, 0xC0 | track.channel, track.program))
    now = 0
    for t, st, note, value in zip(tick[order].tolist(), status[order].tolist(),
                                  np.concatenate([pitch, pitch])[order].tolist(), data2[order].tolist()):
        body += _varlen(t - now) + bytes((st, note, value))
        now = t
    body += _varlen(max(last_tick, now) - now) + b"\xff\x2f\x00"
    return bytes(body)


def _varlen(value: int) -> bytes:
    """A MIDI variable-length quantity: 7 bits a byte, high bit set on all but the last."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))
