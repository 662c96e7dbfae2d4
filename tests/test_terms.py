"""The generator's terms: each on hand-made rolls with known answers, and gradients that flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apollo import terms
from apollo.dataset import RollDataset
from apollo.errors import ApolloError
from apollo.roll import PianoRoll


@pytest.fixture
def data(chorale_dataset):
    return chorale_dataset


def test_diversity_shortfall_is_one_for_a_collapsed_generator_and_zero_for_real_variety():
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(8, 2, 64, 256, generator=g) > 0.9).float()
    collapsed = real[:1].expand(8, -1, -1, -1)
    assert terms.diversity_shortfall(collapsed, real).item() == pytest.approx(1.0)
    assert terms.diversity_shortfall(real.flip(0), real).item() == pytest.approx(0.0)  # as varied as real
    half_as_varied = torch.where(torch.arange(8).reshape(8, 1, 1, 1) % 2 == 0, real, real[:1])
    assert 0.1 < terms.diversity_shortfall(half_as_varied, real).item() < 0.9


def test_closeness_sees_a_few_duplicated_pieces_that_the_mean_spread_misses():
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(16, 2, 64, 256, generator=g) > 0.9).float()
    fake = (torch.rand(16, 2, 64, 256, generator=g) > 0.9).float()
    assert terms.closeness(fake).item() == 0.0  # overlap about 0.1 between any two
    fake[1] = fake[0]  # one pair of twins among 120 pairs
    assert terms.diversity_shortfall(fake, real).item() == 0.0
    assert terms.closeness(fake).item() == pytest.approx(1 / 120)
    assert terms.closeness(fake[:1].expand(16, -1, -1, -1)).item() == pytest.approx(1.0)
    # More notes do not buy distance: a twin with twice the notes still overlaps by 2/3.
    fake[1] = torch.maximum(fake[0], (torch.rand(2, 64, 256, generator=g) > 0.9).float())
    assert terms.closeness(fake).item() > 0


def _one_voice(note_steps: int, sounding_steps: int = 256) -> torch.Tensor:
    """One pitch playing notes of ``note_steps`` back to back for ``sounding_steps``, onset-encoded."""
    roll = torch.zeros(2, 64, 256)
    roll[0, 10, :sounding_steps] = 1
    roll[1, 10, :sounding_steps:note_steps] = 1
    return roll


def test_rhythm_character_reads_note_lengths_offbeat_onsets_and_fullness():
    quarters, eighths, halves, half_silent = _one_voice(4), _one_voice(2), _one_voice(8), _one_voice(4, 128)
    character = terms.rhythm_character(torch.stack([quarters, eighths, halves, half_silent]), steps_per_beat=4)
    expected = [[1 / 4, 0, 1 / 64], [1 / 2, 1 / 2, 1 / 64], [1 / 8, 0, 1 / 64], [1 / 4, 0, 1 / 128]]
    assert torch.allclose(character, torch.tensor(expected))
    # A one-plane roll: notes start where a pitch begins to sound after silence.
    separated = torch.zeros(1, 1, 64, 256)
    separated[0, 0, 10, 2:4] = separated[0, 0, 10, 8:16] = 1
    assert torch.allclose(terms.rhythm_character(separated, steps_per_beat=4),
                          torch.tensor([[2 / 10, 1 / 2, 10 / 64 / 256]]))


def test_character_gap_is_one_when_every_piece_has_the_same_rhythm_and_zero_for_real_variety():
    real = torch.stack([_one_voice(4, 192), _one_voice(2, 192), _one_voice(4, 128), _one_voice(2, 128)])
    assert terms.character_gap(real[[0, 0, 0, 0]], real, steps_per_beat=4).item() == pytest.approx(1.0)
    assert terms.character_gap(real.flip(0), real, steps_per_beat=4).item() == pytest.approx(0.0)
    # The same rhythms, all of them as full: two of the three met.
    assert terms.character_gap(real[[0, 1, 0, 1]], real, steps_per_beat=4).item() == pytest.approx(1 / 3)
    # Varying more than real pieces do costs as much: here twice the real spread of fullness.
    more = torch.stack([_one_voice(4, 224), _one_voice(2, 224), _one_voice(4, 96), _one_voice(2, 96)])
    assert terms.character_gap(more, real, steps_per_beat=4).item() == pytest.approx(1 / 3)
    fake = real[[0, 0, 0, 1]].clone().requires_grad_(True)
    terms.character_gap(fake, real, steps_per_beat=4).backward()
    assert fake.grad.abs().sum() > 0


def _chords(voices: int, note_steps: int, sounding_steps: int = 256) -> torch.Tensor:
    """``voices`` pitches a fifth apart, playing notes of ``note_steps`` together, onset-encoded."""
    return torch.stack([_one_voice(note_steps, sounding_steps).roll(7 * v, dims=1) for v in range(voices)]).amax(dim=0)


def test_texture_reads_fullness_voices_chord_size_and_note_density():
    four_voices, one_voice, half_silent = _chords(4, 4), _chords(1, 2), _chords(2, 4, 128)
    expected = [[4 / 64, 4, 4, 1 / 64], [1 / 64, 1, 1, 1 / 128], [2 * 128 / (64 * 256), 2, 2, 1 / 256]]
    assert torch.allclose(terms.texture(torch.stack([four_voices, one_voice, half_silent])), torch.tensor(expected))
    # Voices that do not start together: two sound at once, but notes start one at a time.
    staggered = _chords(1, 4) + _chords(1, 4).roll((7, 2), dims=(1, 2))
    assert torch.allclose(terms.texture(staggered[None]), torch.tensor([[2 / 64, 2, 1, 1 / 128]]))


def test_texture_gap_is_zero_for_the_real_mean_and_grows_with_thinner_or_fuller_pieces():
    real = torch.stack([_chords(4, 4), _chords(4, 4), _chords(2, 4), _chords(2, 4)])  # 3 voices on average
    assert terms.texture_gap(real.flip(0), real).item() == pytest.approx(0.0)
    assert terms.texture_gap(torch.stack([_chords(3, 4)] * 4), real).item() == pytest.approx(0.0)
    # The same texture in eighths: twice the notes, one of the four numbers off by 100 %.
    assert terms.texture_gap(torch.stack([_chords(3, 2)] * 4), real).item() == pytest.approx(1 / 4)
    thin, full = torch.stack([_chords(1, 4)] * 4), torch.stack([_chords(5, 4)] * 4)
    assert terms.texture_gap(thin, real).item() == pytest.approx(2 / 3)  # a third of each number
    assert terms.texture_gap(full, real).item() == pytest.approx(2 / 3)
    fake = thin.clone().requires_grad_(True)
    terms.texture_gap(fake, real).backward()
    assert fake.grad.abs().sum() > 0


def test_short_notes_counts_notes_under_three_steps_and_skips_what_the_decoder_drops():
    count = lambda roll: tuple(int(n) for n in terms.short_notes(roll[None]))
    assert count(_one_voice(2)) == (128, 128)  # eighths: every note short
    assert count(_one_voice(4)) == (0, 64)  # quarters: none
    assert count(_one_voice(3)) == (0, 85)  # three steps is qualified; the 86th note, cut to one step, is none
    assert count(_one_voice(1)) == (0, 0)  # one-step sounds are dropped by the decoder, so are no notes
    mixed = _one_voice(2, sounding_steps=128) + _one_voice(8).roll(20, dims=1)  # another pitch, in half notes
    assert count(mixed) == (64, 64 + 32)


def test_length_gap_is_zero_for_the_real_mix_and_grows_with_fewer_short_notes():
    real = torch.stack([_one_voice(2), _one_voice(4)])  # 128 short notes of 192
    assert terms.length_gap(real.flip(0), real).item() == pytest.approx(0.0)
    assert terms.length_gap(torch.stack([_one_voice(4)] * 2), real).item() == pytest.approx(1.0)
    assert terms.length_gap(torch.stack([_one_voice(2)] * 2), real).item() == pytest.approx(0.5)
    fake = torch.stack([_one_voice(2), _one_voice(4)]).mul(0.9).requires_grad_(True)
    terms.length_gap(fake, torch.stack([_one_voice(2)] * 2)).backward()
    assert fake.grad.abs().sum() > 0


def test_length_mix_sorts_notes_into_mgevals_length_classes():
    # Classes in steps: 1, 2, 3, 4-5, 6-7, 8-11, 12-15, 16 and longer.
    mix = terms.length_mix(torch.stack([_one_voice(2), _one_voice(3), _one_voice(6), _one_voice(32),
                                               torch.zeros(2, 64, 256)]), steps_per_beat=4)
    assert torch.allclose(mix, torch.tensor([[0, 1.0, 0, 0, 0, 0, 0, 0],
                                             [1 / 86, 0, 85 / 86, 0, 0, 0, 0, 0],  # the last note is cut to 1 step
                                             [0, 0, 0, 1 / 43, 42 / 43, 0, 0, 0],  # ... to 4 steps
                                             [0, 0, 0, 0, 0, 0, 0, 1.0], [0.0] * 8]))


def test_length_mix_of_real_chorales_is_mgevals_note_length_histogram(data):
    from apollo.mgeval import note_length_histogram

    dataset = RollDataset(data, "train")
    planes = dataset.planes(range(8))
    mix = terms.length_mix(torch.from_numpy(planes).float(), steps_per_beat=dataset.config.grid.steps_per_beat)
    for piece, cells in zip(mix, planes):
        histogram = note_length_histogram(PianoRoll.decode(cells, "onset", dataset.config.grid))
        expected = np.append(histogram[:7], histogram[7:].sum())  # a bar or longer: one class
        assert np.allclose(piece.numpy(), expected, atol=1e-6)


def test_length_mix_gap_is_zero_for_the_real_mix_and_counts_the_mean_and_the_spread():
    real = torch.stack([_one_voice(2), _one_voice(4)])  # half the pieces in eighths, half in quarters
    assert terms.length_mix_gap(real.flip(0), real, steps_per_beat=4).item() == pytest.approx(0.0)
    # Every piece half eighths, half quarters: the mean is met, the spread of both classes is not.
    mixed = _one_voice(2, sounding_steps=128) + _one_voice(4).roll(20, dims=1)
    spread = torch.tensor([1.0, 0.0]).std().item()  # of each class's share over the real pieces
    assert terms.length_mix_gap(torch.stack([mixed] * 2), real, steps_per_beat=4).item() == \
        pytest.approx(2 * spread, rel=1e-5)
    # Every piece in quarters: half the notes in the wrong class, on both sides, and no spread.
    quarters = torch.stack([_one_voice(4)] * 2)
    assert terms.length_mix_gap(quarters, real, steps_per_beat=4).item() == pytest.approx(1.0 + 2 * spread, rel=1e-5)
    fake = torch.stack([mixed, _one_voice(4)]).mul(0.9).requires_grad_(True)
    terms.length_mix_gap(fake, real, steps_per_beat=4).backward()
    assert fake.grad.abs().sum() > 0


def test_bar_fullness_reads_each_bar_and_silence_as_zero():
    ends_halfway = _chords(4, 4, sounding_steps=128)
    assert torch.allclose(terms.bar_fullness(ends_halfway[None], steps_per_bar=16),
                          torch.tensor([[4 / 64] * 8 + [0.0] * 8]))


def test_ending_gap_is_zero_for_real_endings_and_grows_without_them():
    full, ends_halfway = _chords(4, 4), _chords(4, 4, sounding_steps=128)
    real = torch.stack([full, full, ends_halfway, ends_halfway])  # half the pieces fall silent after bar 8
    assert terms.ending_gap(real.flip(0), real, steps_per_bar=16).item() == pytest.approx(0.0)
    # Every piece sounds to its end: the last 8 bars are twice as full as real ones on average and
    # do not spread at all, so 16 of the 32 numbers are off by 100 %.
    assert terms.ending_gap(torch.stack([full] * 4), real, steps_per_bar=16).item() == pytest.approx(0.5)
    # Every piece thinned to two voices instead: the last bars' mean is met, their spread is not,
    # and the first bars are half as full.
    thin = torch.stack([_chords(2, 4)] * 4)
    assert terms.ending_gap(thin, real, steps_per_bar=16).item() == pytest.approx((8 * 0.5 + 8 * 1.0) / 32)
    fake = thin.clone().requires_grad_(True)
    terms.ending_gap(fake, real, steps_per_bar=16).backward()
    assert fake.grad.abs().sum() > 0


def test_bar_silence_is_one_for_a_silent_bar_and_counts_a_lingering_note_as_barely_silent():
    ends_halfway = _chords(4, 4, sounding_steps=128)
    lingering = ends_halfway.clone()
    lingering[0, 10, 128:144] = 1  # one note held through bar 9
    lingering[1, 10, 128] = 1
    silence = terms.bar_silence(torch.stack([ends_halfway, lingering]), steps_per_bar=16)
    assert torch.allclose(silence[0], torch.tensor([float(np.exp(-64 / 8))] * 8 + [1.0] * 8))
    assert silence[1, 8].item() == pytest.approx(np.exp(-16 / 8)) and torch.equal(silence[1, 9:], silence[0, 9:])


def test_silence_gap_is_zero_for_real_endings_and_makes_lingering_notes_pay():
    full, ends_halfway = _chords(4, 4), _chords(4, 4, sounding_steps=128)
    real = torch.stack([full, full, ends_halfway, ends_halfway])
    assert terms.silence_gap(real.flip(0), real, steps_per_bar=16).item() == pytest.approx(0.0, abs=1e-6)
    # No piece ends: all of the real silence is missing.
    assert terms.silence_gap(torch.stack([full] * 4), real, steps_per_bar=16).item() == pytest.approx(1.0, abs=2e-3)
    # Endings that fade: one note lingers in every bar after the chord stops.
    fading = ends_halfway.clone()
    fading[0, 10, 128:] = 1
    fading[1, 10, 128::16] = 1
    fake = torch.stack([full, full, fading, fading]).requires_grad_(True)
    gap = terms.silence_gap(fake, real, steps_per_bar=16)
    assert gap.item() == pytest.approx(1 - np.exp(-2), abs=1e-3)
    gap.backward()
    assert (fake.grad[2, 0, 10, 128:] > 0).all()  # each lingering cell pays: lowering it lowers the gap


def test_the_registry_checks_names_and_weights_and_keeps_its_order():
    assert list(terms.check_terms({"silence": 2, "diversity": 1, "texture": 0})) == ["diversity", "silence"]
    with pytest.raises(ApolloError, match="did you mean texture"):
        terms.check_terms({"textur": 1})
    with pytest.raises(ApolloError, match="retired"):
        terms.check_terms({"confidence": 1})
    with pytest.raises(ApolloError, match=">= 0"):
        terms.check_terms({"texture": -1})
    assert all(term.meaning and term.version >= 1 for term in terms.TERMS.values())


def test_a_term_whose_definition_changed_says_so(monkeypatch):
    weights = {"diversity": 1.0, "texture": 2.0}
    assert terms.outdated(terms.versions(weights), weights) == []
    assert terms.outdated({}, weights) == []  # saved before versions: version 1
    newer = terms.TERMS["texture"].__class__("texture", 2, "something else", terms.TERMS["texture"].compute)
    monkeypatch.setitem(terms.TERMS, "texture", newer)
    (line,) = terms.outdated({"diversity": 1, "texture": 1}, weights)
    assert "'texture'" in line and "version 1" in line and "version 2" in line


def test_every_term_is_zero_on_the_real_batch_itself_and_passes_gradients(data):
    dataset = RollDataset(data, "train")
    real = torch.from_numpy(dataset.planes(range(8))).float()
    fake = real.flip(0).clone().requires_grad_(True)  # the same pieces in another order
    for term in terms.TERMS.values():
        value = term.compute(terms.Batch(fake, real, fake, steps_per_beat=4))
        assert value.item() == pytest.approx(0.0, abs=1e-5), term.name
        jitter = 0.01 * torch.rand(real.shape, generator=torch.Generator().manual_seed(0))
        noisy = (real[:1].expand_as(real) * 0.98 + jitter).requires_grad_(True)  # nearly collapsed: every term pays
        term.compute(terms.Batch(noisy, real, noisy, steps_per_beat=4)).backward()
        assert noisy.grad is not None and noisy.grad.abs().sum() > 0, term.name
