"""What decoding with ``fill`` does to a model: mean OA, and the holes in its long pieces.

Decodes the same pieces with the model's own decoding and with each ``--fill`` on top of it
(nothing else changed), and prints one row per decoding:

- mean OA and a few telling metrics of ``-n`` pieces of one window (seeds 100,000 onwards, as
  ``bench/calibrate_decoding.py`` draws them) against a split of the dataset (``--split val``, the
  default, to choose; ``test`` only to report);
- silent bars inside 20 pieces of 64 bars and rests over 8 steps in them, as ``bench/long_pieces.py``
  counts them (seeds 0-19, ``--ending none``);
- rests over 8 steps per 1,000 bars in 3 pieces of 1,500 bars (an hour of ``apollo play``; seeds 0-2).

Usage::

    python bench/fill.py out/folk.safetensors --data datasets/folk --fill 0.3 0.4
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np

from apollo.decoding import Decoding
from apollo.errors import ApolloError
from apollo.evaluate import load_rolls, report, subset
from apollo.generate import find_model, key_move, load_model, sample_probabilities
from long_pieces import rests, silent_bars

FIRST_SEED = 100_000  # bench/calibrate_decoding.py's samples
LONG = ((64, 20), (1500, 3))  # (bars, pieces)
REST = 8  # steps: half a bar


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="the dataset whose split is the reference")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--fill", type=float, nargs="+", required=True, help="fill values to try")
    parser.add_argument("-n", type=int, default=256, help="pieces of one window for mean OA (default: 256)")
    parser.add_argument("--reference", type=int, metavar="N",
                        help="measure against N stretches of the split drawn with seed 0 (default: all)")
    args = parser.parse_args()
    if args.n < 2:
        parser.error(f"-n must be at least 2, got {args.n}")
    if args.reference is not None and args.reference < 2:
        parser.error(f"--reference must be at least 2 stretches, got {args.reference}")

    generator, spec = load_model(find_model(args.checkpoint))
    own = spec.decoding or Decoding()
    try:
        decodings = [own] + [replace(own, fill=fill) for fill in args.fill]
    except ValueError as error:
        raise ApolloError(f"--fill: {error}") from None
    reference = subset(load_rolls(args.data, split=args.split, real=True).rolls, args.reference, np.random.default_rng(0))
    seeds = range(FIRST_SEED, FIRST_SEED + args.n)
    windows = [sample_probabilities(generator, spec.n_steps, seed) for seed in seeds]
    moves = [key_move(spec, seed) for seed in seeds]
    long = {bars: [sample_probabilities(generator, bars * spec.steps_per_bar, seed) for seed in range(n)]
            for bars, n in LONG}

    print(f"{args.checkpoint}: {args.n} windows against the {args.split} split of {args.data}; "
          f"{LONG[0][1]} x {LONG[0][0]} bars; {LONG[1][1]} x {LONG[1][0]} bars")
    print("| decoding | mean OA | notes / bar | polyphony rate | voice step | 64 bars: pieces with silent bars inside "
          f"| 64 bars: rests > {REST} steps / 1,000 bars | an hour: rests > {REST} steps / 1,000 bars (longest) |")
    print("|---|---|---|---|---|---|---|---|")
    for decoding in decodings:
        rolls = [decoding.decode(p, spec.encoding, spec.grid, spec.tempo).transpose(move)
                 for p, move in zip(windows, moves)]
        values = report(rolls, reference)["values"]
        cells = []
        for bars, _ in LONG:
            pieces = [decoding.decode(p, spec.encoding, spec.grid, spec.tempo) for p in long[bars]]
            lengths = np.concatenate([rests(piece) for piece in pieces])
            per_1000 = 1000 * int((lengths > REST).sum()) / (bars * len(pieces))
            if bars == LONG[0][0]:
                cells.append(f"{sum(silent_bars(piece)[0] > 0 for piece in pieces)} of {len(pieces)}")
                cells.append(f"{per_1000:.1f}")
            else:
                cells.append(f"{per_1000:.1f} ({lengths.max(initial=0)})")
        print(f"| {decoding} | {values['mean_oa']:.3f} | {values['note_density']:.2f} ({values['real/note_density']:.2f}) "
              f"| {values['polyphony_rate']:.2f} ({values['real/polyphony_rate']:.2f}) "
              f"| {values['voice_step']:.2f} ({values['real/voice_step']:.2f}) | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ApolloError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted; nothing was written")
