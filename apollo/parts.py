"""Parts a real player can play: a texture split into voices and fitted to instruments.

The model writes a *texture*: at any moment, any number of notes anywhere in its pitch window. A
pianist can play that; a violinist cannot, for a violin sounds one note at a time and nothing
below G3. This module turns a texture into parts:

- :func:`voices` splits it into voices, highest first: lines of single notes, each followed from
  one note to the next.
- :func:`arrange` gives a solo instrument one voice if it is monophonic (the top one, or the bottom
  one for a bass instrument) and the whole texture if it is polyphonic, or gives each part of an
  ensemble (:data:`ENSEMBLES`) its own voices; then it fits every part into its playable range.
- :func:`write_arrangement` writes a MIDI file with one track per part, each with its name, its
  own channel and its program.

Voices. Onsets are taken in time order; a voice is free once its last note has ended. The notes
that start together go to free voices in pitch order (the higher note to the higher voice),
matched so that the voices move least: the sum of ``|pitch - the voice's previous pitch|``, plus a
penalty for crossing a voice that is still sounding. A voice not heard yet starts from the middle
of its register (a quantile of the piece's pitches). When more notes start than voices are free,
voices still sounding are cut short to take them (a held note gives way to the next chord), and
only when more notes start together than there are voices are the ones that fit worst left out,
and counted. A voice never sounds two notes at once.

Ranges (:data:`PLAYABLE`) are practical sounding ranges in MIDI pitch, as orchestration books give
them for a good player rather than a virtuoso's extremes; synthesizers and effects get a
comfortable middle of the keyboard. A part is moved by the whole octaves that leave the fewest
notes outside its range, a few strays aside (no move if that is as good, else the smallest move);
notes still outside are then folded into the range by octaves, one by one, so every note written
is playable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from apollo.errors import ApolloError
from apollo.instruments import instrument_name, instrument_program, normalize
from apollo.midi import DRUM_CHANNEL, NoteTrack, write_tracks
from apollo.roll import Grid, PianoRoll, fold_pitches

__all__ = [
    "BASS_LINE",
    "ENSEMBLES",
    "MONOPHONIC",
    "PLAYABLE",
    "Arrangement",
    "EnsemblePart",
    "Part",
    "Playable",
    "arrange",
    "check_choice",
    "find_ensemble",
    "pitch_name",
    "polyphony",
    "voices",
    "write_arrangement",
]

Line = Literal["top", "bottom"]


@dataclass(frozen=True)
class Playable:
    """What an instrument plays: its lowest and highest sounding MIDI pitch, and whether it sounds
    one note at a time."""

    low: int
    high: int
    monophonic: bool


# The programs that sound one note at a time: basses, solo strings, brass, reeds, pipes, synth
# leads, shamisen, bagpipe, fiddle, shanai. Every other program plays chords.
MONOPHONIC = frozenset({*range(32, 44), *range(56, 61), *range(64, 88), 106, 109, 110, 111})

# Practical sounding range (lowest, highest MIDI pitch) of each program up to the next one listed.
_RANGES: dict[int, tuple[int, int]] = {
    0: (21, 108), 6: (29, 89),  # pianos and electric pianos; harpsichord, clavinet
    8: (60, 108), 9: (79, 108), 10: (60, 96), 11: (53, 89),  # celesta, glockenspiel, music box, vibraphone
    12: (45, 96), 13: (65, 108), 14: (60, 77), 15: (48, 84),  # marimba, xylophone, tubular bells, dulcimer
    16: (24, 96), 21: (41, 89), 22: (60, 96), 23: (41, 89),  # organs; accordion (right hand); harmonica; tango accordion
    24: (40, 88),  # guitars
    32: (28, 60), 33: (28, 67), 38: (24, 72),  # acoustic bass; electric, fretless and slap basses; synth basses
    40: (55, 100), 41: (48, 84), 42: (36, 76), 43: (28, 60),  # violin, viola, cello, contrabass
    44: (28, 96), 46: (24, 103), 47: (38, 57),  # tremolo and pizzicato strings (sections); harp; timpani
    48: (28, 100), 52: (40, 81), 55: (36, 84),  # string ensembles; choirs (basses' low E to sopranos' A); orchestra hit
    56: (54, 82), 57: (40, 72), 58: (28, 58), 59: (54, 82), 60: (34, 77),  # trumpet, trombone, tuba, muted trumpet, horn
    61: (34, 82), 62: (36, 96),  # brass section; synth brass
    64: (56, 87), 65: (49, 80), 66: (44, 75), 67: (36, 68),  # soprano, alto, tenor and baritone sax
    68: (58, 91), 69: (52, 81), 70: (34, 75), 71: (50, 91),  # oboe, english horn, bassoon, clarinet
    72: (74, 108), 73: (60, 96), 74: (72, 98), 75: (60, 96),  # piccolo, flute, soprano recorder, pan flute
    76: (60, 84), 77: (62, 88), 78: (74, 98), 79: (69, 89),  # blown bottle, shakuhachi, tin whistle, ocarina
    80: (36, 96),  # synth leads, pads and effects (80..103): a comfortable middle of the keyboard
    104: (48, 77), 105: (48, 81), 106: (48, 81), 107: (50, 86),  # sitar, banjo, shamisen, koto
    108: (60, 88), 109: (67, 81), 110: (55, 100), 111: (60, 84),  # kalimba, bagpipe (chanter), fiddle, shanai
    112: (72, 96), 113: (60, 84), 114: (52, 88), 115: (60, 84),  # tinkle bell, agogo, steel drums, woodblock
    116: (36, 72), 119: (36, 96),  # taiko, melodic tom, synth drum; reverse cymbal and sound effects
}
PLAYABLE: tuple[Playable, ...] = tuple(
    Playable(*_RANGES[max(first for first in _RANGES if first <= program)], program in MONOPHONIC)
    for program in range(128)
)

# Solo instruments whose line is the texture's bottom voice: basses, contrabass, tuba, baritone sax, bassoon.
BASS_LINE = frozenset({*range(32, 40), 43, 58, 67, 70})


@dataclass(frozen=True)
class EnsemblePart:
    """One part of an ensemble: its name, program, range and how many voices it plays."""

    name: str
    program: int
    low: int
    high: int
    n_voices: int = 1  # 1: a monophonic part

    @property
    def monophonic(self) -> bool:
        return self.n_voices == 1


def _part(name: str, program: int) -> EnsemblePart:
    """A one-voice part with its instrument's own range."""
    return EnsemblePart(name, program, PLAYABLE[program].low, PLAYABLE[program].high)


ENSEMBLES: dict[str, tuple[EnsemblePart, ...]] = {
    "string quartet": (_part("Violin I", 40), _part("Violin II", 40), _part("Viola", 41), _part("Cello", 42)),
    "brass quartet": (_part("Trumpet 1", 56), _part("Trumpet 2", 56), _part("Horn", 60), _part("Trombone", 57)),
    "saxophone quartet": (_part("Soprano Sax", 64), _part("Alto Sax", 65), _part("Tenor Sax", 66),
                          _part("Baritone Sax", 67)),
    "woodwind quartet": (_part("Flute", 73), _part("Oboe", 68), _part("Clarinet", 71), _part("Bassoon", 70)),
    # Choir Aahs for every voice, each in its singers' range.
    "choir": (EnsemblePart("Soprano", 52, 60, 81), EnsemblePart("Alto", 52, 53, 74),
              EnsemblePart("Tenor", 52, 48, 69), EnsemblePart("Bass", 52, 40, 64)),
    "piano": (EnsemblePart("Right hand", 0, 21, 108, n_voices=2), EnsemblePart("Left hand", 0, 21, 108, n_voices=2)),
}
_ENSEMBLE_ALIASES = {"sax quartet": "saxophone quartet", "wind quartet": "woodwind quartet", "satb": "choir",
                     "piano hands": "piano"}


def find_ensemble(name: str) -> tuple[str, tuple[EnsemblePart, ...]]:
    """An ensemble's name and parts, the name matched ignoring case, spaces and punctuation.

    Raises ApolloError naming the known ensembles.
    """
    names = {normalize(known): known for known in ENSEMBLES}
    names |= {normalize(alias): known for alias, known in _ENSEMBLE_ALIASES.items()}
    known = names.get(normalize(name))
    if known is None:
        raise ApolloError(f"unknown ensemble {name!r}; choose from: {', '.join(ENSEMBLES)}")
    return known, ENSEMBLES[known]


def pitch_name(pitch: int) -> str:
    """Scientific pitch name of a MIDI pitch: 60 is C4, 55 is G3."""
    return ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"][pitch % 12] + str(pitch // 12 - 1)


# -- voices ---------------------------------------------------------------------------------------

# The matching's costs, in semitones moved: leaving a note out costs more than anything else, then
# cutting short a note still sounding to free its voice, then crossing a voice that still sounds.
SKIP_COST = 1_000_000
CUT_COST = 10_000
CROSSING_COST = 24


def polyphony(roll: PianoRoll) -> int:
    """The most notes sounding at once (the voices needed to play every note)."""
    return int((roll.cells > 0).sum(axis=0).max(initial=0))


def _usual_voices(roll: PianoRoll) -> int:
    """How many voices to split a texture into before taking its top or bottom one: as many as
    usually sound at once (the median over the steps where something sounds). Splitting into the
    most that ever sound (the generated pieces' held notes overlap the next chord, 6 to 9 at once)
    leaves the outer voices sparse, because the extra voices catch their notes whenever they are
    busy; and a tune whose notes ring into the next ones is one line, not two voices, or its top
    voice keeps only the notes above the ones they overlap (about half)."""
    counts = (roll.cells > 0).sum(axis=0)
    counts = counts[counts > 0]
    return max(1, int(np.ceil(np.median(counts)))) if len(counts) else 1


def voices(roll: PianoRoll, n: int) -> list[PianoRoll]:
    """The texture split into ``n`` voices, highest first (see the module doc); each voice is a
    roll on the same grid that never sounds two notes at once. Notes that no voice could take are
    left out: ``roll.n_notes - sum(v.n_notes for v in voices(roll, n))`` of them."""
    pitch, start, end = roll.notes()
    owner, end = _split(pitch, start, end, n)
    return [PianoRoll.from_notes(pitch[owner == v], start[owner == v], end[owner == v], roll.grid, roll.tempo,
                                 roll.n_steps) for v in range(n)]


def _split(pitch: np.ndarray, start: np.ndarray, end: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Which voice (0 the highest) plays each note, or -1 for a note left out, and the notes' ends
    (a note is cut short where its voice moves on before it ends). Notes come sorted by start,
    then pitch, as :meth:`PianoRoll.notes` gives them."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    owner, end = np.full(len(pitch), -1), end.copy()
    if not len(pitch):
        return owner, end
    # Where each voice was last heard, starting from the middle of its register.
    last_pitch = list(np.quantile(pitch, 1 - (np.arange(n) + 0.5) / n))
    playing: list[int | None] = [None] * n  # each voice's last note
    for group in np.split(np.arange(len(pitch)), np.flatnonzero(np.diff(start)) + 1):
        now = int(start[group[0]])
        notes = group[::-1]  # highest first
        busy = [playing[v] is not None and end[playing[v]] > now for v in range(n)]
        # Pitches each voice should stay between: the voices above and below it that still sound.
        above = [min((last_pitch[u] for u in range(v) if busy[u]), default=np.inf) for v in range(n)]
        below = [max((last_pitch[u] for u in range(v + 1, n) if busy[u]), default=-np.inf) for v in range(n)]
        for i, voice in _match([int(pitch[k]) for k in notes], last_pitch, busy, above, below):
            note = notes[i]
            if busy[voice]:
                end[playing[voice]] = now
            owner[note], last_pitch[voice], playing[voice] = voice, int(pitch[note]), note
    # Highest first, whatever happened on the way (a voice with no notes sorts last).
    means = [pitch[owner == v].mean() if (owner == v).any() else -1.0 for v in range(n)]
    rank = np.argsort(means, kind="stable")[::-1]
    renumber = np.empty(n + 1, dtype=np.int64)
    renumber[rank] = np.arange(n)
    renumber[n] = -1  # owner -1 indexes the last entry: left out stays left out
    return renumber[owner], end


def _match(notes: list[int], voices: list[float], busy: list[bool], above: list[float],
           below: list[float]) -> list[tuple[int, int]]:
    """The order-keeping matching of notes (highest first) to voices (highest first) that costs
    least; (note index, voice index) pairs. Dynamic programming over prefixes: ``cost[i][j]`` is
    the cheapest way to place the first i notes on the first j voices."""
    m, f = len(notes), len(voices)
    step = [[abs(p - voices[j]) + CUT_COST * busy[j] + CROSSING_COST * (p > above[j] or p < below[j])
             for j in range(f)] for p in notes]  # the cost of note i going to voice j
    cost = [[0.0] * (f + 1)] + [[i * SKIP_COST] + [0.0] * f for i in range(1, m + 1)]
    for i in range(1, m + 1):
        for j in range(1, f + 1):
            cost[i][j] = min(cost[i][j - 1], cost[i - 1][j] + SKIP_COST, cost[i - 1][j - 1] + step[i - 1][j - 1])
    pairs, i, j = [], m, f
    while i > 0:
        if j > 0 and cost[i][j] == cost[i - 1][j - 1] + step[i - 1][j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif j > 0 and cost[i][j] == cost[i][j - 1]:
            j -= 1
        else:  # the note is left out
            i -= 1
    return pairs[::-1]


# -- arranging ------------------------------------------------------------------------------------


@dataclass
class Part:
    """One player's part: its notes on a grid that spans exactly its range."""

    name: str
    program: int
    roll: PianoRoll
    low: int
    high: int
    monophonic: bool
    move: int = 0  # semitones (whole octaves) the part was moved to fit its range
    folded: int = 0  # notes then folded into the range by octaves, one by one


@dataclass
class Arrangement:
    """The parts made from a texture, the texture's notes no part plays, and what was done, in words."""

    parts: list[Part]
    left_out: int
    message: str

    @property
    def n_notes(self) -> int:
        return sum(part.roll.n_notes for part in self.parts)


def arrange(
    roll: PianoRoll,
    *,
    instrument: int | str | None = None,
    ensemble: str | None = None,
    line: Line | None = None,
    moves: Sequence[int] | None = None,
) -> Arrangement:
    """Parts for real players from a texture (see the module doc).

    With ``ensemble`` (a name in :data:`ENSEMBLES`), one part per ensemble part, from the texture's
    voices in order. With a monophonic ``instrument`` (name, alias or program), its one line: the
    top voice, or the bottom voice for a bass instrument (:data:`BASS_LINE`); ``line`` chooses.
    With a polyphonic one (piano when neither is given), the whole texture, or the ``line`` asked
    for. ``moves`` gives each part's octave move instead of choosing it (an earlier arrangement's
    ``[part.move for part in parts]``), so that music arranged piece by piece keeps each part in one
    register; notes outside a range are folded in as always. Raises ApolloError for an unknown name
    or for an instrument and an ensemble together.
    """
    check_choice(instrument, ensemble, line)
    if ensemble is not None:
        return _arrange_ensemble(roll, ensemble, moves)

    program = instrument_program(0 if instrument is None else instrument)
    name, playable = instrument_name(program), PLAYABLE[program]
    pitch, start, end = roll.notes()
    if line is None and not playable.monophonic:
        owner, said = np.zeros(len(pitch), dtype=np.int64), []
    else:
        line = line or ("bottom" if program in BASS_LINE else "top")
        owner, end = _split(pitch, start, end, _usual_voices(roll))
        wanted = 0 if line == "top" else owner.max(initial=0)
        owner = np.where(owner == wanted, 0, -1)
        why = "plays one note at a time" if playable.monophonic else "was asked for one line"
        said = [f"{name} {why}: wrote the {line} voice, {(owner == 0).sum()} of {len(pitch)} notes"]
    part = _fit(name, program, playable.low, playable.high, line is not None or playable.monophonic,
                pitch[owner == 0], start[owner == 0], end[owner == 0], roll, moves[0] if moves else None)
    return Arrangement([part], int((owner < 0).sum()), "; ".join(said + _fit_words([part])))


def check_choice(instrument: int | str | None, ensemble: str | None, line: str | None) -> None:
    """Raise ApolloError unless these name a possible arrangement (what :func:`arrange` checks first)."""
    if line not in (None, "top", "bottom"):
        raise ApolloError(f"--line must be top or bottom, got {line!r}")
    if ensemble is not None:
        if instrument is not None:
            raise ApolloError("give --instrument or --ensemble, not both")
        if line is not None:
            raise ApolloError("--line chooses the voice of a solo instrument; an ensemble plays every voice")
        find_ensemble(ensemble)
    elif instrument is not None:
        instrument_program(instrument)


def _arrange_ensemble(roll: PianoRoll, ensemble: str, moves: Sequence[int] | None = None) -> Arrangement:
    _, specs = find_ensemble(ensemble)
    pitch, start, end = roll.notes()
    n = sum(spec.n_voices for spec in specs)
    owner, end = _split(pitch, start, end, n)
    parts, first = [], 0
    for k, spec in enumerate(specs):  # each part takes the next voices down
        mine = (owner >= first) & (owner < first + spec.n_voices)
        parts.append(_fit(spec.name, spec.program, spec.low, spec.high, spec.monophonic,
                          pitch[mine], start[mine], end[mine], roll, moves[k] if moves else None))
        first += spec.n_voices
    left_out = int((owner < 0).sum())
    said = [f"{left_out} of {len(pitch)} notes left out where more than {n} started together"] if left_out else []
    return Arrangement(parts, left_out, "; ".join(said + _fit_words(parts)))


STRAY_SHARE = 0.05  # up to this share of a part's notes may lie outside its range before the part is moved


def _fit(name: str, program: int, low: int, high: int, monophonic: bool, pitch: np.ndarray, start: np.ndarray,
         end: np.ndarray, roll: PianoRoll, move: int | None = None) -> Part:
    """A part from its notes: moved by the octaves that fit its range best, the rest folded in.

    A few strays (up to STRAY_SHARE of the notes) do not move a part: a violin line around C5
    with one F3 stays where it is and the F3 is folded up, rather than the whole line climbing an
    octave into the violin's shrillest register."""
    def outside(move: int) -> int:
        return int(((pitch + move < low) | (pitch + move > high)).sum())

    strays = int(STRAY_SHARE * len(pitch))
    middle = (low + high) / 2
    centre = float(np.median(pitch)) if len(pitch) else middle
    # Fewest notes outside beyond the strays; then no move, else the smallest; then the part's
    # middle nearest the range's.
    if move is None:
        move = min(range(-48, 49, 12), key=lambda m: (max(0, outside(m) - strays), abs(m), abs(centre + m - middle)))
    grid = Grid(low, high - low + 1, roll.grid.steps_per_beat)
    folded = outside(move)
    pitch, _ = fold_pitches(pitch + move, grid)
    part_roll = PianoRoll.from_notes(pitch, start, end, grid, roll.tempo, roll.n_steps)
    return Part(name, program, part_roll, low, high, monophonic, move, folded)


def _fit_words(parts: list[Part]) -> list[str]:
    """What fitting did to the parts, in words (nothing for parts that fitted as they were)."""
    words = []
    for move in sorted({part.move for part in parts if part.move}):
        moved = [part for part in parts if part.move == move]
        octaves = ["an octave", "two octaves", "three octaves", "four octaves"][abs(move) // 12 - 1]
        where = (f"its range ({pitch_name(moved[0].low)}..{pitch_name(moved[0].high)})" if len(moved) == 1
                 else "their ranges")
        words.append(f"{' and '.join(part.name for part in moved)} moved {'up' if move > 0 else 'down'} "
                     f"{octaves} to fit {where}")
    folded = [part for part in parts if part.folded]
    if folded:
        total = sum(part.folded for part in folded)
        which = f" ({', '.join(f'{part.name}: {part.folded}' for part in folded)})" if len(parts) > 1 else ""
        words.append(f"{total} note{'s' * (total > 1)} folded into range by octaves{which}")
    return words


def write_arrangement(arrangement: Arrangement, path: str | Path | None, tempo: float | None = None) -> bytes:
    """The parts as a Standard MIDI File (format 1), one track per part with its name, its own
    channel (never the drum channel) and its program; written atomically to ``path`` if given.
    ``tempo`` defaults to the parts' own."""
    parts = arrangement.parts
    if not parts:
        raise ValueError("an arrangement needs at least one part")
    channels = [c for c in range(16) if c != DRUM_CHANNEL]
    if len(parts) > len(channels):
        raise ApolloError(f"{len(parts)} parts, but a MIDI file has only {len(channels)} channels for them")
    tracks = [NoteTrack(*part.roll.notes(), program=part.program, channel=channel, name=part.name)
              for part, channel in zip(parts, channels)]
    first = parts[0].roll
    return write_tracks(path, tracks, steps_per_beat=first.grid.steps_per_beat,
                        tempo=first.tempo if tempo is None else tempo, n_steps=max(p.roll.n_steps for p in parts))
