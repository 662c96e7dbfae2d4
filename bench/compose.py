"""What starting from your own music is worth, measured on held-out chorales (docs/compose.md).

Every measurement uses the **test** split of a dataset (``apollo preprocess`` keeps whole tunes
out of training): the first 16-bar stretch of each test piece, one per piece.

1. Inversion: the note F1 between each stretch and the generator's best match (every cell known),
   for several search efforts, with the CPU time for one window.
2. Continue (bars 1-8 given, 9-16 made), infill (bars 5-8 made) and harmonize (the top line given):
   the made bars measured with :func:`apollo.evaluate.report` against the real bars at the same
   place in the same pieces, beside the same bars of free pieces from the same model (what the
   given music changes); and the seam: the voice-leading step (:func:`apollo.metrics.voice_step`)
   over the two bars around each boundary, made against real.
3. Harmonize against Bach: the note F1 of the added voices against Bach's own voices below the
   melody.
4. Speed: one 16-bar continue, infill and harmonize, median of five, on this machine's CPU.

It writes ``compose.json`` and ``compose-example.png`` (a test piece, its continuation and its
infill) to ``-o`` and prints the tables of docs/compose.md. Usage::

    python bench/compose.py datasets/bach-chorales -o out/compose
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import asdict, replace
import time
from pathlib import Path

import numpy as np

from apollo.compose import Composer, top_line
from apollo.dataset import RollDataset
from apollo.evaluate import report
from apollo.generate import sample_probabilities
from apollo.image import save_png
from apollo.inversion import Search, invert, note_f1
from apollo.io import write_json
from apollo.metrics import voice_step
from apollo.roll import SILENT, PianoRoll

EFFORTS = [(0, 8), (25, 8), (50, 8), (100, 8), (200, 8), (50, 1), (50, 2), (50, 16)]  # (steps, restarts)


def first_stretch_per_piece(dataset: RollDataset) -> list[PianoRoll]:
    """The first test window of every test piece: one per piece, so no piece counts twice."""
    files = np.asarray(dataset.provenance["file"])
    _, first = np.unique(files, return_index=True)
    return dataset.rolls(np.sort(first))


def bars(roll: PianoRoll, first: int, last: int, bar: int) -> PianoRoll:
    """Bars ``first..last`` (from 1, inclusive)."""
    return roll.slice((first - 1) * bar, last * bar)


def seam_step(rolls: list[PianoRoll], boundary_bar: int, bar: int) -> float:
    """Mean voice step over the bar before and the bar after the line that starts ``boundary_bar``."""
    steps = [voice_step(r.slice((boundary_bar - 2) * bar, boundary_bar * bar)) for r in rolls]
    return float(np.nanmean(steps))


def within(rep: dict) -> tuple[int, int]:
    checks = rep["checks"].values()
    return sum(c["within_tolerance"] for c in checks), len(checks)


def summary(rep: dict) -> dict:
    values = rep["values"]
    n_in, n_all = within(rep)
    return {"mean_oa": values["mean_oa"], "within": f"{n_in}/{n_all}", "voice_step": values["voice_step"],
            "real_voice_step": values["real/voice_step"], "parallel_rate": values["parallel_rate"],
            "real_parallel_rate": values["real/parallel_rate"], "note_density": values["note_density"],
            "real_note_density": values["real/note_density"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=Path("out/compose"))
    parser.add_argument("--checkpoint", default="bundled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", choices=["val", "test"],
                        help="val to choose the search's settings, test to report")
    parser.add_argument("--note-weight", type=float, default=Search.note_weight,
                        help="the search's weight of a known note (Search.note_weight)")
    parser.add_argument("--threshold", type=float, help="decode made cells at this threshold (default: the model's)")
    parser.add_argument("--tasks-only", action="store_true", help="skip the inversion efforts and the speed")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    composer = Composer.load(args.checkpoint, search=Search(note_weight=args.note_weight))
    if args.threshold is not None:
        composer.decoding = replace(composer.spec.decoding, threshold=args.threshold)
    spec, generator, bar = composer.spec, composer.generator, composer.bar_steps
    real = first_stretch_per_piece(RollDataset(args.dataset, split=args.split))
    print(f"{len(real)} {args.split} pieces, first 16-bar stretch of each; model: {composer.model.path.name}")
    results: dict = {"n_pieces": len(real), "split": args.split, "model": composer.model.path.name,
                     "search": asdict(composer.search), "decoding": str(composer.decoding or composer.made_decoding)}

    # 1. Inversion against search effort.
    rows = []
    for steps, restarts in [] if args.tasks_only else EFFORTS:
        search = Search(steps=steps, restarts=restarts, note_weight=args.note_weight)
        f1, seconds = [], []
        for k, roll in enumerate(real):
            start = time.perf_counter()
            found = invert(generator, roll.encode(spec.encoding), np.ones(roll.cells.shape, bool), search=search, seed=args.seed + k)
            seconds.append(time.perf_counter() - start)
            f1.append(note_f1(spec.decoding.decode(found.probabilities, spec.encoding, spec.grid, roll.tempo), roll))
        rows.append({"steps": steps, "restarts": restarts, "note_f1": float(np.mean(f1)),
                     "seconds_per_window": float(np.median(seconds))})
        print(f"inversion: {steps:4d} steps x {restarts:2d} starts: note F1 {np.mean(f1):.3f}, {np.median(seconds):.2f} s per window")
    results["inversion"] = rows

    # 2. The made bars against the real bars at the same place, beside free pieces' bars.
    free = [spec.decoding.decode(sample_probabilities(generator, spec.n_steps, args.seed + k), spec.encoding, spec.grid, r.tempo)
            for k, r in enumerate(real)]
    tasks = {
        "continue": (lambda r, s: composer.continue_(bars(r, 1, 8, bar), 8, seed=s, ending="none"), (9, 16), [9]),
        "infill": (lambda r, s: composer.infill(r, 5, 8, seed=s), (5, 8), [5, 9]),
        "harmonize": (lambda r, s: composer.harmonize(top_line(r), seed=s), (1, 16), []),
    }
    made_by_task, timing = {}, {}
    for name, (make, (first, last), seams) in tasks.items():
        made, seconds = [], []
        for k, roll in enumerate(real):
            start = time.perf_counter()
            made.append(make(roll, args.seed + k))
            seconds.append(time.perf_counter() - start)
        made_by_task[name] = made
        timing[name] = seconds
        real_bars = [bars(r, first, last, bar) for r in real]
        entry = {"bars": f"{first}-{last}",
                 "made": summary(report([bars(m, first, last, bar) for m in made], real_bars)),
                 "free": summary(report([bars(f, first, last, bar) for f in free], real_bars)),
                 "seams": {b: {"made": seam_step(made, b, bar), "real": seam_step(real, b, bar)} for b in seams}}
        results[name] = entry
        print(f"{name}: bars {first}-{last}: made {entry['made']}\n    free {entry['free']}\n    seams {entry['seams']}")

    # 3. Harmonize against Bach: the voices below the melody.
    f1 = []
    for made, roll in zip(made_by_task["harmonize"], real):
        melody = top_line(roll).cells > SILENT
        below = [PianoRoll(np.where(melody, SILENT, r.cells).astype(np.uint8), r.grid, r.tempo) for r in (made, roll)]
        f1.append(note_f1(*below))
    results["harmonize"]["lower_voices_note_f1"] = float(np.mean(f1))
    print(f"harmonize: note F1 of the added voices against Bach's: {np.mean(f1):.3f}")

    # 4. Speed: 16 bars made by each task, median of five.
    piece = real[0]
    speed = {
        "continue 16 bars after 8": lambda: composer.continue_(bars(piece, 1, 8, bar), 16, ending="none"),
        "infill bars 5-8 of 16": lambda: composer.infill(piece, 5, 8),
        "harmonize a 16-bar melody": lambda: composer.harmonize(top_line(piece)),
    }
    results["seconds"] = {}
    for name, run in {} if args.tasks_only else speed.items():
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        results["seconds"][name] = statistics.median(times)
        print(f"speed: {name}: {statistics.median(times):.2f} s")

    cont = composer.continue_(bars(piece, 1, 8, bar), 8, ending="hold")
    filled = made_by_task["infill"][0]
    save_png([piece, cont, filled], args.out / "compose-example.png", scale=3)
    write_json(args.out / "compose.json", results)
    print(f"Wrote {args.out / 'compose.json'} and {args.out / 'compose-example.png'}")


if __name__ == "__main__":
    main()
