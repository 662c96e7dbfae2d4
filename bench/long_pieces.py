"""Silent bars in long pieces: chained windows against whole real pieces.

Generates ``--n`` pieces of ``--bars`` bars from a model (seeds 0..n-1, as ``apollo generate --bars
N --seed S --ending none`` makes them) and counts, per piece, the silent bars *inside* it (between
its first and its last sounding bar) and at its end, and the rests inside it: how many last more
than ``--rest`` steps (per 1,000 bars) and the longest. The real row counts the same in every piece
of the dataset's test split (``--split val`` for the validation split, to choose by), read whole
from its MIDI folder. Usage::

    python bench/long_pieces.py --checkpoint bundled --data datasets/bach-chorales --midi midi/bach-chorales

An hour of ``apollo play`` at 100 BPM is 1,500 bars; three of them, seeds 0-2::

    python bench/long_pieces.py --data datasets/bach-chorales --midi midi/bach-chorales --bars 1500 -n 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from apollo.dataset import read_manifest
from apollo.decoding import Decoding
from apollo.errors import ApolloError
from apollo.generate import find_model, load_model, sample_cells
from apollo.metrics import bars
from apollo.roll import PianoRoll


def silent_bars(roll: PianoRoll) -> tuple[int, int]:
    """(silent bars between the first and the last sounding bar, silent bars after the last)."""
    sounding = bars(roll).any(axis=(1, 2))
    where = np.flatnonzero(sounding)
    if not len(where):
        return 0, len(sounding)
    inside = sounding[where[0] : where[-1] + 1]
    return int((~inside).sum()), int(len(sounding) - 1 - where[-1])


def rests(roll: PianoRoll) -> np.ndarray:
    """The length in steps of every rest between the first sounding step and the last."""
    sounding = np.flatnonzero(roll.cells.any(axis=0))
    gaps = np.diff(sounding) - 1
    return gaps[gaps > 0]


def summary(counts: list[tuple[int, int]], rest_lengths: list[np.ndarray], n_bars: float, longer_than: int) -> str:
    inside = np.array([c[0] for c in counts])
    end = np.array([c[1] for c in counts])
    lengths = np.concatenate(rest_lengths)
    long = int((lengths > longer_than).sum())
    return (f"{len(counts)} pieces: {int((inside > 0).sum())} with silent bars inside "
            f"(mean {inside.mean():.2f}, max {inside.max()}), {int((end > 0).sum())} silent at the end (max {end.max()}); "
            f"{long} rests over {longer_than} steps in {n_bars:,.0f} bars ({1000 * long / n_bars:.2f} per 1,000 bars), "
            f"the longest {lengths.max(initial=0)} steps")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="bundled")
    parser.add_argument("--data", required=True, type=Path, help="a dataset: its pieces of --split are the real row")
    parser.add_argument("--split", default="test", choices=("val", "test"),
                        help="the split of the real row: val to choose a model, test to report (default: test)")
    parser.add_argument("--midi", required=True, type=Path, help="the MIDI folder the dataset was made from")
    parser.add_argument("--bars", type=int, default=64)
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--rest", type=int, default=8, help="count rests longer than this many steps (default: 8)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.bars < 1:
        parser.error(f"-n and --bars must be at least 1, got {args.n} and {args.bars}")

    generator, spec = load_model(find_model(args.checkpoint))
    decoding = spec.decoding or Decoding()
    files = read_manifest(args.data)["files"]
    real = [PianoRoll.from_midi(args.midi / path, spec.grid)
            for path, split in zip(files["path"], files["split"]) if split == args.split]
    if not real:
        raise ApolloError(f"{args.data}: no pieces in its {args.split} split to compare with (datasets made before "
                          "the test split have none; make it again with `apollo preprocess`)")
    made = [decoding.decode(cells, spec.encoding, spec.grid, spec.tempo) for cells in
            sample_cells(generator, args.bars * spec.steps_per_bar, list(range(args.n)), spec.temperature)]
    for name, rolls in ((f"model {args.checkpoint}, {args.bars} bars", made),
                        (f"real {args.split} pieces (whole, any length)", real)):
        n_bars = sum(roll.n_steps for roll in rolls) / spec.steps_per_bar
        print(f"{name}: {summary([silent_bars(r) for r in rolls], [rests(r) for r in rolls], n_bars, args.rest)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ApolloError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted; nothing was written")
