"""What the discriminator sees: random moves in pitch and time, and generated planes read as they decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apollo import losses
from apollo.dataset import RollDataset
from apollo.roll import Grid, PianoRoll


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


def test_binarized_fakes_are_0_1_with_straight_through_gradients():
    """Thresholded, a cell at 0.55 always sounds; sampled, it sounds about 55 % of the time, so the
    discriminator sees what the generator leaves undecided. Both pass gradients through unchanged."""
    probs = torch.full((64, 1, 64, 256), 0.55, requires_grad=True)
    thresholded = losses.as_judged(probs, "threshold", "pianoroll")
    sampled = losses.as_judged(probs, "sample", "pianoroll", torch.Generator().manual_seed(0))
    assert torch.equal(thresholded, torch.ones_like(probs))
    assert set(sampled.unique().tolist()) == {0.0, 1.0}
    assert abs(sampled.mean().item() - 0.55) < 0.01
    again = losses.as_judged(probs, "sample", "pianoroll", torch.Generator().manual_seed(0))
    assert torch.equal(sampled, again)  # drawn from the step's generator: a resumed run repeats it
    (sampled * torch.arange(256.0)).sum().backward()
    assert torch.equal(probs.grad[0, 0, 0], torch.arange(256.0))
    sure = torch.tensor([0.0, 1.0, 0.02, 0.98]).repeat(1000)
    assert torch.equal(losses.as_judged(sure, "sample", "pianoroll", torch.Generator().manual_seed(1))[:2], sure[:2])
    assert torch.equal(losses.as_judged(probs, "none", "pianoroll"), probs)
    # A narrower draw: the threshold lies in 0.3..0.7, so only cells nearer 0.5 than 0.2 waver.
    cells = torch.tensor([0.25, 0.55, 0.75]).repeat(20_000, 1)
    narrow = losses.as_judged(cells, "sample", "pianoroll", torch.Generator().manual_seed(2), width=0.2).mean(0)
    assert narrow[0] == 0 and narrow[2] == 1 and abs(narrow[1] - 0.625) < 0.01


def test_one_threshold_per_piece_fills_or_thins_whole_rolls():
    """With "piece", every cell of one roll is cut at the same drawn threshold: a roll sounds all of
    its cells at 0.45 or none, and a cell nearer 0.5 sounds in more rolls than one further below."""
    cells = torch.tensor([0.25, 0.45, 0.45, 0.55, 0.75]).repeat(20_000, 1, 1, 1)  # [rolls, 1, 1, 5]
    judged = losses.as_judged(cells, "piece", "pianoroll", torch.Generator().manual_seed(3), width=0.2)
    assert set(judged.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(judged[..., 1], judged[..., 2])  # one threshold per roll
    share = judged.mean(0).flatten()
    assert share[0] == 0 and share[4] == 1  # further than the width from 0.5: as thresholded
    assert abs(share[1] - 0.375) < 0.01 and abs(share[3] - 0.625) < 0.01
    assert 0 < (judged[..., 3] - judged[..., 1]).mean() < 1  # some rolls sound 0.55 and not 0.45
    assert torch.all(judged[..., 3] >= judged[..., 1])  # never 0.45 without 0.55 in the same roll


def test_judged_fill_is_the_decodings_fill():
    """With ``fill``, the discriminator sees the cells a decoding with that fill sounds (before
    ``min_length``), for both encodings; gradients still pass straight through."""
    probs = torch.rand(4, 2, 16, 64, generator=torch.Generator().manual_seed(0)) * 0.62
    probs.requires_grad_(True)
    judged = losses.as_judged(probs, "threshold", "onset", fill=0.4)
    plain = losses.as_judged(probs, "threshold", "onset")
    assert judged[:, 0].sum() > plain[:, 0].sum()  # there were silent steps to fill
    for planes, seen in zip(probs.detach().numpy(), judged.detach().numpy()):
        decoded = PianoRoll.decode(planes, "onset", Grid(lowest_pitch=40, n_pitches=16), fill=0.4)
        assert np.array_equal(decoded.encode("onset"), seen.astype(bool))
    one_plane = probs.detach()[:, :1].clone().requires_grad_(True)
    losses.as_judged(one_plane, "threshold", "pianoroll", fill=0.4).sum().backward()
    assert torch.equal(one_plane.grad, torch.ones_like(one_plane))


@pytest.mark.parametrize("min_length", [2, 3])
def test_judged_min_length_is_the_decodings_min_length(min_length):
    """With ``min_length``, the discriminator sees exactly what a decoding with that shortest sound
    writes, fill included; gradients still pass straight through, to the cut cells as well."""
    probs = torch.rand(4, 2, 16, 64, generator=torch.Generator().manual_seed(1)) * 0.62
    probs.requires_grad_(True)
    judged = losses.as_judged(probs, "threshold", "onset", fill=0.4, min_length=min_length)
    plain = losses.as_judged(probs, "threshold", "onset", fill=0.4)
    assert judged[:, 0].sum() < plain[:, 0].sum()  # there were short sounds to drop
    grid = Grid(lowest_pitch=40, n_pitches=16)
    for planes, seen in zip(probs.detach().numpy(), judged.detach().numpy()):
        decoded = PianoRoll.decode(planes, "onset", grid, fill=0.4, min_length=min_length)
        assert np.array_equal(decoded.encode("onset"), seen.astype(bool))
    judged[:, 0].sum().backward()
    assert torch.equal(probs.grad[:, 0], torch.ones_like(probs[:, 0]))
    # Real 0/1 rolls read the same way are the decoding of themselves.
    real = (torch.rand(4, 1, 16, 64, generator=torch.Generator().manual_seed(2)) < 0.3).float()
    real = losses.as_decoded(torch.cat([real, real * (torch.rand(real.shape) < 0.5)], dim=1))
    for planes, seen in zip(real.numpy(), losses.as_judged(real, "threshold", "onset", min_length=min_length).numpy()):
        assert np.array_equal(PianoRoll.decode(planes, "onset", grid, min_length=min_length).encode("onset"),
                              seen.astype(bool))
    with pytest.raises(ValueError, match="binarized"):
        losses.as_judged(probs, "none", "onset", min_length=2)
