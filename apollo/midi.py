"""MIDI files in and out, as plain note arrays.

Reading checks the file's structure before a native parser sees it, so that the common kinds of
broken file (truncated, bad header, SMPTE timing, ticks per quarter 0, absurd lengths) fail with a
:class:`~apollo.errors.MidiError` that names the cause. Notes are quantized in beats: a tick ``t``
falls on step ``round(t * steps_per_beat / ticks_per_quarter)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apollo.errors import MidiError
from apollo.io import atomic_path

__all__ = ["MidiNotes", "read_notes", "write_notes", "MAX_STEPS"]

MAX_STEPS = 1 << 16  # longest piece read, in steps (4096 bars of 4/4 at sixteenths)


@dataclass
class MidiNotes:
    """Notes of one MIDI file on a step grid (end exclusive), with the file's first tempo."""

    pitch: np.ndarray
    start: np.ndarray
    end: np.ndarray
    velocity: np.ndarray
    tempo: float = 120.0


def read_notes(
    path: str | Path,
    steps_per_beat: int = 4,
    *,
    include_drums: bool = False,
    max_steps: int = MAX_STEPS,
) -> MidiNotes:
    """All notes of a MIDI file (non-drum tracks merged), quantized to ``steps_per_beat``."""
    import symusic

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MidiError(f"{path}: cannot read ({error.strerror or error})") from None
    check_structure(data, path)
    try:
        score = symusic.Score.from_midi(data)
    except Exception as error:  # the parser's own message says what is wrong
        raise MidiError(f"{path}: not a readable MIDI file ({error})") from None

    tpq = score.ticks_per_quarter
    arrays = [t.notes.numpy() for t in score.tracks if include_drums or not t.is_drum]
    arrays = [a for a in arrays if len(a["pitch"])]
    if not arrays:
        raise MidiError(f"{path}: no notes")
    time = np.concatenate([a["time"] for a in arrays]).astype(np.int64)
    duration = np.concatenate([a["duration"] for a in arrays]).astype(np.int64)
    start = np.rint(time * steps_per_beat / tpq).astype(np.int64)
    end = np.rint((time + np.maximum(duration, 0)) * steps_per_beat / tpq).astype(np.int64)
    if start.min() < 0:
        raise MidiError(f"{path}: negative note times")
    if end.max() > max_steps:
        raise MidiError(f"{path}: too long ({int(end.max())} steps, the limit is {max_steps})")
    tempo = 120.0
    if len(score.tempos):
        tempo = float(score.tempos[0].qpm)
        if not 1.0 <= tempo <= 1000.0:
            tempo = 120.0
    return MidiNotes(
        pitch=np.concatenate([a["pitch"] for a in arrays]).astype(np.int64),
        start=start,
        end=np.maximum(end, start + 1),
        velocity=np.concatenate([a["velocity"] for a in arrays]).astype(np.int64),
        tempo=tempo,
    )


def check_structure(data: bytes, path: Path) -> None:
    """Raise MidiError unless ``data`` is a well-formed Standard MIDI File at the chunk level."""
    if data[:4] == b"RIFF" and data[8:12] == b"RMID":
        raise MidiError(f"{path}: RIFF-wrapped MIDI (RMID) is not supported")
    if len(data) < 14 or data[:4] != b"MThd":
        raise MidiError(f"{path}: not a MIDI file (no MThd header)")
    header_length = int.from_bytes(data[4:8], "big")
    fmt, n_tracks, division = (int.from_bytes(data[i : i + 2], "big") for i in (8, 10, 12))
    if header_length < 6:
        raise MidiError(f"{path}: bad header length {header_length}")
    if fmt > 2:
        raise MidiError(f"{path}: unknown MIDI format {fmt}")
    if division & 0x8000:
        raise MidiError(f"{path}: SMPTE time division is not supported")
    if division == 0:
        raise MidiError(f"{path}: ticks per quarter note is 0")
    offset, found = 8 + header_length, 0
    while offset + 8 <= len(data) and found < n_tracks:
        length = int.from_bytes(data[offset + 4 : offset + 8], "big")
        if offset + 8 + length > len(data):
            raise MidiError(f"{path}: truncated (track {found + 1} runs past the end of the file)")
        found += data[offset : offset + 4] == b"MTrk"
        offset += 8 + length
    if found < n_tracks:
        raise MidiError(f"{path}: truncated (header promises {n_tracks} tracks, found {found})")


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
):
    """Notes on a step grid as a one-track ``mido.MidiFile`` (saved to ``path`` if given).

    The file carries the tempo and the General MIDI ``program``. It is written to a temporary
    file and renamed, so an existing file is never left half-written.
    """
    import mido

    if not 0 <= program <= 127:
        raise ValueError(f"program must lie in 0..127, got {program}")
    tpq = 480 if 480 % steps_per_beat == 0 else 120 * steps_per_beat
    ticks_per_step = tpq // steps_per_beat
    channel = 9 if is_drum else 0
    velocity = np.broadcast_to(np.asarray(velocity, dtype=np.int64), np.shape(pitch))

    # (tick, order, message): note-offs sort before note-ons at the same tick.
    events = []
    for p, s, e, v in zip(np.asarray(pitch), np.asarray(start), np.asarray(end), velocity):
        v = int(np.clip(v, 1, 127))
        events.append((int(s) * ticks_per_step, 1, mido.Message("note_on", note=int(p), velocity=v, channel=channel)))
        events.append((int(e) * ticks_per_step, 0, mido.Message("note_off", note=int(p), velocity=0, channel=channel)))
    events.sort(key=lambda event: (event[0], event[1]))

    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo), time=0))
    track.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    if not is_drum:
        track.append(mido.Message("program_change", program=program, channel=channel, time=0))
    now = 0
    for tick, _, message in events:
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    midi = mido.MidiFile(type=0, ticks_per_beat=tpq, tracks=[track])
    if path is not None:
        with atomic_path(path) as tmp:
            midi.save(tmp)
    return midi
