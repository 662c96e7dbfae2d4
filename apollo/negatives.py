"""Negative examples: real rolls broken in ways that real music never is, shown to the
discriminator as fakes (negative data augmentation, Sinha et al., ICLR 2021).

A discriminator learns only what tells the generator's current pieces from real ones. Once the
pieces keep their key and their rhythm it need not look at either, and the generator is then free
to drift in both at no cost (``bench/discriminator_sees.py`` measures what a discriminator sees).
Broken real rolls keep those questions in the game. Each is a real roll made wrong in one respect,
so the discriminator learns that respect rather than anything else about the roll:

- ``off_key_bars``: every bar moved by -1, 0 or +1 semitones, drawn for each bar, so that the key
  changes at most barlines while each bar keeps its own shape;
- ``half_speed``: the roll's first half played at half speed, every note twice as long and half as
  many notes a bar. Slow real music has such bars too, and no discriminator learned to tell them
  (docs/results.md, "Ablation: negative examples");
- ``repeats_merged``: a note that starts where the same pitch was already sounding joins it, so a
  repeated note becomes one held note, as a generator whose onset plane dies plays it. No
  discriminator learned to tell it, shown it or not: a merged repeat is a long note, which real
  music has. A roll with no repeated note (one in sixteen folk chunks) comes through unchanged.

A break teaches a discriminator only what no single real roll does (off-key bars), not what is
wrong only across many rolls (every piece slow). None is a metric's formula; each is what the
decoder reads back (:func:`as_decoded`), so a note that crosses a moved barline starts anew
there, as a real one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from apollo.losses import as_decoded, begins_to_sound, shift_randomly
from apollo.metrics import BEATS_PER_BAR

__all__ = ["NEGATIVES", "break_rolls", "half_speed", "off_key_bars", "repeats_merged"]


def off_key_bars(rolls: torch.Tensor, steps_per_beat: int, rng: torch.Generator) -> torch.Tensor:
    """[B, planes, pitches, steps] -> the same, each whole bar moved by a random -1, 0 or +1 semitones."""
    n, planes, pitches, steps = rolls.shape
    bar = BEATS_PER_BAR * steps_per_beat
    end = steps - steps % bar  # a last part-bar stays where it is
    bars = rolls[..., :end].reshape(n, planes, pitches, end // bar, bar).permute(0, 3, 1, 2, 4)
    moved = shift_randomly(bars.reshape(-1, planes, pitches, bar), 1, 2, rng)
    moved = moved.reshape(n, end // bar, planes, pitches, bar).permute(0, 2, 3, 1, 4).reshape(n, planes, pitches, end)
    return _decoded(torch.cat([moved, rolls[..., end:]], dim=-1))


def half_speed(rolls: torch.Tensor, steps_per_beat: int, rng: torch.Generator) -> torch.Tensor:
    """[B, planes, pitches, steps] -> the same, the first half's every step played twice."""
    slow = rolls[..., : rolls.shape[-1] // 2].repeat_interleave(2, dim=-1)
    if rolls.shape[1] > 1:  # an onset plane: a note starts on the first of the two steps only
        slow[:, 1:, :, 1::2] = 0
    return _decoded(slow)


def repeats_merged(rolls: torch.Tensor, steps_per_beat: int, rng: torch.Generator) -> torch.Tensor:
    """[B, planes, pitches, steps] -> the same, a note only where its pitch begins to sound after silence."""
    if rolls.shape[1] == 1:  # no onset plane: a repeat is already one held note
        return rolls
    sounding = rolls[:, :1]
    return torch.cat([sounding, begins_to_sound(sounding)], dim=1)


def _decoded(rolls: torch.Tensor) -> torch.Tensor:
    return as_decoded(rolls) if rolls.shape[1] == 2 else rolls


NEGATIVES = {"off_key_bars": off_key_bars, "half_speed": half_speed, "repeats_merged": repeats_merged}


def break_rolls(rolls: torch.Tensor, steps_per_beat: int, rng: torch.Generator,
                breaks: Sequence[str] = tuple(NEGATIVES)) -> torch.Tensor:
    """Each roll broken by one of ``breaks`` (names in :data:`NEGATIVES`), drawn for each roll from ``rng``."""
    kinds = [NEGATIVES[name] for name in breaks]
    which = torch.randint(len(kinds), (len(rolls),), device=rolls.device, generator=rng)
    # Every break of every roll, then one kept for each: cheap next to the discriminator's pass.
    broken = torch.stack([kind(rolls, steps_per_beat, rng) for kind in kinds])  # [kinds, B, ...]
    return broken[which, torch.arange(len(rolls), device=rolls.device)]
