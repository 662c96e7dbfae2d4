"""Starting from your own music: continue it, vary it, fill in bars, harmonize a melody.

Each task says which cells of a piano roll are *given* and leaves the rest to the generator, which
fills them through latent inversion (:mod:`apollo.inversion`): its noise is searched until its
output matches the given cells, and the free cells are read from that output. Given notes always
come back exactly (same pitch, start and end on the step grid), and the music joins them without a
seam: a made note never runs on from a given one.

=========  ==========================================  =============================================
task       given                                       made
=========  ==========================================  =============================================
continue   the whole piece                             ``bars`` more bars after its last note
infill     everything outside bars ``first..last``     those bars (notes crossing in are cut there)
harmonize  the melody (its top line) and the silence   the voices below the melody
           above it
vary       all but a share ``amount`` of the bars,     those bars: 0.1 changes a bar or two, 1 writes
           chosen at random                            a new piece
=========  ==========================================  =============================================

A piece is read with the corpus reader (:func:`read_piece`): quantized to the model's grid, moved
by whole octaves into the model's 64-pitch window, its tempo kept. Results are moved back, so the
output sounds where the input did. :func:`compose_file` does a task from file to file, written for
an instrument or an ensemble as ``apollo generate`` writes (:func:`apollo.generate.write_piece`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from apollo.decoding import Decoding
from apollo.errors import UsageError
from apollo.generate import (
    BEATS_PER_BAR,
    GeneratedPiece,
    ModelChoice,
    ModelSpec,
    find_model,
    hold_last_chord,
    load_model,
    numbered_paths,
    write_piece,
)
from apollo.inversion import Search, complete
from apollo.model import Generator
from apollo.parts import check_choice
from apollo.roll import SILENT, Grid, PianoRoll

__all__ = ["TASKS", "InputPiece", "Composer", "top_line", "read_piece", "parse_bars", "compose_file"]

TASKS = ("continue", "infill", "harmonize", "vary")
# Made cells are decoded this much above the model's own threshold: a search that matches given
# notes raises the probabilities around them, and at the model's threshold the made bars held 20-23
# notes a bar where Bach's hold 16 (chosen on the validation split: docs/compose.md).
THRESHOLD_RAISE = 0.15


# -- the user's music ----------------------------------------------------------------------------


@dataclass
class InputPiece:
    """A user's MIDI file on the model's grid, and what reading it changed."""

    roll: PianoRoll  # on the model's grid, moved by ``shift``
    shift: int = 0  # semitones the whole piece was moved to fit the model's pitches (a multiple of 12)
    folded: int = 0  # notes still outside after that, moved into the window one by one
    notes: list[str] = field(default_factory=list)  # what the reader did, for the user

    @property
    def n_bars(self) -> int:
        return math.ceil(self.roll.n_steps / (BEATS_PER_BAR * self.roll.grid.steps_per_beat))


def read_piece(path: str | Path, grid: Grid) -> InputPiece:
    """A MIDI file as the corpus reader reads it (all non-drum tracks merged, quantized in beats),
    moved by the whole octaves that bring most of its notes into ``grid``. Raises MidiError."""
    from apollo.midi import read_notes

    notes = read_notes(path, grid.steps_per_beat)
    shift = _best_octave_shift(notes.pitch, grid)
    pitch = notes.pitch + shift
    folded = int(((pitch < grid.lowest_pitch) | (pitch > grid.highest_pitch)).sum())
    roll = PianoRoll.from_notes(pitch, notes.start, notes.end, grid, notes.tempo)
    said = []
    if shift:
        said.append(f"{path}: moved {shift:+d} semitones to fit the model's pitches {grid.lowest_pitch}..{grid.highest_pitch} (moved back in the output)")
    if folded:
        said.append(f"{path}: {folded} notes lie outside the model's pitch window even so; they were moved by octaves into it")
    return InputPiece(roll, shift, folded, said)


def _best_octave_shift(pitch: np.ndarray, grid: Grid) -> int:
    """The multiple of 12 that puts the most notes inside the grid (the smallest such move)."""
    moves = sorted(range(-60, 61, 12), key=abs)
    inside = [int(((pitch + m >= grid.lowest_pitch) & (pitch + m <= grid.highest_pitch)).sum()) for m in moves]
    return moves[int(np.argmax(inside))]


def top_line(roll: PianoRoll) -> PianoRoll:
    """The highest note sounding at each step: a melody from a part that has chords. A note that
    stops being the highest is cut there."""
    sounding = roll.cells > SILENT
    top = roll.n_pitches - 1 - np.argmax(sounding[::-1], axis=0)
    steps = np.flatnonzero(sounding.any(axis=0))
    keep = np.zeros_like(sounding)
    keep[top[steps], steps] = True
    return replace(roll, cells=np.where(keep, roll.cells, SILENT).astype(np.uint8))


def parse_bars(text: str) -> tuple[int, int]:
    """``"5-8"`` -> (5, 8), ``"5"`` -> (5, 5): bars counted from 1, both ends included. Raises UsageError."""
    parts = text.replace(" ", "").split("-")
    try:
        first, last = (int(parts[0]), int(parts[-1])) if 1 <= len(parts) <= 2 else (0, 0)
    except ValueError:
        first = last = 0
    if not 1 <= first <= last:
        raise UsageError(f"--bars {text!r}: give bars as FIRST-LAST counted from 1, such as 5-8")
    return first, last


# -- the tasks -----------------------------------------------------------------------------------


@dataclass
class Composer:
    """A generator ready to complete pieces: the model, how to decode it and how hard to search."""

    generator: Generator
    spec: ModelSpec
    model: ModelChoice | None = None
    decoding: Decoding | None = None  # None: the model's own, its threshold raised by THRESHOLD_RAISE
    search: Search = field(default_factory=Search)

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, run: str | Path | None = None,
             runs_root: str | Path = "runs", **options) -> Composer:
        """The model chosen as ``apollo generate`` chooses it (:func:`apollo.generate.find_model`)."""
        choice = find_model(checkpoint, run, runs_root)
        generator, spec = load_model(choice, dcgan_only="apollo continue, vary, infill and harmonize")
        return cls(generator, spec, choice, **options)

    @property
    def made_decoding(self) -> Decoding:
        """The model's decoding with its threshold raised by THRESHOLD_RAISE (for made cells)."""
        own = self.spec.decoding
        return replace(own, threshold=min(own.threshold + THRESHOLD_RAISE, 0.95))

    @property
    def bar_steps(self) -> int:
        return self.spec.steps_per_bar

    def complete(self, roll: PianoRoll, given: np.ndarray, seed: int) -> PianoRoll:
        """``roll`` with its cells outside ``given`` ([pitches, steps]) made by the generator."""
        return complete(self.generator, roll, given, encoding=self.spec.encoding,
                        decoding=self.decoding or self.made_decoding, search=self.search,
                        seed=seed, bar_steps=self.bar_steps)

    def continue_(self, roll: PianoRoll, bars: int = 8, *, seed: int = 0, ending: str = "hold") -> PianoRoll:
        """``roll`` and ``bars`` more bars after it (from the bar line after its last note; the rest
        of its last bar is made too). ``ending="hold"`` ends on the chord of the last bar's first beat."""
        if bars < 1:
            raise UsageError(f"--bars must be at least 1, got {bars}")
        end = math.ceil(roll.n_steps / self.bar_steps) * self.bar_steps
        out = roll.pad(end + bars * self.bar_steps)
        given = np.zeros(out.cells.shape, dtype=bool)
        given[:, : roll.n_steps] = True
        made = self.complete(out, given, seed)
        return hold_last_chord(made, self.bar_steps) if ending == "hold" else made

    def infill(self, roll: PianoRoll, first: int, last: int, *, seed: int = 0) -> PianoRoll:
        """``roll`` with bars ``first..last`` (from 1, inclusive) made anew; everything else kept."""
        n_bars = math.ceil(roll.n_steps / self.bar_steps)
        if not 1 <= first <= last <= n_bars:
            raise UsageError(f"bars {first}-{last} lie outside the piece (it has {n_bars} bars)")
        given = np.ones(roll.cells.shape, dtype=bool)
        given[:, (first - 1) * self.bar_steps : last * self.bar_steps] = False
        return self.complete(roll, given, seed)

    def harmonize(self, melody: PianoRoll, *, seed: int = 0) -> PianoRoll:
        """Voices below ``melody`` (its top line), which stays the top voice note for note. Where the
        melody rests, the voices below it may go on."""
        melody = top_line(melody)
        end = melody.n_steps
        melody = melody.pad(math.ceil(end / self.bar_steps) * self.bar_steps)
        given = _at_or_above_melody(melody)
        given[:, end:] = True  # the piece ends with its melody: the rest of the last bar stays silent
        return self.complete(melody, given, seed)

    def vary(self, roll: PianoRoll, amount: float = 0.25, *, seed: int = 0) -> PianoRoll:
        """``roll`` with a share ``amount`` (0..1] of its bars, drawn with ``seed``, made anew."""
        if not 0 < amount <= 1:
            raise UsageError(f"--amount must lie in (0, 1], got {amount}")
        n_bars = math.ceil(roll.n_steps / self.bar_steps)
        rng = np.random.default_rng(seed)
        chosen = rng.choice(n_bars, size=max(1, round(amount * n_bars)), replace=False)
        roll = roll.pad(n_bars * self.bar_steps)
        given = np.ones(roll.cells.shape, dtype=bool)
        for bar in chosen:
            given[:, bar * self.bar_steps : (bar + 1) * self.bar_steps] = False
        return self.complete(roll, given, seed)


def _at_or_above_melody(melody: PianoRoll) -> np.ndarray:
    """Cells the melody decides: its own notes and the silence above them. Where it rests, the
    pitch it last sounded (or, before it starts, the first it sounds) is its height."""
    sounding = melody.cells > SILENT
    rows = np.arange(melody.n_pitches)[:, None]
    height = np.where(sounding.any(axis=0), melody.n_pitches - 1 - np.argmax(sounding[::-1], axis=0), -1)
    heard = np.flatnonzero(height >= 0)
    if len(heard):  # carry each height forward over rests, and the first one back to the start
        filled = np.maximum.accumulate(np.where(height >= 0, np.arange(len(height)), -1))
        height = np.where(filled >= 0, height[np.maximum(filled, 0)], height[heard[0]])
    else:
        height = np.full_like(height, melody.n_pitches)
    return rows >= height[None, :]


# -- from file to file ---------------------------------------------------------------------------


@dataclass
class ComposeResult:
    """What :func:`compose_file` did: the model, the input as read, the seed and the pieces written."""

    model: ModelChoice
    task: str
    seed: int
    input: InputPiece
    pieces: list[GeneratedPiece] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was done to the input, for the user


def compose_file(
    task: str,
    source: str | Path,
    out: str | Path,
    *,
    bars: int | str | None = None,
    amount: float = 0.25,
    n: int = 1,
    ending: str = "hold",
    checkpoint: str | Path | None = None,
    run: str | Path | None = None,
    seed: int = 0,
    instrument: int | str | None = None,
    ensemble: str | None = None,
    line: str | None = None,
    wav: bool = False,
    png: bool = False,
    soundfont: str | Path | None = None,
    runs_root: str | Path = "runs",
    search: Search | None = None,
) -> ComposeResult:
    """Do ``task`` (one of :data:`TASKS`) on the MIDI file ``source`` and write the result to ``out``.

    ``bars`` is the number of bars to add for ``continue`` (default 8) and the bars to make, as
    ``"5-8"``, for ``infill``; ``amount`` and ``n`` are for ``vary`` (``n`` variations numbered
    beside ``out``, variation ``i`` from seed ``seed + i``). The rest is as for
    :func:`apollo.generate.generate`. Raises ApolloError (UsageError for a request that does not fit
    the input) with one line naming the file and the cause; nothing is written then.
    """
    if task not in TASKS:
        raise UsageError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if Path(out).suffix.lower() not in (".mid", ".midi") or Path(out).is_dir():
        raise UsageError(f"{out}: the output should be a .mid file")
    if task == "infill" and bars is None:
        raise UsageError("infill needs --bars, such as --bars 5-8")
    if n < 1 or (n > 1 and task != "vary"):
        raise UsageError("--n is for vary (several variations); other tasks write one piece")
    check_choice(instrument, ensemble, line)
    composer = Composer.load(checkpoint, run, runs_root, **({"search": search} if search else {}))
    piece = read_piece(source, composer.spec.grid)
    result = ComposeResult(composer.model, task, seed, piece, notes=list(piece.notes))
    roll = piece.roll
    if task == "harmonize" and (roll.cells > SILENT).sum(axis=0).max(initial=0) > 1:
        result.notes.append(f"{source}: the melody has chords; harmonizing its top line")

    made: list[PianoRoll] = []
    if task == "continue":
        made.append(composer.continue_(roll, 8 if bars is None else int(bars), seed=seed, ending=ending))
    elif task == "infill":
        first, last = parse_bars(str(bars))
        try:
            made.append(composer.infill(roll, first, last, seed=seed))
        except UsageError as error:
            raise UsageError(f"{source}: {error}") from None
    elif task == "harmonize":
        made.append(composer.harmonize(roll, seed=seed))
    else:
        made.extend(composer.vary(roll, amount, seed=seed + i) for i in range(n))

    for i, (roll_out, path) in enumerate(zip(made, numbered_paths(out, len(made)))):
        written = write_piece(_moved_back(roll_out, piece.shift), path, instrument=instrument, ensemble=ensemble,
                              line=line, wav=wav, png=png, soundfont=soundfont)
        written.seed = seed + i
        result.pieces.append(written)
    return result


def _moved_back(roll: PianoRoll, shift: int) -> PianoRoll:
    """The roll moved back by the octaves reading moved it, on a grid wide enough to hold it."""
    if not shift:
        return roll
    pitch, start, end = roll.notes()
    grid = Grid(0, 128, roll.grid.steps_per_beat)
    return PianoRoll.from_notes(pitch - shift, start, end, grid, roll.tempo, roll.n_steps, out_of_range="drop")
