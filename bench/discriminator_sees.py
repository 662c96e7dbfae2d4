"""What a training checkpoint's discriminator sees: how often it ranks a real roll above the same
roll broken in one way, and above the generator's own rolls.

For each checkpoint, ``-n`` rolls of the dataset's validation split are scored as they are, and
again after each break below; a column is the share of pairs (real roll, broken roll) in which the
real one scores higher (0.5: the discriminator does not see that break; 1: it always does). The
generated column ranks the same real rolls against as many of the generator's (not its moving
average: the discriminator was trained against the generator), cut at 0.5 as in training.

- ``off key``: every bar moved by -1, 0 or +1 semitones (:func:`apollo.negatives.off_key_bars`);
- ``half speed``: the first half's notes twice as long (:func:`apollo.negatives.half_speed`);
- ``double speed``: every other step, so the notes are half as long, the result played twice;
- ``repeats merged``: a note that starts where the same pitch was sounding joins it (:func:`apollo.negatives.repeats_merged`);
- ``octave leaps``: every other bar an octave up;
- ``a step late``: everything one step later, off the beat.

A discriminator that ranks a break near 0.5 lets the generator drift that way without losing any
score. Usage::

    python bench/discriminator_sees.py --data datasets/folk runs/NAME/1-base/checkpoints/best.pt ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from apollo.checkpoint import load_checkpoint
from apollo.dataset import RollDataset
from apollo.errors import ApolloError
from apollo.losses import as_decoded, as_judged
from apollo.metrics import BEATS_PER_BAR
from apollo.model import Discriminator, Generator, ModelConfig
from apollo.negatives import half_speed, off_key_bars, repeats_merged


def double_speed(rolls: torch.Tensor, steps_per_beat: int, rng: torch.Generator) -> torch.Tensor:
    sounding = rolls[:, :1, :, ::2]
    onset = (rolls[:, 1:, :, ::2] + rolls[:, 1:, :, 1::2]).clamp(max=1) * sounding
    fast = torch.cat([sounding, onset], dim=1)
    return torch.cat([fast, fast], dim=-1)


def octave_leaps(rolls: torch.Tensor, steps_per_beat: int, rng: torch.Generator) -> torch.Tensor:
    bar, leaps = BEATS_PER_BAR * steps_per_beat, rolls.clone()
    for start in range(bar, rolls.shape[-1], 2 * bar):
        leaps[..., start : start + bar] = torch.roll(rolls[..., start : start + bar], 12, dims=2)
    return as_decoded(leaps)


def a_step_late(rolls: torch.Tensor, steps_per_beat: int, rng: torch.Generator) -> torch.Tensor:
    return torch.roll(rolls, 1, dims=-1)


BREAKS = {"off key": off_key_bars, "half speed": half_speed, "double speed": double_speed,
          "repeats merged": repeats_merged, "octave leaps": octave_leaps, "a step late": a_step_late}


def ranked_above(a: np.ndarray, b: np.ndarray) -> float:
    """The share of pairs (x from a, y from b) with x > y, ties counting half."""
    return float((a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="training checkpoints (they hold the discriminator)")
    parser.add_argument("--data", required=True, help="the dataset whose validation split is scored")
    parser.add_argument("-n", type=int, default=512, help="real rolls scored (default: 512)")
    args = parser.parse_args()
    try:
        dataset = RollDataset(args.data, "val")
    except ApolloError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    n = min(args.n, len(dataset))
    chosen = np.random.default_rng(0).choice(len(dataset), n, replace=False)
    real = torch.stack([dataset[int(i)] for i in chosen]).float()
    if real.shape[1] != 2:
        print("error: the breaks are written for the onset encoding (two planes)", file=sys.stderr)
        return 1
    steps_per_beat = dataset.config.grid.steps_per_beat
    print(f"{n} validation rolls of {args.data}; the share of pairs in which the real roll scores higher")
    print("| checkpoint | step | generated | " + " | ".join(BREAKS) + " |")
    print("|---|---|---|" + "---|" * len(BREAKS))
    for path in args.checkpoints:
        try:
            state = load_checkpoint(path)
        except ApolloError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        if "discriminator" not in state:
            print(f"error: {path} holds no discriminator (a training checkpoint does)", file=sys.stderr)
            return 1
        config = ModelConfig(**state["model_config"])
        G, D = Generator(config).eval(), Discriminator(config).eval()
        G.load_state_dict(state["generator"])
        D.load_state_dict(state["discriminator"])
        rng = torch.Generator().manual_seed(0)

        def score(rolls: torch.Tensor) -> np.ndarray:
            return torch.cat([D(rolls[i : i + 128]).float() for i in range(0, len(rolls), 128)]).numpy()

        with torch.no_grad():
            scores = score(real)
            noise = torch.randn(n, *config.noise_shape, generator=rng)
            fake = torch.cat([as_judged(G(noise[i : i + 128]), "threshold", "onset") for i in range(0, n, 128)])
            cells = [ranked_above(scores, score(fake))]
            cells += [ranked_above(scores, score(brk(real, steps_per_beat, rng))) for brk in BREAKS.values()]
        print(f"| {Path(path).parent.parent.parent.name}/{Path(path).name} | {state['step']} | "
              + " | ".join(f"{cell:.2f}" for cell in cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
