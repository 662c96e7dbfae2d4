"""The piano roll: Apollo's one representation of music.

A :class:`PianoRoll` is a grid of cells, one row per pitch and one column per time step, that knows
where it sits in MIDI pitch and musical time (its :class:`Grid`) and its tempo. Each cell holds one of

- ``SILENT`` (0): no note sounds,
- ``HELD`` (1): a note sounds, continued from the step before,
- ``ONSET`` (2): a note starts here.

Keeping onsets in the cells means repeated notes survive: two quarter notes on the same pitch are two
notes, not one half note. A model sees the roll through an *encoding*, a stack of binary planes:

- ``"onset"`` (default): two planes, sounding and onset. Keeps every repeated note.
- ``"rest"``: one plane, with the step just before each repeated onset cleared (as MuseGAN does), so
  the repetition survives as a one-step gap.
- ``"plain"``: one plane, sounding only (ApolloGAN). Repeated notes merge into one long note.

Time is counted in steps of ``1 / steps_per_beat`` beats, so tempo changes never distort rhythm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["Grid", "PianoRoll", "ENCODINGS", "SILENT", "HELD", "ONSET", "fold_pitches"]

SILENT, HELD, ONSET = 0, 1, 2
ENCODINGS: dict[str, int] = {"onset": 2, "rest": 1, "plain": 1}  # name -> number of planes
Encoding = Literal["onset", "rest", "plain"]


@dataclass(frozen=True)
class Grid:
    """Where a roll's rows and columns sit: MIDI pitch of row 0, number of rows, steps per beat."""

    lowest_pitch: int = 30
    n_pitches: int = 64
    steps_per_beat: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.lowest_pitch <= 127 - 11:
            raise ValueError(f"lowest_pitch must lie in 0..116, got {self.lowest_pitch}")
        if not 12 <= self.n_pitches <= 128 - self.lowest_pitch:
            raise ValueError(
                f"n_pitches must be at least 12 (one octave, so folding works) and fit below 128, "
                f"got {self.n_pitches} from pitch {self.lowest_pitch}"
            )
        if self.steps_per_beat < 1:
            raise ValueError(f"steps_per_beat must be positive, got {self.steps_per_beat}")

    @property
    def highest_pitch(self) -> int:
        return self.lowest_pitch + self.n_pitches - 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fold_pitches(pitch: np.ndarray, grid: Grid, out_of_range: str = "fold") -> tuple[np.ndarray, np.ndarray]:
    """Bring MIDI pitches into the grid's window.

    ``"fold"`` moves a pitch by whole octaves until it fits (its pitch class is kept);
    ``"drop"`` discards it. Returns the new pitches and a mask of the ones kept.
    """
    pitch = np.asarray(pitch, dtype=np.int64)
    low, high = grid.lowest_pitch, grid.highest_pitch
    if out_of_range == "drop":
        keep = (pitch >= low) & (pitch <= high)
        return pitch[keep], keep
    if out_of_range != "fold":
        raise ValueError(f"out_of_range must be 'fold' or 'drop', got {out_of_range!r}")
    below = pitch < low
    above = pitch > high
    pitch = pitch.copy()
    pitch[below] += 12 * ((low - pitch[below] + 11) // 12)
    pitch[above] -= 12 * ((pitch[above] - high + 11) // 12)
    return pitch, np.ones(len(pitch), dtype=bool)


def drop_short_runs(mask: np.ndarray, min_length: int) -> np.ndarray:
    """``mask`` [..., steps] without its runs of set cells shorter than ``min_length``."""
    if mask.shape[-1] < min_length:
        return np.zeros_like(mask)
    # A cell is kept when some window of min_length set cells covers it.
    full = np.lib.stride_tricks.sliding_window_view(mask, min_length, axis=-1).all(axis=-1)
    pad = [(0, 0)] * (mask.ndim - 1) + [(min_length - 1, min_length - 1)]
    covered = np.lib.stride_tricks.sliding_window_view(np.pad(full, pad), min_length, axis=-1).any(axis=-1)
    return mask & covered


@dataclass
class PianoRoll:
    """Cells of shape ``[n_pitches, n_steps]`` (uint8: SILENT, HELD or ONSET) on a grid, at a tempo."""

    cells: np.ndarray
    grid: Grid = Grid()
    tempo: float = 120.0  # beats per minute

    def __post_init__(self) -> None:
        cells = np.asarray(self.cells)
        if cells.ndim != 2:
            raise ValueError(f"cells must have two dimensions [pitch, step], got shape {cells.shape}")
        if cells.shape[0] != self.grid.n_pitches:
            raise ValueError(f"cells has {cells.shape[0]} pitch rows but the grid has {self.grid.n_pitches}")
        if cells.size and cells.max() > ONSET:
            raise ValueError("cells must hold only SILENT (0), HELD (1) or ONSET (2)")
        if not self.tempo > 0:
            raise ValueError(f"tempo must be positive, got {self.tempo}")
        self.cells = cells.astype(np.uint8, copy=False)

    def __repr__(self) -> str:
        return (
            f"PianoRoll(cells=<{self.n_pitches}x{self.n_steps} {self.cells.dtype}>, notes={self.n_notes}, "
            f"pitches={self.grid.lowest_pitch}..{self.grid.highest_pitch}, "
            f"steps_per_beat={self.grid.steps_per_beat}, tempo={self.tempo:g})"
        )

    # -- shape -------------------------------------------------------------------------------

    @property
    def n_pitches(self) -> int:
        return self.cells.shape[0]

    @property
    def n_steps(self) -> int:
        return self.cells.shape[1]

    @property
    def n_notes(self) -> int:
        return len(self.notes()[0])

    @property
    def seconds(self) -> float:
        return self.n_steps / self.grid.steps_per_beat * 60.0 / self.tempo

    def slice(self, start: int, stop: int) -> PianoRoll:
        """Steps ``start:stop``; a note cut at ``start`` begins there (its cell becomes an onset)."""
        cells = self.cells[:, start:stop].copy()
        if cells.shape[1]:
            cells[:, 0][cells[:, 0] == HELD] = ONSET
        return PianoRoll(cells, self.grid, self.tempo)

    def pad(self, n_steps: int) -> PianoRoll:
        """Silence appended up to ``n_steps`` (no change if already that long)."""
        extra = max(0, n_steps - self.n_steps)
        return PianoRoll(np.pad(self.cells, ((0, 0), (0, extra))), self.grid, self.tempo)

    def transpose(self, semitones: int, out_of_range: str = "fold") -> PianoRoll:
        """The same notes ``semitones`` higher (lower if negative); notes pushed off the grid are
        folded back by octaves, or dropped with ``out_of_range="drop"``."""
        pitch, start, end = self.notes()
        return PianoRoll.from_notes(pitch + semitones, start, end, self.grid, self.tempo, self.n_steps, out_of_range)

    @staticmethod
    def concatenate(rolls: list[PianoRoll]) -> PianoRoll:
        """Rolls one after the other in time (grid and tempo of the first)."""
        if not rolls:
            raise ValueError("concatenate needs at least one roll")
        return PianoRoll(np.concatenate([r.cells for r in rolls], axis=1), rolls[0].grid, rolls[0].tempo)

    # -- notes ---------------------------------------------------------------------------------

    @classmethod
    def from_notes(
        cls,
        pitch: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        grid: Grid = Grid(),
        tempo: float = 120.0,
        n_steps: int | None = None,
        out_of_range: str = "fold",
    ) -> PianoRoll:
        """A roll from notes given as MIDI pitches and start/end steps (end exclusive).

        Notes shorter than a step last one step. Pitches outside the grid are folded by octaves
        (or dropped with ``out_of_range="drop"``). ``n_steps`` defaults to the end of the last note.
        """
        pitch, keep = fold_pitches(pitch, grid, out_of_range)
        start = np.asarray(start, dtype=np.int64)[keep]
        end = np.asarray(end, dtype=np.int64)[keep]
        if len(start) and start.min() < 0:
            raise ValueError("note starts must not be negative")
        end = np.maximum(end, start + 1)
        if n_steps is None:
            n_steps = int(end.max()) if len(end) else 0
        inside = start < n_steps
        row, start, end = pitch[inside] - grid.lowest_pitch, start[inside], np.minimum(end[inside], n_steps)

        # Sounding cells from a running count of notes on each pitch; onsets written on top.
        # (bincount over flat indices: several times faster than np.add.at for the same sums)
        width = n_steps + 1
        size = grid.n_pitches * width
        count = np.bincount(row * width + start, minlength=size) - np.bincount(row * width + end, minlength=size)
        count = count.reshape(grid.n_pitches, width)
        cells = (np.cumsum(count, axis=1)[:, :n_steps] > 0).astype(np.uint8)
        cells[row, start] = ONSET
        return cls(cells, grid, tempo)

    def notes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The notes as (MIDI pitch, start step, end step) arrays, sorted by start then pitch.

        A note begins at an onset cell or where sound begins after silence, and lasts while the
        following cells are held.
        """
        cells = self.cells
        sounding = cells > SILENT
        before = np.pad(sounding, ((0, 0), (1, 0)))[:, :-1]
        begins = (cells == ONSET) | (sounding & ~before)
        after = np.pad(cells, ((0, 0), (0, 1)))[:, 1:]
        finishes = sounding & (after != HELD)
        row, start = np.nonzero(begins)
        _, end = np.nonzero(finishes)
        # Row-major nonzero pairs each begin with its own finish: both are ordered by (row, step).
        order = np.lexsort((row, start))
        return row[order] + self.grid.lowest_pitch, start[order], end[order] + 1

    # -- encodings -----------------------------------------------------------------------------

    def encode(self, encoding: Encoding = "onset") -> np.ndarray:
        """Binary planes ``[channels, n_pitches, n_steps]`` (bool) for a model; see the module doc."""
        sounding = self.cells > SILENT
        if encoding == "onset":
            return np.stack([sounding, self.cells == ONSET])
        if encoding == "plain":
            return sounding[None]
        if encoding == "rest":
            next_is_onset = np.pad(self.cells == ONSET, ((0, 0), (0, 1)))[:, 1:]
            return (sounding & ~next_is_onset)[None]
        raise ValueError(f"unknown encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")

    @classmethod
    def decode(
        cls,
        planes: np.ndarray,
        encoding: Encoding = "onset",
        grid: Grid = Grid(),
        tempo: float = 120.0,
        threshold: float = 0.5,
        min_length: int = 1,
        onset_threshold: float | None = None,
        fill: float | None = None,
    ) -> PianoRoll:
        """A roll from planes as :meth:`encode` makes them, or from a model's probabilities.

        Values above ``threshold`` count as set. With the onset encoding, an onset only counts
        where the sounding plane is set too, and the onset plane is read at ``onset_threshold``
        (default: ``threshold``). A generator unsure whether to strike a held note again leaves
        that onset cell near 0.5, and each such cell cuts one note in two; a higher onset
        threshold keeps the note whole. A sounding run that
        follows silence always starts a note. A pitch that sounds for fewer than ``min_length``
        consecutive steps stays silent: with 2, the single cells a generator leaves just above the
        threshold (docs/results.md) are dropped, while repeated notes within a longer sounding run
        are kept. The default, 1, keeps everything, so ``decode(roll.encode())`` is ``roll``.
        With ``fill``, a step where no pitch passes ``threshold`` sounds its most probable pitch if
        that passes ``fill``: a generator unsure *which* note a step holds splits the step's
        probability and leaves every pitch under the threshold, while a rest it means has every
        cell near 0. Filled cells then meet ``min_length`` and the onset rule like any other; a
        ``fill`` at or above ``threshold`` fills nothing.
        """
        planes = np.asarray(planes)
        if planes.ndim == 2:
            planes = planes[None]
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
        if planes.shape[0] != ENCODINGS[encoding]:
            raise ValueError(f"encoding {encoding!r} has {ENCODINGS[encoding]} plane(s), got {planes.shape[0]}")
        if min_length < 1:
            raise ValueError(f"min_length must be at least 1, got {min_length}")
        if fill is not None and not 0 < fill < 1:
            raise ValueError(f"fill must lie strictly between 0 and 1, got {fill}")
        sounding = planes[0] > threshold
        if fill is not None:
            silent = ~sounding.any(axis=0) & (planes[0].max(axis=0) > fill)
            sounding[planes[0].argmax(axis=0)[silent], np.flatnonzero(silent)] = True
        if min_length > 1:
            sounding = drop_short_runs(sounding, min_length)
        cells = sounding.astype(np.uint8)
        if encoding == "onset":
            onset_threshold = threshold if onset_threshold is None else onset_threshold
            cells[sounding & (planes[1] > onset_threshold)] = ONSET
        # Elsewhere (and for onset too) a sounding run that follows silence starts a note.
        before = np.pad(sounding, ((0, 0), (1, 0)))[:, :-1]
        cells[sounding & ~before] = ONSET
        return cls(cells, grid, tempo)

    # -- MIDI ----------------------------------------------------------------------------------

    @classmethod
    def from_midi(
        cls,
        path: str | Path,
        grid: Grid = Grid(),
        *,
        include_drums: bool = False,
        out_of_range: str = "fold",
    ) -> PianoRoll:
        """Read a MIDI file: all non-drum tracks merged, quantized in beats. Raises MidiError."""
        from apollo.midi import read_notes

        notes = read_notes(path, grid.steps_per_beat, include_drums=include_drums)
        return cls.from_notes(
            notes.pitch, notes.start, notes.end, grid, notes.tempo, out_of_range=out_of_range
        )

    def to_midi(
        self,
        path: str | Path | None = None,
        *,
        program: int = 0,
        velocity: int = 80,
        is_drum: bool = False,
    ) -> bytes:
        """The roll as a one-track MIDI file's bytes (written to ``path`` if given).

        The file lasts all ``n_steps`` steps, trailing rests included, and carries the tempo and
        the General MIDI ``program``.
        """
        from apollo.midi import write_notes

        pitch, start, end = self.notes()
        return write_notes(
            path,
            pitch,
            start,
            end,
            steps_per_beat=self.grid.steps_per_beat,
            tempo=self.tempo,
            program=program,
            velocity=velocity,
            is_drum=is_drum,
            n_steps=self.n_steps,
        )
