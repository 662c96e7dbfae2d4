"""How good are generated rolls? One comparison against real music, shared by ``apollo evaluate``,
the trainer and the baselines.

:func:`compare` is the whole measurement as a flat ``dict[str, float]``:

- ``mean_oa``: mean over the MGEval features (:data:`apollo.mgeval.FEATURES`) of the overlapped area (:mod:`apollo.mgeval`),
  ``oa/<feature>`` and ``kl/<feature>`` for each;
- ``<metric>``: the generated set's mean of each per-sample metric (:mod:`apollo.metrics`), and
  ``real/<metric>`` the reference set's, so a report can say "within 10 % of real";
- ``diversity``: the mean pairwise distance ``1 - overlap`` within the set, and
  ``near_duplicate_rate``: the share of samples with another sample of the set at overlap ≥ 0.8
  (mode collapse), each with its ``real/`` value;
- with a training set: ``memorization_rate``, the share of samples whose best overlap with any
  training chunk, over transpositions of -12..12 semitones, is ≥ 0.8, with ``mean_training_overlap``
  and ``max_training_overlap``; the ``real/`` values measure the reference set the same way (how
  much real unseen music overlaps the training set by nature).

*Overlap* is the Dice coefficient (F1) of sounding cells, ``2 |A ∩ B| / (|A| + |B|)``: 1 for the same
cells, 0 for none in common; two silent rolls overlap 1. Onsets are ignored, so re-articulating a
copied chunk does not hide the copy.

:func:`report` adds the inputs and the tolerance checks for a JSON file; :func:`load_rolls` reads a
dataset split or a folder of MIDI files (cut into chunks) for the command line.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from apollo import __version__, mgeval
from apollo.errors import ApolloError, MidiError
from apollo.metrics import BEATS_PER_BAR, METRICS, Facts, sample_metrics
from apollo.roll import SILENT, Grid, PianoRoll

__all__ = [
    "CHECKED",
    "DEFAULT_N_STEPS",
    "OVERLAP_THRESHOLD",
    "SHIFTS",
    "RATE_TOLERANCE",
    "TOLERANCE",
    "RollSet",
    "best_overlap",
    "chunk",
    "compare",
    "diversity",
    "evaluate_paths",
    "format_report",
    "load_rolls",
    "memorization",
    "near_duplicate_rate",
    "overlap_matrix",
    "report",
    "subset",
]

DEFAULT_N_STEPS = 256  # chunk length when neither side is a dataset that says otherwise
OVERLAP_THRESHOLD = 0.8  # at or above: a near-duplicate (within the set) or a copy (of training)
SHIFTS = range(-12, 13)  # transpositions searched for memorization, in semitones
TOLERANCE = 0.10  # "within 10 % of real"
# A rate near 0 (empty bars, parallels) is also "within" when it is this close to real in absolute terms:
# 10 % of a real 0.013 would fail a generated 0.015.
RATE_TOLERANCE = 0.01
_BLOCK = 1024  # training chunks per matrix product (at most 64 MB of float32 for 64 x 256 rolls)
_SAMPLE_FLOATS = 1 << 24  # transposed samples per matrix product, in float32 cells (64 MB)


# -- overlap, diversity, memorization ---------------------------------------------------------


def _check_alike(rolls: Sequence[PianoRoll]) -> None:
    """Raise ValueError unless all rolls have one shape and one grid (comparing them means something)."""
    shapes = {r.cells.shape for r in rolls}
    if len(shapes) > 1:
        raise ValueError(f"rolls must all have one shape to be compared, got {sorted(shapes)}")
    grids = {r.grid for r in rolls}
    if len(grids) > 1:
        raise ValueError(f"rolls must all lie on one grid to be compared, got {len(grids)} grids")


def _sounding(rolls: Sequence[PianoRoll]) -> np.ndarray:
    """Sounding cells of alike rolls, bool [n, n_pitches, n_steps]."""
    _check_alike(rolls)
    if not rolls:
        return np.zeros((0, 0, 0), dtype=bool)
    return np.stack([r.cells > SILENT for r in rolls])


def _products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` for float32 matrices, through torch (steadier than numpy's BLAS on small blocks)."""
    import torch

    return (torch.from_numpy(a) @ torch.from_numpy(b).T).numpy()


def _dice(intersection: np.ndarray, size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    total = size_a[:, None] + size_b[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * intersection / total, 1.0)


def overlap_matrix(a: Sequence[PianoRoll], b: Sequence[PianoRoll]) -> np.ndarray:
    """Overlap (Dice of sounding cells, no transposition) of every roll of ``a`` with every roll of ``b``."""
    x, y = _sounding(a), _sounding(b)
    xf = x.reshape(len(x), -1).astype(np.float32)
    yf = y.reshape(len(y), -1).astype(np.float32)
    return _dice(_products(xf, yf), xf.sum(1), yf.sum(1))


def _diversity(self_overlap: np.ndarray) -> float:
    if len(self_overlap) < 2:
        return math.nan
    return float(1.0 - self_overlap[np.triu_indices(len(self_overlap), k=1)].mean())


def _near_duplicate_rate(self_overlap: np.ndarray, threshold: float) -> float:
    if len(self_overlap) < 2:
        return math.nan
    o = self_overlap.copy()
    np.fill_diagonal(o, -1.0)
    return float(np.mean(o.max(axis=1) >= threshold))


def diversity(rolls: Sequence[PianoRoll]) -> float:
    """Mean of ``1 - overlap`` over all pairs of distinct rolls (0 = all identical; nan below 2 rolls)."""
    return _diversity(overlap_matrix(rolls, rolls))


def near_duplicate_rate(rolls: Sequence[PianoRoll], threshold: float = OVERLAP_THRESHOLD) -> float:
    """Share of rolls that overlap some *other* roll of the set by at least ``threshold``."""
    return _near_duplicate_rate(overlap_matrix(rolls, rolls), threshold)


def best_overlap(
    samples: Sequence[PianoRoll], training: Sequence[PianoRoll], shifts: Sequence[int] = SHIFTS
) -> np.ndarray:
    """Each sample's highest overlap with any training roll, over transpositions by ``shifts``.

    A sample transposed by ``k`` moves ``k`` rows up; cells pushed off the grid are lost (and
    still count in the sample's size). All transpositions of a block of samples are stacked and
    met with a block of training rolls in one float32 matrix product of flattened sounding
    planes, cropped to the pitch rows the training set uses: about 0.5 s for 64 samples and
    2-5 s for 256 against the 605 chorale training chunks on two shared cores.
    """
    x, y = _sounding(samples), _sounding(training)
    if len(x) and len(y) and x.shape[1:] != y.shape[1:]:
        raise ValueError(f"samples {x.shape[1:]} and training rolls {y.shape[1:]} differ in shape")
    best = np.zeros(len(x))
    if not len(x) or not len(y):
        return best
    shifts = list(shifts)
    used = np.flatnonzero(y.any(axis=(0, 2)))
    lo, hi = (used[0], used[-1] + 1) if len(used) else (0, 1)
    pad = max(abs(k) for k in shifts)
    padded = np.pad(x, ((0, 0), (pad, pad), (0, 0)))  # row p of x transposed by k is padded[p - k + pad]
    size_x = x.sum(axis=(1, 2)).astype(np.float32)
    per_block = max(1, _SAMPLE_FLOATS // (len(shifts) * (hi - lo) * x.shape[2]))
    for t0 in range(0, len(y), _BLOCK):
        train = y[t0 : t0 + _BLOCK, lo:hi].reshape(-1, (hi - lo) * y.shape[2]).astype(np.float32)
        size_y = train.sum(axis=1)
        for s0 in range(0, len(x), per_block):
            block = padded[s0 : s0 + per_block]
            stacked = np.stack([block[:, lo - k + pad : hi - k + pad] for k in shifts], axis=1)
            flat = stacked.reshape(len(block) * len(shifts), -1).astype(np.float32)
            sizes = np.repeat(size_x[s0 : s0 + per_block], len(shifts))
            dice = _dice(_products(flat, train), sizes, size_y).reshape(len(block), -1)
            best[s0 : s0 + per_block] = np.maximum(best[s0 : s0 + per_block], dice.max(axis=1))
    return best


def memorization(
    samples: Sequence[PianoRoll], training: Sequence[PianoRoll], threshold: float = OVERLAP_THRESHOLD
) -> dict[str, float]:
    """``memorization_rate`` (share of samples with best training overlap ≥ ``threshold``),
    ``mean_training_overlap`` and ``max_training_overlap``."""
    best = best_overlap(samples, training)
    if not len(best):
        return {"memorization_rate": math.nan, "mean_training_overlap": math.nan, "max_training_overlap": math.nan}
    return {
        "memorization_rate": float(np.mean(best >= threshold)),
        "mean_training_overlap": float(best.mean()),
        "max_training_overlap": float(best.max()),
    }


# -- the comparison ----------------------------------------------------------------------------


@dataclass
class _Side:
    """What one set contributes to a comparison, computed once."""

    features: dict[str, np.ndarray]  # mgeval.features
    metrics: dict[str, float]  # mean of each per-sample metric
    diversity: float
    near_duplicate_rate: float


def _side(rolls: Sequence[PianoRoll]) -> _Side:
    facts = [Facts.of(r) for r in rolls]
    values = np.array([list(sample_metrics(f).values()) for f in facts]).reshape(-1, len(METRICS))
    means = {}
    for name, column in zip(METRICS, values.T):
        column = column[~np.isnan(column)]
        means[name] = float(column.mean()) if len(column) else math.nan
    self_overlap = overlap_matrix(rolls, rolls)
    return _Side(
        mgeval.features(facts),
        means,
        _diversity(self_overlap),
        _near_duplicate_rate(self_overlap, OVERLAP_THRESHOLD),
    )


# The trainer compares against the same reference (and training) rolls again and again: what
# depends only on them is kept here, keyed by a hash of their cells, for the last few sets.
_CACHE: dict[tuple, object] = {}
_CACHE_SIZE = 8


def _digest(rolls: Sequence[PianoRoll]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for r in rolls:
        h.update(repr((r.cells.shape, r.grid)).encode())
        h.update(np.ascontiguousarray(r.cells).tobytes())
    return h.hexdigest()


def _cached(key: tuple, compute: Callable[[], object]) -> object:
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = compute()
    return _CACHE[key]


def compare(
    generated: Sequence[PianoRoll],
    reference: Sequence[PianoRoll],
    training: Sequence[PianoRoll] | None = None,
) -> dict[str, float]:
    """Measure ``generated`` against ``reference`` (and ``training``, for memorization).

    Returns the flat dict described in the module docstring. All rolls must share one shape
    (the trainer's samples and the validation split do). Per-sample metrics skip the samples
    where they are undefined (a silent roll has no polyphony); if none is defined, the value is nan.
    What depends only on ``reference`` and ``training`` is cached, so calling again with the same
    real rolls costs only the generated side: about 0.3 s for 64 against 256 on two cores.
    """
    if not generated or not reference:
        raise ValueError("compare needs at least one generated and one reference roll")
    _check_alike([*generated, *reference, *(training or [])])
    ref_key = _digest(reference)
    gen = _side(generated)
    ref = _cached(("side", ref_key), lambda: _side(reference))
    ref_intra = _cached(
        ("intra", ref_key), lambda: {n: mgeval.pairwise_distances(f) for n, f in ref.features.items()}
    )
    oa = mgeval.compare_features(gen.features, ref.features, ref_intra)

    out: dict[str, float] = {"mean_oa": float(np.mean([v["oa"] for v in oa.values()]))}
    for name, v in oa.items():
        out[f"oa/{name}"] = v["oa"]
        out[f"kl/{name}"] = v["kl"]
    for name in METRICS:
        out[name] = gen.metrics[name]
        out[f"real/{name}"] = ref.metrics[name]
    out["diversity"], out["real/diversity"] = gen.diversity, ref.diversity
    out["near_duplicate_rate"], out["real/near_duplicate_rate"] = gen.near_duplicate_rate, ref.near_duplicate_rate
    if training is not None and len(training):
        for name, value in memorization(generated, training).items():
            out[name] = value
        real = _cached(("memorization", ref_key, _digest(training)), lambda: memorization(reference, training))
        for name, value in real.items():
            out[f"real/{name}"] = value
    return out


CHECKED = (*METRICS, "diversity")  # the values that report() checks against "within TOLERANCE of real"


def _within(name: str, value: float, real: float, tolerance: float) -> bool:
    if name.endswith("_rate") and abs(value - real) <= RATE_TOLERANCE:
        return True
    return bool(abs(_relative_difference(value, real)) <= tolerance)


def _relative_difference(value: float, real: float) -> float:
    if math.isnan(value) or math.isnan(real):
        return math.nan
    if real == 0:
        return 0.0 if value == 0 else math.inf
    return (value - real) / abs(real)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def report(
    generated: Sequence[PianoRoll],
    reference: Sequence[PianoRoll],
    training: Sequence[PianoRoll] | None = None,
    *,
    tolerance: float = TOLERANCE,
    sources: dict | None = None,
) -> dict:
    """:func:`compare` plus the checks against real values, as a JSON-ready dict.

    Layout (``docs/metrics.md`` explains every key)::

        {"apollo_version": "...", "tolerance": 0.1,
         "generated": {"n": 64, ...}, "reference": {"n": 256, ...}, "training": {"n": 900, ...} | null,
         "values": {<compare() keys>: number | null},
         "checks": {<metric>: {"generated", "real", "relative_difference", "within_tolerance"}}}

    ``sources`` adds descriptions (path, split, files skipped) under "generated", "reference" and
    "training". Non-finite numbers (nan, inf) are written as null.
    """
    values = compare(generated, reference, training)
    sources = sources or {}
    checks = {}
    for name in CHECKED:
        diff = _relative_difference(values[name], values[f"real/{name}"])
        checks[name] = {
            "generated": _finite_or_none(values[name]),
            "real": _finite_or_none(values[f"real/{name}"]),
            "relative_difference": _finite_or_none(diff),
            "within_tolerance": _within(name, values[name], values[f"real/{name}"], tolerance),
        }
    return {
        "apollo_version": __version__,
        "tolerance": tolerance,
        "generated": {**sources.get("generated", {}), "n": len(generated)},
        "reference": {**sources.get("reference", {}), "n": len(reference)},
        "training": {**sources.get("training", {}), "n": len(training)} if training else None,
        "values": {k: _finite_or_none(v) for k, v in values.items()},
        "checks": checks,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def format_report(rep: dict) -> str:
    """A plain-text table of a :func:`report` for the terminal."""
    v = rep["values"]
    lines = [
        f"generated: {rep['generated'].get('source', '?')} ({rep['generated']['n']} rolls)",
        f"reference: {rep['reference'].get('source', '?')} ({rep['reference']['n']} rolls)",
    ]
    if rep["training"]:
        lines.append(f"training:  {rep['training'].get('source', '?')} ({rep['training']['n']} rolls)")
    width = max(len(n) for n in (*CHECKED, *mgeval.FEATURES)) + 2
    pct = round(rep["tolerance"] * 100)
    lines += ["", f"{'metric':<{width}}{'generated':>10}{'real':>10}{'diff':>10}  within {pct} %"]
    for name, c in rep["checks"].items():
        diff = "—" if c["relative_difference"] is None else f"{100 * c['relative_difference']:+.1f} %"
        lines.append(
            f"{name:<{width}}{_fmt(c['generated']):>10}{_fmt(c['real']):>10}{diff:>10}  "
            + ("yes" if c["within_tolerance"] else "no")
        )
    lines += ["", f"{'feature':<{width}}{'OA':>10}{'KL':>10}"]
    for name in mgeval.FEATURES:
        lines.append(f"{name:<{width}}{_fmt(v[f'oa/{name}']):>10}{_fmt(v[f'kl/{name}']):>10}")
    lines += ["", f"{'mean OA':<{width}}{_fmt(v['mean_oa']):>10}"]
    lines.append(
        f"{'near-duplicate rate':<{width}}{_fmt(v['near_duplicate_rate']):>10}{_fmt(v['real/near_duplicate_rate']):>10}"
    )
    if "memorization_rate" in v:
        lines.append(
            f"{'memorization rate':<{width}}{_fmt(v['memorization_rate']):>10}{_fmt(v['real/memorization_rate']):>10}"
            f"   (max training overlap {_fmt(v['max_training_overlap'], 2)},"
            f" real {_fmt(v['real/max_training_overlap'], 2)})"
        )
    elif rep.get("training_note"):
        lines.append(f"memorization: {rep['training_note']}")
    if rep.get("endings"):
        e = rep["endings"]
        lines.append(f"{'silent last bar':<{width}}{_fmt(e['generated_silent_last_bar']):>10}"
                     f"   (real pieces ending inside a window: {_fmt(e['real_pieces_end_inside_window'])})")
    return "\n".join(lines)


# -- loading ---------------------------------------------------------------------------------


@dataclass
class RollSet:
    """Rolls read from one place, with their grid and chunk length and what was skipped."""

    rolls: list[PianoRoll]
    grid: Grid
    n_steps: int
    source: dict = field(default_factory=dict)


def stretches(roll: PianoRoll, n_steps: int, hop: int) -> list[PianoRoll]:
    """Every whole ``n_steps`` window of real music inside a piece, one every ``hop`` steps from its
    first bar with a note; none for a piece shorter than a window. What generated pieces are judged
    against: music, never padding (the validation and test splits of a dataset are cut the same way)."""
    bar = BEATS_PER_BAR * roll.grid.steps_per_beat
    sounding = np.flatnonzero((roll.cells > SILENT).any(axis=0))
    if not len(sounding):
        return []
    begin, last = sounding[0] // bar * bar, -(-(sounding[-1] + 1) // bar) * bar
    return [roll.slice(a, a + n_steps).pad(n_steps) for a in range(begin, last - n_steps + 1, hop)]


def chunk(roll: PianoRoll, n_steps: int) -> list[PianoRoll]:
    """A piece as ``n_steps`` chunks: consecutive, from step 0, padded with silence at the end.

    A piece no longer than a chunk is one chunk (its trailing silence restored: MIDI files end at
    the last note). Of a longer piece, a final partial chunk is kept (padded) only if it fills at
    least half a chunk, so a few steps of overhang do not become a nearly silent sample.
    """
    if roll.n_steps <= n_steps:
        return [roll.pad(n_steps)]
    chunks = []
    for start in range(0, roll.n_steps, n_steps):
        if roll.n_steps - start >= n_steps // 2:
            chunks.append(roll.slice(start, start + n_steps).pad(n_steps))
    return chunks


def _is_dataset(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def _midi_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())


def load_rolls(
    path: str | Path,
    *,
    split: str = "val",
    grid: Grid | None = None,
    n_steps: int | None = None,
    real: bool = False,
) -> RollSet:
    """The rolls at ``path``: one split of a dataset (a folder with ``manifest.json``), or a MIDI
    file or folder of MIDI files (searched recursively) read on ``grid``. Generated pieces are cut
    by :func:`chunk` (a piece that stops early keeps its silence); ``real`` music by
    :func:`stretches` (whole windows, one per bar; ``source["shorter_than_window"]`` counts the
    pieces that give none).

    Unreadable MIDI files are skipped and listed in ``source["skipped"]``. Raises
    :class:`~apollo.errors.ApolloError` when the path is missing or holds nothing usable.
    """
    path = Path(path)
    if not path.exists():
        raise ApolloError(f"{path}: no such file or folder")
    if path.is_dir() and _is_dataset(path):
        from apollo.dataset import RollDataset

        dataset = RollDataset(path, split=split)
        rolls = dataset.rolls()
        if not rolls:
            raise ApolloError(f"{path}: the {split} split is empty")
        config, files = dataset.config, dataset.manifest["files"]
        source = {"source": str(path), "split": split}
        if real:  # the split's pieces, those that give no window included (they count for endings)
            lengths = [n for n, s in zip(files["n_steps"], files["split"]) if s == split]
            source.update(pieces=len(lengths), shorter_than_window=sum(n < config.n_steps for n in lengths))
        return RollSet(rolls, config.grid, config.n_steps, source)
    files = _midi_files(path)
    if not files:
        raise ApolloError(f"{path}: no MIDI files (.mid, .midi) and no dataset (manifest.json) here")
    grid = grid or Grid()
    n_steps = n_steps or DEFAULT_N_STEPS
    rolls, skipped, short = [], [], 0
    for file in files:
        try:
            roll = PianoRoll.from_midi(file, grid)
        except MidiError as error:
            skipped.append({"file": str(file.relative_to(path)) if path.is_dir() else file.name, "reason": str(error)})
            continue
        cut = stretches(roll, n_steps, BEATS_PER_BAR * grid.steps_per_beat) if real else chunk(roll, n_steps)
        short += not cut
        rolls += cut
    if not rolls:
        if not short:
            raise ApolloError(f"{path}: none of the {len(files)} MIDI files could be read ({skipped[0]['reason']})")
        raise ApolloError(f"{path}: no whole {n_steps}-step stretch of music: its {short} readable pieces are shorter")
    source = {"source": str(path), "files": len(files), "skipped": skipped}
    if real:
        source.update(pieces=len(files) - len(skipped), shorter_than_window=short)
    return RollSet(rolls, grid, n_steps, source)


def subset(rolls: list[PianoRoll], limit: int | None, rng: np.random.Generator) -> list[PianoRoll]:
    """At most ``limit`` of ``rolls`` (all where ``limit`` is None), drawn with ``rng``, in their order."""
    if limit is None or len(rolls) <= limit:
        return rolls
    return [rolls[i] for i in sorted(rng.choice(len(rolls), size=limit, replace=False))]


def endings(generated: Sequence[PianoRoll], ref: RollSet) -> dict:
    """Where pieces end, measured on its own rather than as empty bars: the share of generated
    rolls whose last bar is silent, and the share of the reference's pieces (read with ``real``)
    that end inside one window, which is how often a real piece of this corpus would stop there."""
    last_bar = BEATS_PER_BAR * ref.grid.steps_per_beat
    silent_end = np.mean([not (r.cells[:, -last_bar:] > SILENT).any() for r in generated])
    pieces = ref.source["pieces"]
    real_end = ref.source["shorter_than_window"] / pieces if pieces else math.nan
    return {"generated_silent_last_bar": float(silent_end), "real_pieces_end_inside_window": _finite_or_none(float(real_end))}


def evaluate_paths(
    generated: str | Path,
    reference: str | Path,
    *,
    split: str = "val",
    generated_split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> dict:
    """What ``apollo evaluate`` does: load both sides, compare, and return the :func:`report`.

    ``reference`` is a dataset (its ``split`` is the reference, its train split the training set
    for memorization) or MIDI files (then memorization is not measured). ``generated`` is MIDI
    files, read on the reference's grid, or a dataset, whose ``generated_split`` is used. At most
    ``limit`` rolls of each side are used, drawn at random with ``seed``. Memorization is left out
    when the generated rolls *are* the training split (the real-vs-real ceiling).
    """
    for path in (generated, reference):
        if not Path(path).exists():
            raise ApolloError(f"{path}: no such file or folder")
    ref = load_rolls(reference, split=split, real=True)
    gen = load_rolls(generated, split=generated_split, grid=ref.grid, n_steps=ref.n_steps)
    if gen.rolls[0].cells.shape != ref.rolls[0].cells.shape:
        raise ApolloError(
            f"{generated} has rolls of shape {gen.rolls[0].cells.shape}, {reference} of {ref.rolls[0].cells.shape}"
        )
    training, note = None, None
    if _is_dataset(Path(reference)):
        same = _is_dataset(Path(generated)) and Path(generated).resolve() == Path(reference).resolve()
        if same and generated_split == "train":
            note = "not measured: the generated rolls are the training split"
        else:
            training = ref.rolls if split == "train" else load_rolls(reference, split="train").rolls
    else:
        note = "not measured: the reference is not a dataset, so there is no training split"
    rng = np.random.default_rng(seed)
    gen_rolls, ref_rolls = subset(gen.rolls, limit, rng), subset(ref.rolls, limit, rng)
    sources = {"generated": gen.source, "reference": ref.source}
    if training is not None:
        sources["training"] = {"source": str(reference), "split": "train"}
    rep = report(gen_rolls, ref_rolls, training, tolerance=tolerance, sources=sources)
    rep["endings"] = endings(gen_rolls, ref)
    rep["seed"] = seed
    if note:
        rep["training_note"] = note
    return rep
