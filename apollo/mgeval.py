"""Set-level comparison after Yang & Lerch 2018 ("On the evaluation of generative models in music").

Each roll is described by ten *features* (:data:`FEATURES`). For every feature Apollo collects
three distributions of Euclidean distances between feature vectors:

- intra-set of the generated set (all pairs ``i < j``),
- intra-set of the reference set,
- inter-set (every generated sample against every reference sample),

smooths each with a Gaussian kernel density estimate, evaluates **all of them on one shared grid with one bandwidth**,
and compares the generated intra-set density ``p`` with the inter-set density ``q``:

- overlapped area ``OA = ∫ min(p, q) dx`` (1 = indistinguishable, 0 = disjoint),
- ``KL(p || q) = ∫ p log(p / q) dx`` in nats.

If the generated set were drawn from the reference distribution, a generated sample would be as far
from the other generated samples as from the reference ones, so ``p ≈ q`` and OA ≈ 1. A collapsed set
(intra distances near 0) or one far from the reference (inter distances large) lowers OA.

Pitfalls of MGEval's released code that this module avoids: its ``kl_dist`` evaluates the two
densities on two *different* grids (each set's own min..max), so the numbers it divides do not belong
to the same ``x``; its ``overlap_area`` integrates only over the range of the data, losing the
tails, so identical sets score below 1; and a set whose distances are all equal (mode collapse)
makes ``scipy.stats.gaussian_kde`` fail on a singular covariance. Here the grid is shared and covers
every density's tails, and the bandwidth is shared and has a floor (see :func:`shared_grid`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from apollo.metrics import Facts, Roll, follow_pairs, successors

__all__ = [
    "FEATURES",
    "LENGTH_CLASSES",
    "MAX_VOICE_STEP",
    "GRID_POINTS",
    "features",
    "pairwise_distances",
    "bandwidth",
    "shared_grid",
    "kde",
    "overlapped_area",
    "kl_divergence",
    "compare_features",
]

# Note-length classes in beats, from the sixteenth to "two bars or more". A note falls in the
# longest class not longer than itself (shorter than a sixteenth: the first class).
LENGTH_CLASSES = np.array([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0])
MAX_VOICE_STEP = 12  # voice-step classes: 0, 1, ..., 12 semitones, then one class for every larger leap
GRID_POINTS = 1024


def _normalized(x: np.ndarray) -> np.ndarray:
    total = x.sum()
    return x / total if total else x


def _length_class(start: np.ndarray, end: np.ndarray, steps_per_beat: int) -> np.ndarray:
    beats = (end - start) / steps_per_beat
    return np.maximum(np.searchsorted(LENGTH_CLASSES, beats, side="right") - 1, 0)


def pitch_count(roll: Roll) -> np.ndarray:
    """PC: number of distinct pitches that sound."""
    return np.array([float(Facts.of(roll).sounding.any(axis=1).sum())])


def pitch_class_histogram(roll: Roll) -> np.ndarray:
    """PCH [12]: share of notes in each pitch class (all zeros without notes)."""
    return _normalized(np.bincount(Facts.of(roll).pitch % 12, minlength=12).astype(np.float64))


def pitch_class_transition(roll: Roll) -> np.ndarray:
    """PCTM [144]: share of note-to-note transitions from pitch class i to j (row-major 12 x 12).

    A transition is a pair of notes where the second starts on the step where the first ends
    (pretty_midi's rule with a time threshold of zero steps), so a chord moving to a chord counts
    every voice pair.
    """
    f = Facts.of(roll)
    a, b = follow_pairs(f.start, f.end)
    m = np.zeros((12, 12))
    np.add.at(m, (f.pitch[a] % 12, f.pitch[b] % 12), 1.0)
    return _normalized(m).ravel()


def pitch_range(roll: Roll) -> np.ndarray:
    """PR: highest minus lowest sounding pitch in semitones (0 if silent)."""
    rows = np.flatnonzero(Facts.of(roll).sounding.any(axis=1))
    return np.array([float(rows[-1] - rows[0]) if len(rows) else 0.0])


def pitch_interval(roll: Roll) -> np.ndarray:
    """PI: mean absolute interval in semitones between consecutive notes ordered by (start, pitch).

    As MGEval's ``avg_pitch_shift``; nan with fewer than two notes.
    """
    pitch = Facts.of(roll).pitch
    return np.array([float(np.abs(np.diff(pitch)).mean()) if len(pitch) > 1 else np.nan])


def note_count(roll: Roll) -> np.ndarray:
    """NC: number of notes."""
    return np.array([float(len(Facts.of(roll).pitch))])


def inter_onset_interval(roll: Roll) -> np.ndarray:
    """IOI: mean time in beats between consecutive distinct onset steps (nan with fewer than two).

    MGEval diffs the onsets of all notes, so each chord adds zero-length intervals and the value
    depends on how many voices there are; distinct onset times measure rhythm only.
    """
    f = Facts.of(roll)
    times = np.unique(f.start)
    steps = np.diff(times).mean() if len(times) > 1 else np.nan
    return np.array([float(steps) / f.grid.steps_per_beat])


def note_length_histogram(roll: Roll) -> np.ndarray:
    """NLH [9]: share of notes in each class of :data:`LENGTH_CLASSES`."""
    f = Facts.of(roll)
    classes = _length_class(f.start, f.end, f.grid.steps_per_beat)
    return _normalized(np.bincount(classes, minlength=len(LENGTH_CLASSES)).astype(np.float64))


def note_length_transition(roll: Roll) -> np.ndarray:
    """NLTM [81]: share of note-to-note transitions (as in PCTM) from length class i to j."""
    f = Facts.of(roll)
    classes = _length_class(f.start, f.end, f.grid.steps_per_beat)
    a, b = follow_pairs(f.start, f.end)
    n = len(LENGTH_CLASSES)
    m = np.zeros((n, n))
    np.add.at(m, (classes[a], classes[b]), 1.0)
    return _normalized(m).ravel()


def voice_step(roll: Roll) -> np.ndarray:
    """VS [14]: share of voice steps of 0, 1, ..., 12 and more than 12 semitones.

    A voice step is ``|b - a|`` from each note ``a`` to its successor ``b`` in its voice (the
    note starting when it ends, nearest in pitch: :func:`apollo.metrics.successors`). All zeros
    when no note has a successor.
    """
    f = Facts.of(roll)
    succ = successors(f)
    has = succ >= 0
    pitch = f.pitch.astype(np.int64)
    steps = np.minimum(np.abs(pitch[succ[has]] - pitch[has]), MAX_VOICE_STEP + 1)
    return _normalized(np.bincount(steps, minlength=MAX_VOICE_STEP + 2).astype(np.float64))


# name -> function returning a 1-D float vector; the order of every table.
FEATURES: dict[str, Callable[[Roll], np.ndarray]] = {
    "pitch_count": pitch_count,
    "pitch_class_histogram": pitch_class_histogram,
    "pitch_class_transition": pitch_class_transition,
    "pitch_range": pitch_range,
    "pitch_interval": pitch_interval,
    "note_count": note_count,
    "inter_onset_interval": inter_onset_interval,
    "note_length_histogram": note_length_histogram,
    "note_length_transition": note_length_transition,
    "voice_step": voice_step,
}


def features(rolls: Sequence[Roll]) -> dict[str, np.ndarray]:
    """Every feature of every roll: name -> float array [n_rolls, dim]."""
    facts = [Facts.of(r) for r in rolls]
    return {
        name: np.array([fn(f) for f in facts], dtype=np.float64).reshape(len(facts), -1)
        for name, fn in FEATURES.items()
    }


def pairwise_distances(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances between rows: all pairs ``i < j`` of ``x``, or every row of ``x`` to every row of ``y``.

    Rows with a nan (an undefined feature) are left out. Returns a flat float array.
    """
    x = x[~np.isnan(x).any(axis=1)]
    other = x if y is None else y[~np.isnan(y).any(axis=1)]
    # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, in blocks of rows so memory stays n_other per row.
    out = []
    sq_other = (other**2).sum(axis=1)
    for lo in range(0, len(x), 512):
        block = x[lo : lo + 512]
        d2 = (block**2).sum(axis=1)[:, None] + sq_other[None] - 2.0 * block @ other.T
        d = np.sqrt(np.maximum(d2, 0.0))
        if y is None:  # keep j > i only
            rows = np.arange(lo, lo + len(block))[:, None]
            d = d[np.arange(len(other))[None] > rows]
        out.append(d.ravel())
    return np.concatenate(out) if out else np.zeros(0)


def bandwidth(samples: np.ndarray, floor: float) -> float:
    """Scott's rule for one dimension, ``std * n ** (-1/5)`` (scipy's default), but at least ``floor``."""
    if len(samples) < 2:
        return floor
    return max(float(samples.std(ddof=1)) * len(samples) ** -0.2, floor)


def shared_grid(*samples: np.ndarray, n_points: int = GRID_POINTS) -> tuple[np.ndarray, float]:
    """One grid and one bandwidth for the densities of all ``samples``.

    The bandwidth is the widest of their Scott bandwidths, at least 2 % of the largest value
    (1 if all are 0), so the sparsest set is smoothed enough and no set is a spike. Using one
    bandwidth matters: with each set's own, two sets of the same distribution but different sizes
    (64 x 63 / 2 intra-set against 64 x 256 inter-set distances) are smoothed differently and
    overlap less than they should. The grid spans every sample ± 4 bandwidths, so each density
    has its tails on it.
    """
    nonempty = [s for s in samples if len(s)]
    pooled = np.concatenate(nonempty) if nonempty else np.zeros(1)
    floor = 0.02 * (float(pooled.max() - min(pooled.min(), 0.0)) or 1.0)
    h = max(bandwidth(s, floor) for s in samples) if samples else floor
    return np.linspace(pooled.min() - 4 * h, pooled.max() + 4 * h, n_points), h


def kde(samples: np.ndarray, grid: np.ndarray, h: float) -> np.ndarray:
    """Gaussian kernel density of ``samples`` with bandwidth ``h`` on an evenly spaced ``grid``.

    Samples are linearly binned onto the grid, then convolved with the Gaussian kernel
    (exact up to the binning, which is far finer than the bandwidth). Integrates to 1 on the grid.
    """
    if not len(samples):
        return np.zeros_like(grid)
    dx = grid[1] - grid[0]
    pos = np.clip((samples - grid[0]) / dx, 0, len(grid) - 1 - 1e-9)
    left = pos.astype(np.int64)
    frac = pos - left
    counts = np.bincount(left, 1 - frac, minlength=len(grid))
    counts += np.bincount(left + 1, frac, minlength=len(grid) + 1)[: len(grid)]
    half = min((len(grid) - 1) // 2, int(np.ceil(5 * h / dx)))  # the kernel is no longer than the grid
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * dx / h) ** 2)
    density = np.convolve(counts, kernel, mode="same")
    return density / (density.sum() * dx)


def overlapped_area(p: np.ndarray, q: np.ndarray, grid: np.ndarray) -> float:
    """``∫ min(p, q) dx`` on the grid (0..1 for densities)."""
    return float(np.minimum(p, q).sum() * (grid[1] - grid[0]))


def kl_divergence(p: np.ndarray, q: np.ndarray, grid: np.ndarray, eps: float = 1e-10) -> float:
    """``KL(p || q)`` in nats on the grid; ``eps`` keeps it finite where q vanishes."""
    dx = grid[1] - grid[0]
    p = p * dx + eps
    q = q * dx + eps
    p, q = p / p.sum(), q / q.sum()
    return float((p * np.log(p / q)).sum())


def compare_features(
    generated: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    reference_intra: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """OA and KL per feature, on one grid per feature shared by all three densities.

    ``generated`` and ``reference`` are :func:`features` outputs. ``reference_intra`` may pass
    precomputed reference intra-set distances (they depend on the reference only). Returns
    name -> ``{"oa", "kl", "oa_reference", "kl_reference"}``: ``oa``/``kl`` compare the generated
    intra-set density with the inter-set one (the headline numbers), ``oa_reference``/``kl_reference``
    the reference intra-set density with the inter-set one (Yang & Lerch report both). A side with
    fewer than two defined values gets OA 0 and KL inf: nothing to compare is a failure.
    """
    out = {}
    for name in FEATURES:
        intra_gen = pairwise_distances(generated[name])
        intra_ref = reference_intra[name] if reference_intra else pairwise_distances(reference[name])
        inter = pairwise_distances(generated[name], reference[name])
        row = {"oa": 0.0, "kl": float("inf"), "oa_reference": 0.0, "kl_reference": float("inf")}
        if len(inter):
            grid, h = shared_grid(intra_gen, intra_ref, inter)
            q = kde(inter, grid, h)
            for suffix, intra in (("", intra_gen), ("_reference", intra_ref)):
                if len(intra):
                    p = kde(intra, grid, h)
                    row["oa" + suffix] = overlapped_area(p, q, grid)
                    row["kl" + suffix] = kl_divergence(p, q, grid)
        out[name] = row
    return out
