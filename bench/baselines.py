"""The rows of docs/results.md: models beside the real-vs-real ceiling and two baselines, on one split.

Every row goes through :func:`apollo.evaluate.evaluate_paths`, the code behind ``apollo evaluate``,
against the dataset's **test** split (``--split``; the validation split is for choosing):

- ceiling: real music against real music: one stretch of each validation piece (drawn per seed,
  :func:`one_stretch_per_piece`) measured against the test split, what a model indistinguishable
  from the corpus would score;
- a model (``--model LABEL=CHECKPOINT``, repeatable): ``n`` pieces of one window generated with
  seeds ``seed * 1000 + i``, written as MIDI, as ``apollo generate --n N --seed S`` writes them;
- random: density-matched random rolls (:func:`apollo.markov.random_rolls`), written as MIDI;
- markov: a first-order Markov chain fitted on the training split (:class:`apollo.markov.MarkovChain`),
  sampled and written as MIDI.

Each row is measured for several seeds (a different draw of the ``n`` rolls each time); the
tables give the mean over seeds and, for mean OA, the spread (min..max). Usage::

    python bench/baselines.py datasets/bach-chorales -o out/table-chorales
    python bench/baselines.py datasets/folk -o out/table-folk --model default=runs/NAME/checkpoints/best.pt

It writes ``<row>-seed<k>/`` MIDI folders, ``<row>-seed<k>.json`` reports (the layout of
``apollo evaluate --json``) and ``tables.md``, and prints the tables. A report already in the
folder is read, not measured again, so a second run with another ``--model`` adds only its row. Each baseline folder can be
measured again with ``apollo evaluate OUT/markov-seed0 --reference DATASET --limit N --seed 0``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from apollo.dataset import RollDataset
from apollo.errors import ApolloError
from apollo.evaluate import CHECKED, evaluate_paths
from apollo.generate import generate
from apollo.io import write_json
from apollo.markov import MarkovChain, random_rolls
from apollo.mgeval import FEATURES

BASELINES = ("ceiling", "random", "markov")
SHORT = {
    "empty_bar_rate": "EB",
    "used_pitch_classes": "UPC",
    "qualified_note_rate": "QN",
    "polyphony": "poly",
    "polyphony_rate": "PR",
    "pitch_class_entropy": "PCE",
    "scale_consistency": "scale",
    "groove_consistency": "groove",
    "pitch_range": "range",
    "note_density": "notes/bar",
    "voice_step": "step",
    "parallel_rate": "par",
    "top_pitch_share": "top",
    "count_change_rate": "changes",
    "diversity": "div",
}


def write_midi(rolls, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, roll in enumerate(rolls):
        roll.to_midi(folder / f"{i:04d}.mid")
    return folder


def one_stretch_per_piece(dataset: Path, seed: int) -> list:
    """One validation stretch of each validation piece, drawn with ``seed``.

    Stretches of one piece overlap (one starts every bar) and share its key, motifs and texture; a
    set holding many of them is far more alike inside than independent samples are, which drags
    MGEval's overlapped area down (0.81 instead of 0.87-0.90 on bach-chorales). A model's samples
    are independent, so the ceiling takes one stretch per piece.
    """
    val = RollDataset(dataset, split="val")
    files = val.provenance["file"]
    rng = np.random.default_rng(seed)
    chosen = [int(rng.choice(np.flatnonzero(files == f))) for f in np.unique(files)]
    return val.rolls(chosen)


def measure(dataset: Path, out: Path, n: int, seeds: list[int], models: dict[str, str],
            split: str = "test") -> dict[str, list[dict]]:
    train = RollDataset(dataset, split="train").rolls()
    n_steps = train[0].n_steps
    t0 = time.perf_counter()
    chain = MarkovChain.fit(train)
    print(f"markov: {chain.n_states} states from {len(train)} training chunks in {time.perf_counter() - t0:.1f} s")
    rows = [*BASELINES, *models]
    reports: dict[str, list[dict]] = {row: [] for row in rows}
    for seed in seeds:
        for row in rows:
            t0 = time.perf_counter()
            done = out / f"{row}-seed{seed}.json"
            if done.is_file():  # measured by an earlier run into this folder: rerunning adds rows
                reports[row].append(json.loads(done.read_text()))
                continue
            if row == "ceiling":
                generated = write_midi(one_stretch_per_piece(dataset, seed), out / f"{row}-seed{seed}")
            elif row == "random":
                generated = write_midi(random_rolls(n, train, n_steps, seed=seed), out / f"{row}-seed{seed}")
            elif row == "markov":
                generated = write_midi(chain.sample(n, n_steps, seed=seed), out / f"{row}-seed{seed}")
            else:
                generated = out / f"{row}-seed{seed}"
                # The model's own music: real stretches do not end, so neither do these (no held last chord).
                generate(generated / "piece.mid", checkpoint=models[row], n=n, seed=seed * 1000, ending="none")
            rep = evaluate_paths(generated, dataset, split=split, limit=n, seed=seed)
            rep["row"] = row
            write_json(out / f"{row}-seed{seed}.json", rep)
            reports[row].append(rep)
            print(f"{row:8s} seed {seed}: mean OA {rep['values']['mean_oa']:.3f} ({time.perf_counter() - t0:.1f} s)")
    return reports


def _mean(reports: list[dict], key: str) -> float | None:
    values = [r["values"].get(key) for r in reports]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _cell(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def tables(reports: dict[str, list[dict]]) -> str:
    """Markdown: the headline table, the musical metrics, and OA per feature."""
    first = reports["ceiling"][0]
    n_gen = max(reps[0]["generated"]["n"] for reps in reports.values())
    n_ref, n_ceiling = first["reference"]["n"], first["generated"]["n"]
    lines = [
        f"{n_gen} generated rolls per seed ({n_ceiling} for the ceiling) against {n_ref} "
        f"{first['reference'].get('split', '')} rolls; "
        f"seeds {', '.join(str(r['seed']) for r in reports['ceiling'])}; mean over seeds.",
        "",
        "| row | mean OA (min..max) | metrics within 10 % | diversity | near-duplicates | memorization (max overlap) |",
        "|---|---|---|---|---|---|",
    ]
    for row, reps in reports.items():
        oas = [r["values"]["mean_oa"] for r in reps]
        within = np.mean([sum(c["within_tolerance"] for c in r["checks"].values()) for r in reps])
        memo = _mean(reps, "memorization_rate")
        memo_cell = "not measured" if memo is None else f"{memo:.3f} ({_cell(_mean(reps, 'max_training_overlap'), 2)})"
        lines.append(
            f"| {row} | {np.mean(oas):.3f} ({min(oas):.3f}..{max(oas):.3f}) | {within:.1f} / {len(CHECKED)} | "
            f"{_cell(_mean(reps, 'diversity'))} | {_cell(_mean(reps, 'near_duplicate_rate'))} | {memo_cell} |"
        )
    real_memo = _mean(reports["markov"], "real/memorization_rate")
    lines.append(
        f"| real (reference) | — | — | {_cell(_mean(reports['ceiling'], 'real/diversity'))} | "
        f"{_cell(_mean(reports['ceiling'], 'real/near_duplicate_rate'))} | "
        f"{_cell(real_memo)} ({_cell(_mean(reports['markov'], 'real/max_training_overlap'), 2)}) |"
    )

    lines += ["", "| row | " + " | ".join(SHORT[m] for m in CHECKED) + " |", "|---" * (len(CHECKED) + 1) + "|"]
    for row, reps in reports.items():
        lines.append(f"| {row} | " + " | ".join(_cell(_mean(reps, m), 2) for m in CHECKED) + " |")
    real = [_cell(_mean(reports["ceiling"], f"real/{m}"), 2) for m in CHECKED]
    lines.append("| real (reference) | " + " | ".join(real) + " |")

    lines += ["", "| row | " + " | ".join(FEATURES) + " |", "|---" * (len(FEATURES) + 1) + "|"]
    for row, reps in reports.items():
        lines.append(f"| {row} | " + " | ".join(_cell(_mean(reps, f"oa/{f}"), 2) for f in FEATURES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="a dataset folder made by apollo preprocess")
    parser.add_argument("-o", "--out", type=Path, default=Path("out/baselines"))
    parser.add_argument("-n", type=int, default=256, help="generated rolls per row and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--split", default="test", choices=["test", "val"], help="the reference split")
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=CHECKPOINT",
                        help="a model row: a training checkpoint, an exported model or 'bundled'")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.model):
        parser.error("--model takes LABEL=CHECKPOINT, e.g. --model bundled=bundled")
    models = dict(item.split("=", 1) for item in args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    reports = measure(args.dataset, args.out, args.n, args.seeds, models, args.split)
    text = tables(reports)
    (args.out / "tables.md").write_text(text + "\n")
    print()
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ApolloError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted; the rows finished so far are in their JSON files")
