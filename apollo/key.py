"""Keys: which major or minor scale a stretch of music keeps to, and moving it to C major / A minor.

A convolutional generator sees a few semitones at a time, and which 7 of the 12 pitch classes a
piece uses is a question about all octaves at once: trained on music in every key, Apollo's DCGAN
wrote near-chromatic rolls (docs/results.md). Moved to one key before training (``apollo
preprocess --normalize-key``), the music keeps one scale, which the generator learns; each generated
piece is then moved to a key drawn from the keys the corpus was written in (:func:`draw_move`), so
the output keeps the corpus's key distribution.

The key estimate is the best fit among the 24 major and harmonic minor scales (:data:`SCALES`): the
scale holding the largest share of sounding time. A piece in A minor and one in C major share
most of their notes and both land on the white keys.
"""

from __future__ import annotations

import numpy as np

from apollo.roll import SILENT, PianoRoll

__all__ = ["MAJOR", "HARMONIC_MINOR", "SCALES", "TONICS", "MOVES", "estimate_key", "key_name", "move_to_c",
           "pitch_class_weights", "move_histogram", "draw_move"]

MAJOR = (0, 2, 4, 5, 7, 9, 11)
HARMONIC_MINOR = (0, 2, 3, 5, 7, 8, 11)
TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MOVES = range(-6, 6)  # the moves to C: the smaller way round, down for F#


def _scales() -> np.ndarray:
    """The 24 scales as a bool array [24, 12]: C..B major, then C..B harmonic minor."""
    scales = np.zeros((24, 12), dtype=bool)
    for root in range(12):
        scales[root, [(root + step) % 12 for step in MAJOR]] = True
        scales[12 + root, [(root + step) % 12 for step in HARMONIC_MINOR]] = True
    return scales


# Harmonic, not natural, minor: a natural minor scale has the same pitch classes as its relative
# major, so "24 major and natural minor scales" would really be only 12 different sets.
SCALES = _scales()


def pitch_class_weights(roll: PianoRoll) -> np.ndarray:
    """Sounding steps per true pitch class (``(lowest_pitch + row) mod 12``), float [12]."""
    per_row = (roll.cells > SILENT).sum(axis=1)
    classes = (roll.grid.lowest_pitch + np.arange(roll.n_pitches)) % 12
    return np.bincount(classes, weights=per_row, minlength=12).astype(float)


def estimate_key(roll: PianoRoll) -> tuple[int, str]:
    """(tonic pitch class, "major" or "minor") of the best-fitting scale; C major for silence."""
    best = int(np.argmax(SCALES @ pitch_class_weights(roll)))  # ties: major first, lowest tonic first
    return best % 12, "major" if best < 12 else "minor"


def key_name(tonic: int, mode: str) -> str:
    return f"{TONICS[tonic % 12]} {mode}"


def move_to_c(roll: PianoRoll) -> int:
    """Semitones in -6..5 that move the roll's key to C major (or A minor, its relative)."""
    tonic, mode = estimate_key(roll)
    target = 0 if mode == "major" else 9
    return (target - tonic + 6) % 12 - 6


def move_histogram(moves: np.ndarray) -> list[int]:
    """How many chunks were moved by each of :data:`MOVES`: the corpus's keys, saved with a model."""
    return np.bincount(np.asarray(moves, dtype=np.int64) - MOVES.start, minlength=len(MOVES)).tolist()


def draw_move(histogram: list[int], rng: np.random.Generator) -> int:
    """A key for one generated piece: the semitones that undo a move drawn from ``histogram``."""
    counts = np.asarray(histogram, dtype=float)
    if len(counts) != len(MOVES) or counts.sum() <= 0:
        return 0
    return -int(rng.choice(np.asarray(MOVES), p=counts / counts.sum()))
