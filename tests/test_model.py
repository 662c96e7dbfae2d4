"""The DCGAN: shapes, ApolloGAN's sizes, normalizations, and configs that refuse impossible shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from apollo.model import (MOTION_REACH, PRESETS, Discriminator, Generator, MinibatchNearest, MinibatchStd, ModelConfig,
                          count_parameters, fold_octaves, group_mean, voice_motion)


def test_apollo_preset_has_apollogans_sizes():
    config = PRESETS["apollo"]
    assert config.noise_shape == (7, 2, 8)
    assert config.hidden_widths == [1024, 512, 256, 128]
    g, d = Generator(config), Discriminator(config)
    assert round(count_parameters(g) / 1e6, 1) == 11.1
    assert round(count_parameters(d) / 1e6, 1) == 14.2
    dense = [m for m in d.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in dense] == [(2048, 512), (512, 1)]
    strided = [m for m in [*g.modules(), *d.modules()] if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(strided) == 10 and all(m.stride == (2, 2) for m in strided)


@pytest.mark.parametrize("norm", ["spectral", "batch", "layer", "none"])
def test_shapes_from_noise_to_logit(norm):
    config = ModelConfig(width=8, discriminator_norm=norm)
    g, d = Generator(config), Discriminator(config)
    rolls = g(g.sample_noise(3))
    assert rolls.shape == (3, 2, 64, 256) and 0 <= rolls.min() and rolls.max() <= 1
    assert torch.allclose(torch.sigmoid(g.logits(g.sample_noise(3, torch.Generator().manual_seed(1)))),
                          g(g.sample_noise(3, torch.Generator().manual_seed(1))))
    assert d(rolls).shape == (3,)
    has_batch_norm = any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert has_batch_norm == (norm == "batch")


def test_other_grids_and_encodings():
    config = ModelConfig(width=8, roll_channels=1, n_pitches=96, n_steps=128, n_layers=4)
    g, d = Generator(config), Discriminator(config)
    assert config.noise_shape == (7, 6, 8)
    assert g(g.sample_noise(2)).shape == (2, 1, 96, 128) and d(g(g.sample_noise(2))).shape == (2,)


def test_channels_last_and_bf16_give_the_same_shapes():
    config = ModelConfig(width=8)
    g, d = Generator(config).to(memory_format=torch.channels_last), Discriminator(config).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = d(g(g.sample_noise(2).contiguous(memory_format=torch.channels_last)))
    assert scores.shape == (2,) and torch.isfinite(scores.float()).all()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(n_steps=250), "multiples of"),
        (dict(n_layers=1), "at least 2"),
        (dict(kernel=3), "even"),
        (dict(discriminator_norm="group"), "discriminator_norm"),
        (dict(generator_norm="spectral"), "generator_norm"),
        (dict(minibatch_std=-1), "group size"),
        (dict(scaled_biases=True), "needs voices"),
        (dict(key_contrast=0.4), "needs the chroma paths"),
        (dict(key_contrast=-1.0, chroma=True), "at least 0"),
    ],
)
def test_impossible_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)


def test_config_round_trips_through_a_dict():
    config = ModelConfig(width=16, discriminator_norm="layer")
    assert ModelConfig(**config.to_dict()) == config


def test_minibatch_std_sees_repeated_rolls_and_keeps_groups_apart():
    layer = MinibatchStd(4)
    rolls = torch.rand(8, 3, 4, 4)
    rolls[:4] = rolls[0]  # the first group: one roll four times, as a collapsed generator writes
    out = layer(rolls)
    assert out.shape == (8, 4, 4, 4)
    assert torch.all(out[:4, 3] < 1e-3) and torch.all(out[4:, 3] > 0.1)
    # Real rolls followed by fakes: what the fakes are never changes the real rolls' verdict.
    d = Discriminator(ModelConfig(width=8)).eval()
    real = torch.rand(4, 2, 64, 256).round()
    assert torch.equal(d(torch.cat([real, torch.zeros_like(real)]))[:4], d(torch.cat([real, torch.ones_like(real)]))[:4])


def test_the_generator_starts_without_checkerboard():
    """Each transposed convolution answers a constant input with a constant output (away from the
    borders): even and odd cells get the same value, so no dotted rows from the start."""
    g = Generator(ModelConfig(width=8))
    layers = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(layers) == 5
    for layer in layers:
        out = layer(torch.ones(1, layer.in_channels, 6, 6)).detach()[:, :, 2:-2, 2:-2]
        assert torch.allclose(out, out[:, :, :1, :1].expand_as(out), atol=1e-6)
    # An ordinary random transposed convolution does not: the test can fail.
    plain = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1, bias=False)
    out = plain(torch.ones(1, 8, 6, 6)).detach()[:, :, 2:-2, 2:-2]
    assert not torch.allclose(out, out[:, :, :1, :1].expand_as(out), atol=1e-6)


def test_fold_octaves_adds_each_row_into_its_pitch_class():
    cells = torch.zeros(1, 64, 4)
    cells[0, 0, 0] = cells[0, 12, 0] = cells[0, 60, 0] = 1  # three octaves of class 0
    cells[0, 5, 1] = cells[0, 63, 2] = 1  # class 5; the last row, 63, is class 3
    chroma = fold_octaves(cells)
    assert chroma.shape == (1, 12, 4)
    assert chroma[0, 0, 0] == 3 and chroma[0, 5, 1] == 1 and chroma[0, 3, 2] == 1
    assert chroma.sum() == cells.sum()


def test_chroma_paths_give_a_key_bias_and_a_pitch_class_view():
    config = ModelConfig(width=8, chroma=True)
    g, d = Generator(config), Discriminator(config)
    with torch.no_grad():
        nn.init.normal_(g.key.weight, 0.0, 1.0)
        noise = g.sample_noise(3)
        bias = g.logits(noise) - g.net(noise)
    # One value per sample and pitch class, the same in every octave and at every step.
    assert torch.allclose(bias[:, :, :52], bias[:, :, 12:], atol=1e-5)
    assert torch.allclose(bias, bias[..., :1].expand_as(bias), atol=1e-5)
    assert bias[0, 0, :12, 0].std() > 0.1 and not torch.allclose(bias[0], bias[1])
    rolls = g(noise)
    assert d(rolls).shape == (3,) and d.chroma is not None
    # Without it, no extra parameters: older checkpoints load as they were saved.
    plain = ModelConfig(width=8)
    assert Generator(plain).key is None and Discriminator(plain).chroma is None
    assert ModelConfig(**config.to_dict()) == config


def test_key_contrast_keeps_each_pieces_key_bias_at_its_size_however_small_the_weights():
    config = ModelConfig(width=8, chroma=True, key_contrast=0.4)
    g = Generator(config)
    noise = g.sample_noise(3)
    for scale in (1.0, 1e-3):  # a learned key that has shrunk a thousandfold keeps its contrast
        with torch.no_grad():
            nn.init.normal_(g.key.weight, 0.0, scale)
            bias = (g.logits(noise) - g.net(noise))[:, 0, :12, 0]  # [pieces, pitch classes]
        assert torch.allclose(bias.std(dim=1), torch.full((3,), 0.4), atol=1e-4)
        assert torch.allclose(bias.mean(dim=1), torch.zeros(3), atol=1e-5)
        assert not torch.allclose(bias[0], bias[1])  # each piece still picks its own key
    assert ModelConfig(**config.to_dict()) == config


def test_rhythm_path_sees_when_pitches_sound_and_start_whatever_the_pitches():
    config = ModelConfig(width=8, rhythm=True)
    d = Discriminator(config).eval()
    assert d.rhythm is not None and d.chroma is None
    rolls = (torch.rand(2, 2, 64, 256, generator=torch.Generator().manual_seed(0)) > 0.95).float()
    shuffled = rolls[:, :, torch.randperm(64)]  # the same rhythm, other pitches
    with torch.no_grad():
        assert torch.equal(d.rhythm(rolls.sum(dim=2)), d.rhythm(shuffled.sum(dim=2)))
        assert d(rolls).shape == (2,)
        assert not torch.allclose(d(rolls), d(shuffled))  # the main path still sees the pitches
    # Besides its own, the rhythm path changes only the first dense layer's input size.
    plain = {k: v.shape for k, v in Discriminator(ModelConfig(width=8)).state_dict().items()}
    with_rhythm = {k: v.shape for k, v in d.state_dict().items() if not k.startswith("rhythm.")}
    changed = {k for k in plain if plain[k] != with_rhythm[k]}
    assert plain.keys() == with_rhythm.keys() and changed and all(k.startswith("head.0.") for k in changed)


def test_voice_motion_counts_each_start_by_its_distance_from_the_note_that_just_ended():
    sounding, onsets = torch.zeros(1, 64, 8), torch.zeros(1, 64, 8)
    def note(pitch, start, end):
        sounding[0, pitch, start:end], onsets[0, pitch, start] = 1, 1
    note(10, 0, 4), note(12, 4, 8)  # a voice that steps up a tone at step 4
    note(30, 0, 8)  # a voice that holds: it ends nowhere, so no start is near it
    note(40, 2, 4), note(40, 4, 6)  # a repeated note: a step of 0
    note(60, 4, 8)  # a voice that enters: far from every ending note
    motion = voice_motion(sounding, onsets)
    assert motion.shape == (1, MOTION_REACH + 2, 8)
    # At step 4: four starts in all; within 0 semitones the repeat, within 2 also the tone.
    assert motion[0, :, 4].tolist() == [1, 1] + [2] * (MOTION_REACH - 1) + [3]
    assert motion[0, -1, 0] == 2 and motion[0, :-1, 0].sum() == 0  # nothing ended before step 0
    # Without the onset plane the repeated note is one long note: only the tone's step is left.
    assert voice_motion(sounding)[0, :, 4].tolist() == [0, 0] + [1] * (MOTION_REACH - 1) + [2]


def test_nearest_neighbour_feature_finds_each_rolls_twin_within_its_own_group_only():
    rolls = torch.zeros(8, 2, 64, 256)
    for i in range(8):  # each roll holds one note of its own for 128 steps; roll 6 is roll 5
        rolls[i, 0, 10 + 3 * (i if i != 6 else 5), :128] = 1
    rolls[2:4, 0, 40, :128] = 1  # rolls 2 and 3 share a second note: half their cells
    nearest = MinibatchNearest(4)(rolls)[:, 0]  # groups: rolls 0-3 ("real") and 4-7 ("fake")
    assert nearest.tolist() == pytest.approx([0, 0, 0.5, 0.5, 0, 1, 1, 0])
    rolls[4] = rolls[0]  # a twin across the halves is not seen: the groups stay apart
    assert MinibatchNearest(4)(rolls)[[0, 4], 0].tolist() == [0, 0]
    assert MinibatchNearest(4)(rolls[:3]).abs().sum() == 0  # a batch the groups do not divide: no neighbours


def test_nearest_neighbour_feature_changes_only_the_dense_input_and_passes_gradients():
    d = Discriminator(ModelConfig(width=8, nearest=4))
    rolls = torch.rand(8, 2, 64, 256).round().requires_grad_(True)
    d(rolls).sum().backward()
    assert rolls.grad is not None and rolls.grad.abs().sum() > 0
    plain = {k: v.shape for k, v in Discriminator(ModelConfig(width=8)).state_dict().items()}
    changed = {k for k, v in d.state_dict().items() if plain[k] != v.shape}
    assert plain.keys() == d.state_dict().keys() and changed and all(k.startswith("head.0.") for k in changed)
    assert Discriminator(ModelConfig(width=8)).nearest is None  # off by default: older checkpoints load
    with pytest.raises(ValueError, match="group sizes"):
        ModelConfig(nearest=-1)


def test_group_mean_averages_within_each_group_only():
    features = torch.arange(8.0).reshape(8, 1)
    assert group_mean(features, 4)[:, 0].tolist() == [1.5] * 4 + [5.5] * 4
    assert torch.equal(group_mean(features[:6], 4), features[:6])  # the groups do not divide 6: each row alone


def test_rhythm_group_scores_a_roll_by_the_company_it_keeps_and_only_its_own_group():
    torch.manual_seed(0)
    rolls = (torch.rand(8, 2, 64, 256) < 0.05).float()
    changed = rolls.clone()
    changed[1] = 0  # another roll of roll 0's group, and none of the second group's
    with torch.no_grad():
        d, alone = (Discriminator(ModelConfig(width=8, rhythm=True, rhythm_group=group)) for group in (4, 0))
        for _ in range(5):  # a few passes in training mode, so that the spectral norms settle
            d(rolls), alone(rolls)
        d.eval(), alone.eval()
        scores, moved = d(rolls), d(changed)
        assert (moved[0] - scores[0]).abs() > 1e-4 and torch.equal(moved[4:], scores[4:])
        assert torch.equal(alone(changed)[0], alone(rolls)[0])  # without it a roll is scored on its own
    assert alone.state_dict().keys() == d.state_dict().keys()  # only the dense input widens
    with pytest.raises(ValueError, match="needs rhythm"):
        ModelConfig(rhythm_group=4)


def test_motion_path_tells_a_leap_from_a_step_and_changes_only_the_dense_input():
    config = ModelConfig(width=8, motion=True)
    d = Discriminator(config).eval()
    def line(steps):  # one voice: a note every 16 steps, each `step` semitones above the last
        roll = torch.zeros(1, 2, 64, 256)
        for i in range(16):
            pitch = 20 + (i * steps) % 24
            roll[0, 0, pitch, 16 * i:16 * i + 16], roll[0, 1, pitch, 16 * i] = 1, 1
        return roll
    with torch.no_grad():
        by_step, by_leap = d.motion(voice_motion(line(2)[:, 0], line(2)[:, 1])), d.motion(voice_motion(line(7)[:, 0], line(7)[:, 1]))
        assert not torch.allclose(by_step, by_leap)
        assert d(torch.cat([line(2), line(7)])).shape == (2,)
    plain = {k: v.shape for k, v in Discriminator(ModelConfig(width=8)).state_dict().items()}
    with_motion = {k: v.shape for k, v in d.state_dict().items() if not k.startswith("motion.")}
    changed = {k for k in plain if plain[k] != with_motion[k]}
    assert plain.keys() == with_motion.keys() and changed and all(k.startswith("head.0.") for k in changed)
    assert Discriminator(ModelConfig(width=8)).motion is None  # off by default: older checkpoints load


def test_style_numbers_carry_one_noise_position_to_the_whole_piece():
    # Without style (and without the key and layer norm, the other paths across the piece) a noise
    # position shapes only its neighbourhood: the far end ignores it. With style it reaches every step.
    def far_end_changes(config: ModelConfig) -> bool:
        torch.manual_seed(0)
        g = Generator(config).eval()
        nn.init.zeros_(g.net[-1].bias)  # small differences would vanish in float32 next to the bias of -3
        noise = g.sample_noise(1, torch.Generator().manual_seed(0))
        moved = noise.clone()
        moved[0, :, 0, 0] += 3.0  # the first position: the lowest pitches of the first bars
        with torch.no_grad():
            return not torch.equal(g.logits(noise)[..., -32:], g.logits(moved)[..., -32:])

    assert not far_end_changes(ModelConfig(width=8, generator_norm="none"))
    assert far_end_changes(ModelConfig(width=8, generator_norm="none", style=4))
    g = Generator(ModelConfig(width=8, style=4))
    assert g.net[0].in_channels == 7 + 4 and g(g.sample_noise(2)).shape == (2, 2, 64, 256)
    assert Generator(ModelConfig(width=8)).style is None  # off: older checkpoints load as saved
    with pytest.raises(ValueError, match="style"):
        ModelConfig(style=-1)


def test_key_and_style_are_read_from_whole():
    """``whole`` carries the choices about the whole piece, and only those: the rest comes from ``noise``."""
    torch.manual_seed(0)
    g = Generator(ModelConfig(width=8, chroma=True, style=4, generator_norm="none")).eval()
    with torch.no_grad():
        nn.init.normal_(g.key.weight, 0.0, 1.0)
        noise, other = g.sample_noise(2), g.sample_noise(2)
        assert torch.equal(g(noise, noise), g(noise))  # by default, read from the noise itself
        assert not torch.allclose(g(noise, other), g(noise))
        # The key bias of `other` is added whatever the noise; the style numbers of `other` go to the net.
        style = g.style(other.flatten(1))[:, :, None, None].expand(-1, -1, *noise.shape[2:])
        key = g.key(other.flatten(1))[:, None, torch.arange(64) % 12, None]
        assert torch.allclose(g.logits(noise, other), g.net(torch.cat([noise, style], dim=1)) + key, atol=1e-5)
    assert g.reads_whole and not Generator(ModelConfig(width=8)).reads_whole
    plain = Generator(ModelConfig(width=8)).eval()
    with torch.no_grad():
        assert torch.equal(plain(noise, other), plain(noise))


def test_pitch_bias_moves_one_row_of_every_piece_and_nothing_else():
    g = Generator(ModelConfig(width=8, pitch_bias=True)).eval()
    assert g.pitch_bias.shape == (2, 64, 1) and not g.pitch_bias.any()  # starts as the plain model
    noise = g.sample_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = g.logits(noise)
        g.pitch_bias[:, 0] = -10.0  # the lowest pitch: never play it
        after = g.logits(noise)
    assert torch.allclose(after[:, :, 0], before[:, :, 0] - 10.0) and torch.equal(after[:, :, 1:], before[:, :, 1:])
    assert Generator(ModelConfig(width=8)).pitch_bias is None


def test_refine_ends_the_generator_in_a_stride_1_layer_that_sees_neighbouring_steps():
    g = Generator(ModelConfig(width=8, refine=True))
    assert isinstance(g.net[-1], nn.Conv2d) and g.net[-1].stride == (1, 1)
    hidden = torch.zeros(1, 4, 64, 256, requires_grad=True)  # what the last layer reads
    g.net[-1](hidden)[0, 0, 30, 100].backward()
    steps = hidden.grad[0].abs().sum(dim=(0, 1)).nonzero().flatten().tolist()
    pitches = hidden.grad[0].abs().sum(dim=(0, 2)).nonzero().flatten().tolist()
    assert steps == [98, 99, 100, 101, 102] and pitches == [29, 30, 31]
    assert g(g.sample_noise(2)).shape == (2, 2, 64, 256)


def test_the_residual_refine_starts_as_the_plain_generator_and_learns_to_see_neighbouring_steps():
    torch.manual_seed(0)
    plain = Generator(ModelConfig(width=8))
    torch.manual_seed(0)
    residual = Generator(ModelConfig(width=8, refine_residual=True))
    residual.net.load_state_dict(plain.net.state_dict())
    noise = plain.sample_noise(2, torch.Generator().manual_seed(1))
    assert torch.equal(residual(noise), plain(noise))  # its last weights start at zero
    # One step of gradient descent gives them a say, over 3 pitches and 5 steps.
    residual(noise)[:, 0].mean().backward()
    last = residual.residual[-1]
    assert last.weight.grad.abs().sum() > 0 and last.kernel_size == (3, 5)
    with torch.no_grad():
        last.weight.normal_(0, 0.1)
    maps = torch.randn(1, 2, 64, 256, generator=torch.Generator().manual_seed(2), requires_grad=True)
    (maps + residual.residual(maps))[0, 0, 30, 100].backward()
    steps = maps.grad[0].abs().sum(dim=(0, 1)).nonzero().flatten().tolist()
    assert steps == list(range(96, 105))  # two layers of +-2 steps each


def test_a_voice_sounds_one_pitch_or_rests_and_a_cell_sounds_if_any_voice_sounds_it():
    g = Generator(ModelConfig(width=8, voices=2, pitch_bias=True)).eval()
    assert g.net[-1].out_channels == 2 * 2 + 1  # a pitch and a rest map per voice, then the onset plane
    outputs = torch.full((1, 5, 64, 4), -20.0)
    outputs[:, 0, 10] = 20.0  # voice 0 sounds pitch 10 at every step
    outputs[:, 1, 12, :2] = 20.0  # voice 1 sounds pitch 12 at steps 0 and 1 ...
    outputs[:, 3, :, 2:] = 20.0  # ... and rests at steps 2 and 3 (its rest map)
    sounding = g.sounding(outputs)[0, 0]
    assert sounding.shape == (64, 4)
    assert (sounding > 0.5).nonzero().tolist() == [[10, 0], [10, 1], [10, 2], [10, 3], [12, 0], [12, 1]]
    # Anywhere between, the union of the voices' choices among their pitches and a rest.
    outputs = torch.randn(2, 5, 64, 256)
    choice = torch.softmax(torch.cat([outputs[:, :2], outputs[:, 2:4].mean(2, keepdim=True)], dim=2), dim=2)[:, :, :-1]
    expected = 1 - (1 - choice[:, 0]) * (1 - choice[:, 1])
    assert torch.allclose(g.sounding(outputs)[:, 0], expected, atol=1e-6)


def test_one_voice_sounds_at_most_one_cell_a_step_and_logits_are_the_probabilities():
    torch.manual_seed(0)
    g = Generator(ModelConfig(width=8, voices=1, chroma=True, pitch_bias=True)).eval()
    noise = g.sample_noise(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        g.net[-1].weight.mul_(50.0)  # a sure generator: its cells far from 0.5 either way
        probabilities = g(noise)
        logits = g.logits(noise)
        g.pitch_bias[0, 20] = 100.0  # the voice's pitch 20 outweighs everything else, the rest too
        sure = g(noise)
    assert probabilities.shape == (4, 2, 64, 256)
    assert (probabilities[:, 0] > 0.5).sum(dim=1).max() <= 1  # at most one cell per step
    assert ((sure[:, 0] > 0.5).nonzero()[:, 1] == 20).all() and ((sure[:, 0] > 0.5).sum(dim=1) == 1).all()
    assert torch.allclose(torch.sigmoid(logits), probabilities, atol=1e-5)
    # The onset plane stays a sigmoid of its own map, with the key's bias as without voices.
    assert torch.allclose(probabilities[:, 1], torch.sigmoid(g.outputs(noise)[:, 2]), atol=1e-6)


def test_scaled_biases_weigh_the_voices_biases_by_the_spread_of_their_maps():
    torch.manual_seed(0)
    plain = Generator(ModelConfig(width=8, voices=2, chroma=True, pitch_bias=True)).eval()
    scaled = Generator(ModelConfig(width=8, voices=2, chroma=True, pitch_bias=True, scaled_biases=True)).eval()
    scaled.load_state_dict(plain.state_dict())  # the same weights: no new parameters
    noise = plain.sample_noise(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for g in (plain, scaled):
            g.net[-1].weight.mul_(400.0)  # maps with a spread of several logits
            g.pitch_bias[0, 20] = 1.0
        maps = plain.net(noise)
        spread = maps[:, :2].std(dim=2).mean(dim=2)  # [B, voices]
        bias = {name: g.outputs(noise) - maps for name, g in (("plain", plain), ("scaled", scaled))}
    assert (spread > 2).all()
    # Each voice's pitch map takes its biases times its own spread; the rest maps and the onset plane as before.
    expected = bias["plain"][:, :2] * spread[:, :, None, None]
    assert torch.allclose(bias["scaled"][:, :2], expected, atol=1e-4)
    assert torch.equal(bias["scaled"][:, 2:], bias["plain"][:, 2:])
    # A map flatter than 1 keeps its biases at their own weight.
    flat = torch.zeros(1, 5, 64, 256)
    assert torch.equal(scaled.voice_gain(flat), torch.ones(1, 2, 1, 1))
    # No gradient flows through the gain: the maps learn only through the biases' sum.
    assert not scaled.voice_gain(torch.randn(1, 5, 64, 8, requires_grad=True)).requires_grad
