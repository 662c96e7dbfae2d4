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
}


def sample_metrics(roll: Roll) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one roll."""
    f = Facts.of(roll)
    return {name: float(fn(f)) for name, fn in METRICS.items()}
