"""From a generator's probabilities to notes: the decoding settings, and choosing them by measurement.

A generator writes, for every cell, the probability that it sounds (and, with the onset encoding,
that a note starts there). :class:`Decoding` says how those become a :class:`PianoRoll`: the
threshold a cell must pass to sound, the threshold a held note's onset cell must pass to strike
it again, and the shortest run a pitch must sound. A model carries its own decoding in its
metadata (``apollo generate`` uses it unless told otherwise); without one, :class:`Decoding`'s
defaults apply, the same decoding the trainer evaluates with.

The thresholds are part of the model's output, so they are chosen like a checkpoint: by mean
OA, on data that is not the reference of the reported results. :func:`calibrate` decodes one set
of samples with each candidate, measures them against the **validation split**, and keeps the
highest mean OA among the candidates that put no metric outside the tolerance that the default
decoding keeps inside it: calibration may not buy overlap with a metric that was right. The
default decoding's thresholds are the ones the discriminator judged in training, so a candidate
replaces it only when it gains more than :data:`MIN_GAIN`: a smaller gain is the samples' noise,
and choosing the best of many candidates on noise would ship a decoding for nothing.
bench/calibrate_decoding.py calibrates the bundled model this way.

Unless a run sets ``judged_min_length``, the discriminator judges every one-step note, so the
shortest sound is not something it judged; and it cuts real music too: :func:`ceiling` measures
what a decoding alone costs the music.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from apollo.roll import Encoding, Grid, PianoRoll

__all__ = ["MIN_GAIN", "MIN_LENGTH", "Decoding", "Trial", "calibrate", "candidates", "ceiling", "choose",
           "judged_decoding"]

# A generator leaves single cells just above the threshold, each a one-step note that chorales
# almost never have (2 % of their notes, 16 % of a model's we trained on them); decoding drops them
# (docs/results.md). Training evaluates with the same decoding, so "best" is what generate writes.
# Folk plays a fifth of its notes in one step, so there the cut costs real music itself (ceiling).
MIN_LENGTH = 2

# Real training chunks miss the validation split's empty-bar rate by 40 % (silent padding after
# short chorales; docs/results.md, "Reading the numbers"), so calibration does not ask it of a model.
NOT_REQUIRED = ("empty_bar_rate",)

# The mean OA a candidate must gain over the default decoding to replace it. Two decodings of the
# same 256 samples differ by a gain whose spread over disjoint sets of samples is 0.003-0.004
# (bench/calibrate_decoding.py's sample size; docs/results.md, "Choosing a decoding").
MIN_GAIN = 0.005


@dataclass(frozen=True)
class Decoding:
    """How probabilities become notes (see :meth:`PianoRoll.decode`)."""

    threshold: float = 0.5  # a cell sounds above this
    onset_threshold: float | None = None  # a held note is struck again above this; None: ``threshold``
    min_length: int = MIN_LENGTH  # shorter runs of one pitch stay silent
    fill: float | None = None  # a silent step sounds its most probable pitch above this; None: never

    def __post_init__(self) -> None:
        for name in ("threshold", "onset_threshold", "fill"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
        if self.min_length < 1:
            raise ValueError(f"min_length must be at least 1 step, got {self.min_length}")

    def decode(self, probabilities: np.ndarray, encoding: Encoding, grid: Grid, tempo: float) -> PianoRoll:
        return PianoRoll.decode(probabilities, encoding, grid, tempo=tempo, threshold=self.threshold,
                                min_length=self.min_length, onset_threshold=self.onset_threshold, fill=self.fill)

    @property
    def effective(self) -> tuple[float, float, int, float | None]:
        """(threshold, onset threshold, min length, fill) as applied: two decodings alike here decode alike."""
        onset = self.threshold if self.onset_threshold is None else self.onset_threshold
        return self.threshold, onset, self.min_length, self.fill

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> Decoding:
        """A model's saved decoding; keys it does not know (from a later version) are ignored."""
        values = values or {}
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def __str__(self) -> str:
        text = "threshold {:g}, onset threshold {:g}, min length {}".format(*self.effective[:3])
        return text if self.fill is None else f"{text}, fill {self.fill:g}"


def judged_decoding(train_config: Mapping) -> Decoding:
    """The decoding whose cells a run's discriminator judged, from its saved ``TrainConfig`` (a
    dict): its ``binarize_fill``, and its ``judged_min_length`` where that is above 1. Below 2 the
    discriminator saw every cell, and the default shortest sound stays, as it was measured."""
    min_length = train_config.get("judged_min_length") or 1
    return Decoding(fill=train_config.get("binarize_fill"), min_length=min_length if min_length > 1 else MIN_LENGTH)


def candidates(
    thresholds: Iterable[float] = (0.4, 0.425, 0.45, 0.475, 0.5, 0.525, 0.55),
    onset_thresholds: Iterable[float] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8),
    min_lengths: Iterable[int] = (MIN_LENGTH,),
    fill: float | None = None,
) -> list[Decoding]:
    """Every pairing of the thresholds, skipping onset thresholds below the sounding one, with each
    shortest sound (the default's alone unless asked: a model's one-step cells are blips or notes
    depending on the model and the music)."""
    triples = itertools.product(min_lengths, thresholds, onset_thresholds)
    return [Decoding(t, o, m, fill) for m, t, o in triples if o >= t]


@dataclass(frozen=True)
class Trial:
    """One candidate decoding and what it measured."""

    decoding: Decoding
    mean_oa: float
    misses: tuple[str, ...]  # checked metrics outside the tolerance, those not required included
    report: dict

    @property
    def required_misses(self) -> set[str]:
        return set(self.misses) - set(NOT_REQUIRED)

    @property
    def passes(self) -> bool:
        """Every required metric within the tolerance."""
        return not self.required_misses


def choose(trials: Sequence[Trial], baseline: Trial, min_gain: float = MIN_GAIN) -> list[Trial]:
    """``trials`` best first: those that miss no required metric ``baseline`` keeps within the
    tolerance, by mean OA, then the others, by mean OA. The first is the choice, except that
    ``baseline`` comes first unless the best gains more than ``min_gain`` mean OA over it."""

    def rank(trial: Trial) -> tuple:
        return (trial.required_misses <= baseline.required_misses, trial.mean_oa)

    ranked = sorted(trials, key=rank, reverse=True)
    if ranked[0].mean_oa - baseline.mean_oa <= min_gain:
        ranked.remove(baseline)
        ranked.insert(0, baseline)
    return ranked


def calibrate(
    probabilities: Sequence[np.ndarray],
    reference: Sequence[PianoRoll],
    *,
    encoding: Encoding,
    grid: Grid,
    tempo: float,
    decodings: Iterable[Decoding] | None = None,
    moves: Sequence[int] | None = None,
    tolerance: float | None = None,
    min_gain: float = MIN_GAIN,
    judged: Decoding = Decoding(),
    min_lengths: Iterable[int] = (MIN_LENGTH,),
) -> tuple[Decoding, list[Trial]]:
    """The decoding to ship with a model, and every trial, best first (:func:`choose`).

    ``probabilities`` are the model's samples (``[planes, pitches, steps]`` each); ``moves``
    transposes each decoded sample (a model trained in one key, as ``apollo generate`` does) before
    it is measured against ``reference``, real music of the validation split (choose there, report
    on test). ``decodings`` defaults to :func:`candidates` (with ``judged``'s fill and each of
    ``min_lengths``); ``judged``, the decoding whose thresholds the model's discriminator judged in
    training (the defaults, with the run's ``binarize_fill`` and ``judged_min_length``:
    :func:`judged_decoding`), is always tried, as the baseline.
    ``tolerance`` defaults to :data:`apollo.evaluate.TOLERANCE`; ``min_gain`` is what a candidate
    must gain over the default to replace it.
    """
    # Imported here: `apollo generate` reads Decoding and should not load the evaluation code.
    from apollo.evaluate import TOLERANCE, report

    tolerance = TOLERANCE if tolerance is None else tolerance
    moves = list(moves) if moves is not None else [0] * len(probabilities)
    if len(moves) != len(probabilities):
        raise ValueError(f"{len(moves)} moves for {len(probabilities)} samples")
    decodings = list(candidates(min_lengths=min_lengths, fill=judged.fill) if decodings is None else decodings)
    default = judged.effective
    if all(decoding.effective != default for decoding in decodings):
        decodings.append(judged)
    trials = []
    for decoding in decodings:
        rolls = [decoding.decode(p, encoding, grid, tempo) for p in probabilities]
        rolls = [roll.transpose(move) if move else roll for roll, move in zip(rolls, moves)]
        rep = report(rolls, reference, tolerance=tolerance)
        misses = tuple(name for name, check in rep["checks"].items() if not check["within_tolerance"])
        trials.append(Trial(decoding, rep["values"]["mean_oa"] or 0.0, misses, rep))
    ranked = choose(trials, next(t for t in trials if t.decoding.effective == default), min_gain)
    return ranked[0].decoding, ranked


def ceiling(real: Sequence[PianoRoll], reference: Sequence[PianoRoll], encoding: Encoding,
            decoding: Decoding) -> tuple[float, float]:
    """(cut, uncut): the mean OA against ``reference`` of the ``real`` rolls read back through
    ``decoding``, and of the same rolls as they are (a real-vs-real ceiling).

    On real 0/1 cells the thresholds change nothing and ``fill`` never fires, so the gap is what
    the shortest sound deletes from the music itself: no model decoded this way can be expected to
    score more than ``cut``. Take ``real`` from other pieces than ``reference``, or the ceiling
    flatters. On folk ``min_length`` 2 deletes a fifth of the notes of real tunes and costs about
    0.05 of mean OA; on the chorales almost nothing (docs/results.md, "Choosing a decoding").
    """
    from apollo.evaluate import compare  # as in calibrate: generate should not load the evaluation code

    read_back = [decoding.decode(roll.encode(encoding).astype(np.float32), encoding, roll.grid, roll.tempo)
                 for roll in real]
    return compare(read_back, reference)["mean_oa"], compare(real, reference)["mean_oa"]
