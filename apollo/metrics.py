"""Musical metrics of one piano roll: pure functions, each a number with an exact definition.

Every function takes a :class:`~apollo.roll.PianoRoll` and returns a float; :func:`sample_metrics`
returns them all by name. A metric that is undefined for a roll (the polyphony of a silent roll, the
groove of a one-bar roll) is ``nan``, never a made-up 0; averages over a set skip those (``nanmean``).

Conventions shared by all of them:

- A *bar* is 4 beats, ``4 * steps_per_beat`` steps. The roll is cut into bars from step 0; a final
  partial bar is a bar too (padded with silence, so it is empty only if its own steps are silent).
- The roll's whole length counts: trailing silence in a fixed-length roll is silence, not "no data"
  (a generated roll written to MIDI loses that silence; :mod:`apollo.evaluate` pads it back).
- A cell *sounds* when it is HELD or ONSET. Notes are those of :meth:`PianoRoll.notes`: a note starts
  at an onset or where sound follows silence, so repeated notes count separately.
- Pitch classes are true pitch classes, ``(lowest_pitch + row) % 12`` with C = 0. (pypianoroll's
  ``_to_chroma``, which MuseGAN's metrics adapt, reshapes the 128 pitches to ``[12, 10]`` and sums
  the last axis: each "pitch class" is a block of 10 adjacent semitones. We do not copy it.)
- A roll has no voices, so they are inferred one step at a time (:func:`successors`): a note's
  *successor in its voice* is the note that starts exactly when it ends and is nearest to it in
  pitch (on a tie, the lower one). A note with no note starting at its end has no successor. Two
  notes may share a successor (two voices meeting on one pitch are one note in a roll).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from apollo.key import SCALES
from apollo.roll import SILENT, Grid, PianoRoll

__all__ = [
    "BEATS_PER_BAR",
    "Facts",
    "METRICS",
    "SCALES",
    "bars",
    "pitch_classes",
    "empty_bar_rate",
    "used_pitch_classes",
    "qualified_note_rate",
    "polyphony",
    "polyphony_rate",
    "pitch_class_entropy",
    "scale_consistency",
    "groove_consistency",
    "pitch_range",
    "note_density",
    "follow_pairs",
    "successors",
    "matched_successors",
    "voice_step",
    "parallel_rate",
    "top_pitch_share",
    "count_change_rate",
    "sample_metrics",
]

BEATS_PER_BAR = 4
QUALIFIED_STEPS = 3  # a note of at least this many steps is "qualified" (MuseGAN's QN)



@dataclass(frozen=True)
class Facts:
    """What the metrics read from a roll, computed once: its sounding cells and its notes.

    Every metric accepts a :class:`PianoRoll` or its ``Facts`` (faster when computing many).
    """

    sounding: np.ndarray  # bool [n_pitches, n_steps]
    pitch: np.ndarray  # the notes, as PianoRoll.notes(): MIDI pitch, start step, end step (exclusive)
    start: np.ndarray
    end: np.ndarray
    grid: Grid

    @classmethod
    def of(cls, roll: PianoRoll | Facts) -> Facts:
        if isinstance(roll, Facts):
            return roll
        return cls(roll.cells > SILENT, *roll.notes(), roll.grid)

    @property
    def n_pitches(self) -> int:
        return self.sounding.shape[0]

    @property
    def n_steps(self) -> int:
        return self.sounding.shape[1]

    @property
    def bar_steps(self) -> int:
        return BEATS_PER_BAR * self.grid.steps_per_beat

    @property
    def n_bars(self) -> int:
        return -(-self.n_steps // self.bar_steps)


Roll = PianoRoll | Facts


def bars(roll: Roll) -> np.ndarray:
    """The sounding cells cut into bars: bool [n_bars, n_pitches, bar_steps] (last bar padded)."""
    f = Facts.of(roll)
    sounding = np.pad(f.sounding, ((0, 0), (0, f.n_bars * f.bar_steps - f.n_steps)))
    return sounding.reshape(f.n_pitches, f.n_bars, f.bar_steps).transpose(1, 0, 2)


def pitch_classes(roll: Roll) -> np.ndarray:
    """The pitch class (C = 0) of each row: ``(lowest_pitch + row) % 12``."""
    f = Facts.of(roll)
    return (f.grid.lowest_pitch + np.arange(f.n_pitches)) % 12


def empty_bar_rate(roll: Roll) -> float:
    """Share of bars in which nothing sounds (0..1). Trailing silent bars count as empty."""
    b = bars(roll)
    return float(np.mean(~b.any(axis=(1, 2)))) if len(b) else np.nan


def used_pitch_classes(roll: Roll) -> float:
    """Mean number of distinct pitch classes sounding per non-empty bar (1..12; nan if all empty)."""
    b = bars(roll).any(axis=2)  # [n_bars, n_pitches]: row sounds somewhere in the bar
    row_to_class = pitch_classes(roll)[:, None] == np.arange(12)  # [n_pitches, 12]
    counts = ((b.astype(np.int32) @ row_to_class) > 0).sum(axis=1)
    counts = counts[b.any(axis=1)]
    return float(counts.mean()) if len(counts) else np.nan


def qualified_note_rate(roll: Roll, min_steps: int = QUALIFIED_STEPS) -> float:
    """Share of notes lasting at least ``min_steps`` steps (0..1; nan without notes)."""
    f = Facts.of(roll)
    return float(np.mean(f.end - f.start >= min_steps)) if len(f.start) else np.nan


def _voices(roll: Roll) -> np.ndarray:
    """Number of sounding pitches at each step."""
    return Facts.of(roll).sounding.sum(axis=0)


def polyphony(roll: Roll) -> float:
    """Mean number of pitches sounding at once, over the steps where anything sounds (nan if none)."""
    voices = _voices(roll)
    voices = voices[voices > 0]
    return float(voices.mean()) if len(voices) else np.nan


def polyphony_rate(roll: Roll, min_pitches: int = 2) -> float:
    """Share of sounding steps where at least ``min_pitches`` pitches sound (0..1; nan if silent).

    Unlike pypianoroll's ``polyphonic_rate`` (which divides by all steps), silent steps are left
    out, so this measures texture only; silence is :func:`empty_bar_rate`'s job.
    """
    voices = _voices(roll)
    voices = voices[voices > 0]
    return float(np.mean(voices >= min_pitches)) if len(voices) else np.nan


def _pitch_class_counts(roll: Roll) -> np.ndarray:
    """Number of notes (onsets) of each pitch class, [12]."""
    return np.bincount(Facts.of(roll).pitch % 12, minlength=12).astype(np.float64)


def pitch_class_entropy(roll: Roll) -> float:
    """Shannon entropy in bits of the pitch-class histogram of notes (0..log2 12; nan without notes)."""
    counts = _pitch_class_counts(roll)
    if not counts.sum():
        return np.nan
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def scale_consistency(roll: Roll) -> float:
    """Largest share of notes that lie in one scale, over the 24 major and harmonic minor scales.

    1.0 when every note fits one key; nan without notes.
    """
    counts = _pitch_class_counts(roll)
    if not counts.sum():
        return np.nan
    return float((SCALES @ counts).max() / counts.sum())


def groove_consistency(roll: Roll) -> float:
    """Rhythmic similarity of consecutive bars: ``1 - mean hamming(g_i, g_i+1) / bar_steps``.

    ``g_i`` is bar ``i``'s onset pattern: step ``s`` is set when any note starts there. 1.0 when
    all bars share one rhythm; nan with fewer than two bars. Empty bars take part (all zeros).
    """
    f = Facts.of(roll)
    if f.n_bars < 2:
        return np.nan
    onsets = np.zeros(f.n_bars * f.bar_steps, dtype=bool)
    onsets[f.start] = True
    g = onsets.reshape(f.n_bars, f.bar_steps)
    return float(1.0 - np.mean(g[1:] != g[:-1]))


def pitch_range(roll: Roll) -> float:
    """Highest minus lowest sounding pitch, in semitones (nan if silent)."""
    rows = np.flatnonzero(Facts.of(roll).sounding.any(axis=1))
    return float(rows[-1] - rows[0]) if len(rows) else np.nan


def note_density(roll: Roll) -> float:
    """Notes per bar (bars as in :func:`bars`, trailing silence included)."""
    f = Facts.of(roll)
    return len(f.pitch) / f.n_bars if f.n_bars else np.nan


def _starting_at(times: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every index pair (i, j) with ``start[j] == times[i]``, grouped by i."""
    order = np.argsort(start, kind="stable")
    sorted_start = start[order]
    lo = np.searchsorted(sorted_start, times, side="left")
    hi = np.searchsorted(sorted_start, times, side="right")
    counts = hi - lo
    i = np.repeat(np.arange(len(times)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return i, order[np.repeat(lo, counts) + within]


def follow_pairs(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (a, b) of notes where b starts exactly when a ends: the note-to-note transitions.

    A chord moving to a chord gives every pair of their notes; :func:`successors` keeps one per note.
    """
    return _starting_at(end, start)


def successors(roll: Roll) -> np.ndarray:
    """Index of each note's successor in its voice, -1 where it has none.

    Of the notes that start exactly when note ``a`` ends (:func:`follow_pairs`), the successor is
    the one nearest to ``a`` in pitch; on a tie (one a semitone below, one above, say) the lower one.
    Several notes may have the same successor.
    """
    f = Facts.of(roll)
    pitch = f.pitch.astype(np.int64)
    a, b = follow_pairs(f.start, f.end)
    order = np.lexsort((pitch[b], np.abs(pitch[b] - pitch[a]), a))  # per note: nearest, then lowest
    a, b = a[order], b[order]
    first = np.r_[True, a[1:] != a[:-1]] if len(a) else np.zeros(0, dtype=bool)
    out = np.full(len(pitch), -1, dtype=np.int64)
    out[a[first]] = b[first]
    return out


def matched_successors(roll: Roll) -> np.ndarray:
    """Like :func:`successors`, but voices followed one to one and never crossing.

    At every step where notes end and others start, the ending notes and the starting notes, each
    in pitch order, are paired in order (the lowest ending note continues in a lower starting
    note than the next one up) as many as can be, with the smallest total step. Where voices move
    close together, the nearest-pitch rule alone may cross them (tenor F to D under alto A to G
    read as F to G, a parallel fifth that is not there); this does not. -1 where a note has none.
    """
    f = Facts.of(roll)
    pitch = f.pitch.astype(np.int64)
    out = np.full(len(pitch), -1, dtype=np.int64)
    a, b = follow_pairs(f.start, f.end)
    for t in np.unique(f.end[a]).tolist():
        ending = np.flatnonzero(f.end == t)
        ending = ending[np.argsort(pitch[ending], kind="stable")]
        starting = np.flatnonzero(f.start == t)
        starting = starting[np.argsort(pitch[starting], kind="stable")]
        for i, j in _ordered_pairs(pitch[ending], pitch[starting]):
            out[ending[i]] = starting[j]
    return out


def _ordered_pairs(low_to_high: np.ndarray, to: np.ndarray) -> list[tuple[int, int]]:
    """Order-preserving pairs of ``min(len)`` elements of two sorted pitch lists, least total step."""
    flip = len(low_to_high) > len(to)
    short, long = (to, low_to_high) if flip else (low_to_high, to)
    k, n = len(short), len(long)
    step = np.abs(short[:, None].astype(np.int64) - long[None, :])
    # cost[i, j]: least total step pairing all of the first i short notes with i of the first j long
    # ones; row by row, cost[i, j] = min(cost[i, j - 1], cost[i - 1, j - 1] + step), a running minimum.
    cost = np.full((k + 1, n + 1), np.inf)
    cost[0] = 0
    for i in range(1, k + 1):
        cost[i, 1:] = np.minimum.accumulate(cost[i - 1, :-1] + step[i - 1])
    pairs, i, j = [], k, n
    while i:
        if j > i and cost[i, j] == cost[i, j - 1]:
            j -= 1
        else:
            pairs.append((j - 1, i - 1) if flip else (i - 1, j - 1))
            i, j = i - 1, j - 1
    return pairs


def voice_step(roll: Roll) -> float:
    """Mean absolute step in semitones from each note to its successor in its voice.

    Every note with a successor (:func:`successors`) counts once; nan if no note has one.
    Stepwise voice leading gives a small value (Bach chorales: about 1.9); leaps raise it.
    """
    f = Facts.of(roll)
    succ = successors(f)
    has = succ >= 0
    if not has.any():
        return np.nan
    pitch = f.pitch.astype(np.int64)
    return float(np.abs(pitch[succ[has]] - pitch[has]).mean())


def parallel_rate(roll: Roll) -> float:
    """Share of the moving voice pairs that move in parallel fifths or octaves (0..1).

    A *moving pair* is two notes a, b that start on the same step with ``a.pitch < b.pitch``,
    whose successors a', b' (:func:`matched_successors`: voices followed one to one) are two different
    notes that start on the same step,
    and both move (``a' != a``, ``b' != b`` in pitch) in the same direction. It is a *parallel* when
    ``(b - a) % 12`` and ``(b' - a') % 12`` are both 7 (fifths) or both 0 (octaves and unisons);
    compound intervals count. The rate is parallels / moving pairs; nan without moving pairs.
    """
    f = Facts.of(roll)
    pitch = f.pitch.astype(np.int64)
    succ = matched_successors(f)
    a, b = _starting_at(f.start, f.start)  # every ordered pair of simultaneous notes
    keep = (pitch[a] < pitch[b]) & (succ[a] >= 0) & (succ[b] >= 0)
    a, b = a[keep], b[keep]
    a2, b2 = succ[a], succ[b]
    move_a, move_b = np.sign(pitch[a2] - pitch[a]), np.sign(pitch[b2] - pitch[b])
    # Two voices that meet on one note have merged, not moved in parallel: their successors must differ.
    moving = (a2 != b2) & (f.start[a2] == f.start[b2]) & (move_a != 0) & (move_a == move_b)
    if not moving.any():
        return np.nan
    before = (pitch[b] - pitch[a])[moving] % 12
    after = (pitch[b2] - pitch[a2])[moving] % 12
    parallel = (before == after) & ((before == 7) | (before == 0))
    return float(parallel.mean())


def top_pitch_share(roll: Roll) -> float:
    """Share of the sounding steps in which the roll's most-sounded pitch sounds (0..1; nan if silent).

    A pitch held or struck again through a whole piece, a drone or a pedal, gives about 1. The
    other metrics and MGEval's features can all look right around one: real 16-bar stretches
    measure about 0.5 for the chorales (a tonic or dominant in one voice or another) and 0.2 for folk tunes."""
    f = Facts.of(roll)
    busy = f.sounding.any(axis=0).sum()
    return float(f.sounding.sum(axis=1).max() / busy) if busy else np.nan


def count_change_rate(roll: Roll) -> float:
    """Share of the sounding steps, after the first step, at which the number of sounding pitches
    differs from the step before (0..1; nan if nothing sounds after step 0).

    Four voices that move together keep the count at every chord; a voice that drops out for a
    step, or a fifth pitch that comes in for one, changes it twice. Real 16-bar stretches measure
    about 0.06 a piece (chorales) and 0.00 (folk tunes, where only a rest changes it)."""
    count = _voices(roll)
    busy = count[1:] > 0
    return float(np.mean(count[1:][busy] != count[:-1][busy])) if busy.any() else np.nan


# name -> function; the order is the order of every table Apollo prints.
METRICS: dict[str, Callable[[Roll], float]] = {
    "empty_bar_rate": empty_bar_rate,
    "used_pitch_classes": used_pitch_classes,
    "qualified_note_rate": qualified_note_rate,
    "polyphony": polyphony,
    "polyphony_rate": polyphony_rate,
    "pitch_class_entropy": pitch_class_entropy,
    "scale_consistency": scale_consistency,
    "groove_consistency": groove_consistency,
    "pitch_range": pitch_range,
    "note_density": note_density,
    "voice_step": voice_step,
    "parallel_rate": parallel_rate,
    "top_pitch_share": top_pitch_share,
    "count_change_rate": count_change_rate,
}


def sample_metrics(roll: Roll) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one roll."""
    f = Facts.of(roll)
    return {name: float(fn(f)) for name, fn in METRICS.items()}
