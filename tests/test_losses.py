"""What the discriminator sees: random moves in pitch and time, and generated planes read as they decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apollo import losses
from apollo.dataset import RollDataset
from apollo.roll import PianoRoll


@pytest.fixture
def data(chorale_dataset):
    return chorale_dataset


@pytest.mark.parametrize("dim", [2, 3])
def test_shift_augmentation_moves_each_roll_by_at_most_n_cells(dim):
    rolls = torch.zeros(32, 2, 64, 256)
    rolls[:, :, 30, 100] = 1.0
    moved = losses.shift_randomly(rolls, 5, dim, torch.Generator().manual_seed(0))
    where = moved.nonzero()
    assert len(where) == 64  # one cell per plane per roll: nothing lost, nothing added
    offsets = where[:, dim] - (30 if dim == 2 else 100)
    other = 3 if dim == 2 else 2
    assert (where[:, other] == (100 if dim == 2 else 30)).all()  # the other axis does not move
    assert offsets.abs().max() <= 5 and len(offsets.unique()) > 3
    assert torch.equal(moved[:, 0], moved[:, 1])  # both planes of a roll move together
    assert torch.equal(losses.shift_randomly(rolls, 0, dim, torch.Generator()), rolls)
    # In whole beats (unit 4): the moves keep every note where it falls within the beat.
    beats = losses.shift_randomly(rolls, 9, dim, torch.Generator().manual_seed(0), unit=4).nonzero()
    moves = beats[:, dim] - (30 if dim == 2 else 100)
    assert set(moves.unique().tolist()) == {-8, -4, 0, 4, 8}



def test_the_discriminator_sees_generated_planes_as_they_decode(data):
    real = RollDataset(data, split="train")
    planes = torch.from_numpy(np.stack([roll.encode("onset") for roll in real.rolls(range(len(real)))])).float()
    assert torch.equal(losses.as_decoded(planes), planes)  # real rolls already obey the rules
    noise = (torch.rand(8, 2, 64, 256, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    decoded = losses.as_decoded(noise)
    assert not torch.equal(decoded, noise)  # stray onsets and onset-less starts were there
    for planes_in, planes_out in zip(noise, decoded):
        assert np.array_equal(PianoRoll.decode(planes_in.numpy()).encode("onset"), planes_out.numpy().astype(bool))
