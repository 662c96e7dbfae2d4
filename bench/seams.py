"""Is a long piece's music as good across its seams as inside one window?

Generates ``-n`` pieces of two seams (32 bars: three windows; seeds 5,000 onwards) from a model,
as ``apollo generate --bars 32`` chains them, and judges their middle 16 bars (steps 128-384, which
cross both hand-overs) against real stretches of the dataset's split, beside the first window of
the same pieces alone (an ordinary 16-bar sample). Both sets are decoded with the model's decoding
and moved to its corpus's keys as ``apollo generate`` moves them. Prints each set's mean OA and the
metrics outside 10 % of real::

    python bench/seams.py --checkpoint bundled --data datasets/bach-chorales --split val

docs/results.md ("One key per piece") used it to check that every window reading the key and the
style numbers from the piece's first window leaves stretches across seams as good as a window.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from apollo.errors import ApolloError
from apollo.evaluate import load_rolls, report
from apollo.generate import Chaining, find_model, key_move, load_model, sample_probabilities

FIRST_SEED = 5000  # noise no other row of docs/results.md draws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="bundled")
    parser.add_argument("--data", required=True, help="a dataset: its --split stretches are the reference")
    parser.add_argument("--split", default="test", choices=("val", "test"),
                        help="val to choose by, test to report (default: test)")
    parser.add_argument("-n", type=int, default=256, help="pieces (and reference stretches, at most)")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error(f"-n must be at least 2, got {args.n}")

    generator, spec = load_model(find_model(args.checkpoint), dcgan_only="bench/seams.py")
    chain = Chaining.of(generator)
    window, hop = chain.window, chain.hop
    real = load_rolls(args.data, split=args.split, real=True).rolls
    if len(real) > args.n:
        real = [real[i] for i in sorted(np.random.default_rng(0).choice(len(real), args.n, replace=False))]

    alone, across = [], []
    for seed in range(FIRST_SEED, FIRST_SEED + args.n):
        piece = sample_probabilities(generator, 2 * window, seed)  # three windows
        move = key_move(spec, seed)
        for out, probabilities in ((alone, sample_probabilities(generator, window, seed)),
                                   (across, piece[..., hop : hop + window])):
            roll = spec.decoding.decode(probabilities, spec.encoding, spec.grid, spec.tempo)
            out.append(roll.transpose(move) if move else roll)
    print(f"{args.checkpoint}: {args.n} pieces against {len(real)} {args.split} stretches of {args.data}")
    for name, rolls in (("a window alone (bars 1-16)", alone), ("across two seams (bars 9-24)", across)):
        rep = report(rolls, real)
        misses = [k for k, check in rep["checks"].items() if not check["within_tolerance"]]
        print(f"{name:30s} mean OA {rep['values']['mean_oa']:.3f}; outside 10 %: {', '.join(misses) or 'none'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ApolloError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted; nothing was written")
