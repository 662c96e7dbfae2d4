"""Choose a model's decoding on the validation split (:func:`apollo.decoding.calibrate`), and ship it.

For a sequence model (LSTM, GRU, Transformer), which draws its cells, the choice is its sampling
temperature instead: ``n`` pieces are drawn at each of ``--temperatures`` and ranked the same way
(the highest mean OA among those that miss no metric that temperature 1 keeps within 10 %, if it
gains more than ``--min-gain`` over temperature 1).

Samples ``n`` pieces from the model (piece ``i`` from seed ``100000 + i``: noise that no row of
docs/results.md measures), decodes them with every candidate of :func:`apollo.decoding.candidates`,
and measures each against the dataset's **validation split**, where every choice is made; the
test split, on which the results are reported, takes no part. (A dataset made before test splits
existed has no clean held-out split; the training split is used then, and the script says so.) Prints every trial, best first, and the choice (the highest
mean OA among the decodings that miss no metric the default decoding keeps within 10 %, if it
gains more than ``--min-gain`` over the default; else the default, whose thresholds the discriminator judged)::

    python bench/calibrate_decoding.py runs/NAME/checkpoints/best.pt --data datasets/bach-chorales

``--min-lengths 1 2`` also tries each threshold pair with another shortest sound (the default
tries the default's, 2 steps, alone). For each shortest sound tried, the script also prints the
most a model decoded that way can be expected to score: real music of the training split read back
through it, against the same reference (:func:`apollo.decoding.ceiling`).

``--export FILE.safetensors`` then exports the model with the chosen decoding, keeping the
provenance of ``--provenance FILE.json`` (an earlier export's JSON). The bundled model::

    python bench/calibrate_decoding.py runs/v-nst-char05-tex2/checkpoints/best.pt \\
        --data datasets/bach-chorales --export apollo/bundled/generator.safetensors \\
        --provenance apollo/bundled/generator.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from apollo.decoding import MIN_GAIN, MIN_LENGTH, Decoding, calibrate, ceiling, choose
from apollo.dataset import RollDataset, read_manifest
from apollo.errors import ApolloError
from apollo.evaluate import load_rolls, subset
from apollo.generate import (
    export_model,
    find_model,
    family,
    key_move,
    load_model,
    sample_cells,
    sample_probabilities,
)

FIRST_SEED = 100_000
REAL_ROLLS = 512  # real rolls read back through each shortest sound (ceiling)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the dataset whose validation split is the reference")
    parser.add_argument("-n", type=int, default=768, help="pieces sampled (default: 768)")
    parser.add_argument("--export", help="export the model with the chosen decoding to this .safetensors file")
    parser.add_argument("--provenance", help="JSON of an earlier export whose provenance the export keeps")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.8, 0.9, 1.0],
                        help="a sequence model's candidate temperatures (1 is always tried)")
    parser.add_argument("--min-lengths", type=int, nargs="+", default=[MIN_LENGTH],
                        help=f"shortest sounds (steps) to try with every threshold pair (default: {MIN_LENGTH}); "
                             "a model of fast music may play one-step notes")
    parser.add_argument("--min-gain", type=float, default=MIN_GAIN,
                        help=f"mean OA a candidate must gain over the default to replace it (default: {MIN_GAIN})")
    parser.add_argument("--reference", type=int, metavar="N",
                        help="measure against N stretches of the split drawn with seed 0 (default: all); "
                             "the reference's pairwise distances grow with its square")
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"-n must be at least 1, got {args.n}")
    if args.min_gain < 0:
        parser.error(f"--min-gain must be at least 0, got {args.min_gain}")
    if min(args.min_lengths) < 1:
        parser.error(f"--min-lengths must be at least 1, got {min(args.min_lengths)}")
    if args.reference is not None and args.reference < 2:
        parser.error(f"--reference must be at least 2 stretches, got {args.reference}")

    provenance = {}
    if args.provenance:  # read first: a bad file should not cost a calibration
        try:
            provenance = json.loads(Path(args.provenance).read_text())["provenance"]
        except (OSError, ValueError, KeyError) as error:
            raise ApolloError(f"{args.provenance}: no provenance to keep ({error})") from None

    t0 = time.perf_counter()
    generator, spec = load_model(find_model(args.checkpoint))
    seeds = range(FIRST_SEED, FIRST_SEED + args.n)
    if not Path(args.data).exists():
        raise ApolloError(f"{args.data}: no such dataset")
    try:
        split = "val" if read_manifest(args.data)["counts"].get("test_files") is not None else "train"
    except ApolloError:
        split = "train"
    if split == "train":
        print(f"{args.data} has no test split (an older dataset): its validation split is reported on, so the "
              "decoding is chosen on the training split")
    reference = subset(load_rolls(args.data, split=split, real=True).rolls, args.reference, np.random.default_rng(0))
    if family(generator) != "dcgan":
        choose_temperature(args, generator, spec, seeds, reference, split, provenance)
        return
    probabilities = [sample_probabilities(generator, spec.n_steps, seed) for seed in seeds]
    # A model trained with binarize_fill or judged_min_length keeps them as its baseline.
    judged = Decoding(fill=spec.decoding.fill, min_length=spec.decoding.min_length)
    choice, trials = calibrate(probabilities, reference, encoding=spec.encoding, grid=spec.grid, tempo=spec.tempo,
                               moves=[key_move(spec, seed) for seed in seeds], min_gain=args.min_gain, judged=judged,
                               min_lengths=args.min_lengths)
    print(f"{args.n} samples against {len(reference)} {split} rolls of {args.data} ({time.perf_counter() - t0:.0f} s)")
    baseline = next(t for t in trials if t.decoding.effective == judged.effective)
    print("| decoding | mean OA | keeps what the default keeps | outside 10 % | notes / bar | qualified notes | polyphony |")
    print("|---|---|---|---|---|---|---|")
    for t in trials:
        keeps = "yes" if t.required_misses <= baseline.required_misses else "no"
        print(f"| {t.decoding} | {t.mean_oa:.3f} | {keeps} | {measured(t)} |")
    print(f"chosen: {choice}{kept_note(trials, baseline, args.min_gain)}")
    if split == "val":  # other pieces than the reference's: 512 rolls of the training split
        train = RollDataset(args.data, split="train")
        real = train.rolls(np.random.default_rng(0).permutation(len(train))[:REAL_ROLLS])
        for min_length in sorted({t.decoding.min_length for t in trials}):
            cut, uncut = ceiling(real, reference, spec.encoding, Decoding(min_length=min_length))
            print(f"{len(real)} training rolls read back with min length {min_length}: mean OA {cut:.3f} "
                  f"(as they are: {uncut:.3f}), the most a model decoded this way can be expected to score")
    export(args, provenance, "decoding", f"{args.n} samples against the {split} split of {args.data}: {choice}",
           decoding=choice)


def measured(trial) -> str:
    """A trial's metrics outside 10 %, and three telling ones beside real music's, as table cells."""
    values = trial.report["values"]
    telling = " | ".join(f"{values[k]:.2f} ({values[f'real/{k}']:.2f})"
                         for k in ("note_density", "qualified_note_rate", "polyphony"))
    return f"{', '.join(trial.misses) or '-'} | {telling}"


def kept_note(ranked, baseline, min_gain: float) -> str:
    """Why the default came first when the runner-up measured higher (``ranked``: best first); else nothing."""
    runner_up = ranked[1] if len(ranked) > 1 and ranked[0] is baseline else None
    if runner_up is None or runner_up.mean_oa <= baseline.mean_oa:
        return ""
    if not runner_up.required_misses <= baseline.required_misses:
        return ""
    gain = runner_up.mean_oa - baseline.mean_oa
    return f" (the default: the best candidate gains {gain:.4f} mean OA, not more than --min-gain {min_gain:g})"


def choose_temperature(args, model, spec, seeds, reference, split: str, provenance: dict) -> None:
    """A sequence model's temperature, chosen as a decoding is (module doc)."""
    t0 = time.perf_counter()
    temperatures = sorted({*args.temperatures, 1.0})
    trials = []
    for temperature in temperatures:
        cells = list(sample_cells(model, spec.n_steps, list(seeds), temperature))
        _, (trial,) = calibrate(cells, reference, encoding=spec.encoding, grid=spec.grid, tempo=spec.tempo,
                                decodings=[spec.decoding], moves=[key_move(spec, seed) for seed in seeds])
        trials.append(trial)
    temperature_of = {id(trial): temperature for trial, temperature in zip(trials, temperatures)}
    baseline = trials[temperatures.index(1.0)]
    ranked = choose(trials, baseline, args.min_gain)
    print(f"{args.n} samples per temperature against {len(reference)} {split} rolls of {args.data} "
          f"({time.perf_counter() - t0:.0f} s)")
    print("| temperature | mean OA | outside 10 % | notes / bar | qualified notes | polyphony |")
    print("|---|---|---|---|---|---|")
    for trial in ranked:
        print(f"| {temperature_of[id(trial)]:g} | {trial.mean_oa:.3f} | {measured(trial)} |")
    choice = temperature_of[id(ranked[0])]
    print(f"chosen: temperature {choice:g}{kept_note(ranked, baseline, args.min_gain)}")
    export(args, provenance, "temperature",
           f"{args.n} samples per temperature against the {split} split of {args.data}: {choice:g}", temperature=choice)


def export(args, provenance: dict, what: str, how: str, **choice) -> None:
    """With --export, the model with its chosen ``what`` (export_model's keyword ``choice``), and how it was chosen."""
    if args.export:
        provenance[what] = f"chosen by bench/calibrate_decoding.py on {how}"
        export_model(find_model(args.checkpoint).path, args.export, provenance=provenance, **choice)
        print(f"exported {args.export}")


if __name__ == "__main__":
    try:
        main()
    except ApolloError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:  # the export is written to a temporary file and renamed, so no half file
        sys.exit("interrupted; nothing was exported")
