"""apollo.negatives: real rolls broken as real music never is, checked on real chorales."""

from __future__ import annotations

import pytest
import torch

from apollo.dataset import RollDataset
from apollo.losses import as_decoded
from apollo.metrics import BEATS_PER_BAR
from apollo.negatives import NEGATIVES, break_rolls, half_speed, off_key_bars, repeats_merged
from apollo.roll import Grid, PianoRoll

BAR = BEATS_PER_BAR * 4  # steps of a bar on the chorales' grid (4 steps a beat)


@pytest.fixture(scope="module")
def rolls(chorale_dataset) -> torch.Tensor:
    dataset = RollDataset(chorale_dataset, "train")
    return torch.stack([dataset[i] for i in range(8)]).float()


def notes(planes: torch.Tensor) -> list[tuple[int, int, int]]:
    """(pitch, start, end) of a roll's notes, as the decoder reads them."""
    return sorted(zip(*(a.tolist() for a in PianoRoll.decode(planes.numpy(), "onset").notes())))


def test_off_key_bars_move_each_bar_by_at_most_a_semitone_and_some_bars_differently(rolls):
    broken = off_key_bars(rolls, 4, torch.Generator().manual_seed(0))
    assert torch.equal(as_decoded(broken), broken)  # a valid onset roll: onsets only where sounding
    moves = []
    for b in range(rolls.shape[-1] // BAR):
        bar, moved = rolls[0, 0, :, b * BAR : (b + 1) * BAR], broken[0, 0, :, b * BAR : (b + 1) * BAR]
        found = [m for m in (-1, 0, 1) if torch.equal(torch.roll(bar, m, dims=0), moved)]
        assert found, f"bar {b} is not its real bar moved by a semitone or less"
        moves.append(found[0])
    assert len(set(moves)) > 1  # the key changes between bars, not only for the whole roll


def test_a_note_crossing_a_moved_barline_starts_again_there():
    roll = torch.zeros(1, 2, 64, 2 * BAR)
    roll[0, 0, 30, 8:24] = 1  # one note from the middle of bar 1 to the middle of bar 2
    roll[0, 1, 30, 8] = 1
    rng = torch.Generator().manual_seed(0)
    while True:
        broken = off_key_bars(roll, 4, rng)
        if not torch.equal(broken[0, 0, :, :BAR].argmax(0), broken[0, 0, :, BAR:].argmax(0)):
            break  # the two bars moved differently
    assert len(notes(broken[0])) == 2 and broken[0, 1, :, BAR].sum() == 1


def test_half_speed_plays_the_first_half_with_every_note_twice_as_long(rolls):
    slow = half_speed(rolls, 4, torch.Generator())
    half = rolls.shape[-1] // 2
    for real, broken in zip(rolls, slow):
        expected = [(p, 2 * s, 2 * e) for p, s, e in notes(real) if s < half]
        assert notes(broken) == sorted((p, s, min(e, 2 * half)) for p, s, e in expected)


def test_repeats_merged_joins_a_repeated_note_and_nothing_else():
    roll = torch.zeros(1, 2, 64, 16)
    roll[0, 0, 30, 0:8] = 1  # two quarter notes on one pitch, the second a repeat
    roll[0, 1, 30, [0, 4]] = 1
    roll[0, 0, 34, 10:12] = 1  # a note after a rest
    roll[0, 1, 34, 10] = 1
    c, e = Grid().lowest_pitch + 30, Grid().lowest_pitch + 34
    assert notes(roll[0]) == [(c, 0, 4), (c, 4, 8), (e, 10, 12)]
    assert notes(repeats_merged(roll, 4, torch.Generator())[0]) == [(c, 0, 8), (e, 10, 12)]


def test_repeats_merged_keeps_every_sounding_cell_of_real_chorales(rolls):
    merged = repeats_merged(rolls, 4, torch.Generator())
    assert torch.equal(merged[:, 0], rolls[:, 0]) and torch.equal(as_decoded(merged), merged)
    assert (merged[:, 1].sum((1, 2)) < rolls[:, 1].sum((1, 2))).all()  # every chunk repeats a note


def test_each_broken_roll_is_one_of_the_breaks_drawn_per_roll(rolls):
    broken = break_rolls(rolls, 4, torch.Generator().manual_seed(1))
    kinds = []
    for real, one in zip(rolls, broken):
        if torch.equal(one, half_speed(real[None], 4, torch.Generator())[0]):
            kinds.append("half_speed")
        elif torch.equal(one, repeats_merged(real[None], 4, torch.Generator())[0]):
            kinds.append("repeats_merged")
        else:
            kinds.append("off_key_bars")
        assert not torch.equal(one, real)
    assert set(kinds) == set(NEGATIVES)
    assert torch.equal(broken, break_rolls(rolls, 4, torch.Generator().manual_seed(1)))  # the same rng, the same rolls


def test_only_the_breaks_asked_for_are_drawn(rolls):
    broken = break_rolls(rolls, 4, torch.Generator().manual_seed(1), ("half_speed",))
    assert torch.equal(broken, half_speed(rolls, 4, torch.Generator()))
