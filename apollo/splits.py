"""Which pieces are held out: train, validation and test splits, by tune.

A corpus often holds one piece more than once in different files: Bach harmonized the same chorale
melody for several cantatas (BWV 280 and BWV 176.6 are one tune, a minor third apart), and folk
collections print the same reel twice. If one copy trains the model and another judges it, the
judge rewards memory. So a piece's split follows its *tune*, not its file:

- :func:`tune_fingerprint` reads the piece's top line (the highest sounding pitch at every step),
  merges repeated pitches, and hashes the first :data:`TUNE_INTERVALS` intervals between them. It is
  the same for a transposed copy, a re-harmonization under the same melody, or a file re-encoded
  with another tempo or other metadata.
- :func:`split_of` turns the fingerprint into a split: the hash, read as a number in [0, 1), falls
  below ``test_fraction`` (test), below ``test_fraction + val_fraction`` (validation), or above
  (train). Every file decides alone, so preprocessing streams, every copy of a tune lands on one
  side, and adding files to a corpus never moves a piece from one split to another. The fractions
  hold on average; a corpus of a few dozen tunes can come out a few pieces off, and one of a handful
  may have no validation or test piece at all (preprocessing says so).

The validation split is for every choice (best checkpoint, decoding, term weights, recipes); the
test split is touched only to report.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["SPLITS", "TUNE_INTERVALS", "split_of", "tune_fingerprint"]

SPLITS = ("train", "val", "test")
TUNE_INTERVALS = 12  # long enough to tell tunes apart, short enough to survive a changed ending


def tune_fingerprint(pitch: np.ndarray, start: np.ndarray, end: np.ndarray) -> str:
    """A hex digest of the piece's melody: the intervals of its top line's first pitches."""
    begin, stop = int(start.min()), int(end.max())
    top = np.full(stop - begin, -1)
    for p, a, b in zip(pitch.tolist(), (start - begin).tolist(), (end - begin).tolist()):
        np.maximum(top[a:b], p, out=top[a:b])
    top = top[top >= 0]
    changes = top[np.r_[True, np.diff(top) != 0]][: TUNE_INTERVALS + 1]
    return hashlib.blake2b(np.diff(changes).astype(np.int16).tobytes(), digest_size=16).hexdigest()


def split_of(fingerprint: str, val_fraction: float, test_fraction: float) -> str:
    """The split of every piece with this tune fingerprint (see the module docstring)."""
    position = int(fingerprint[:13], 16) / 16**13  # uniform in [0, 1): the digest's first 52 bits
    if position < test_fraction:
        return "test"
    return "val" if position < test_fraction + val_fraction else "train"
