"""The sequence families (LSTM, GRU, Transformer): real training steps on real chorales, exact
resume, sampling that agrees with the likelihood the model was trained on, and the generate path."""

from __future__ import annotations

import mido
import pytest
import torch
from click.testing import CliRunner

from apollo.checkpoint import load_checkpoint, load_generator
from apollo.cli.main import cli
from apollo.errors import ApolloError
from apollo.generate import export_model, generate
from apollo.roll import PianoRoll
from apollo.sequence import SEQUENCE_FAMILIES, SequenceConfig, SequenceModel, sample_piece, sample_pieces, to_planes, to_steps
from apollo.train import TrainConfig, train

TINY = dict(preset="tiny", batch_size=4, log_every=2, sample_every=4, eval_every=4, n_samples=2, n_eval=4,
            n_reference=8, best_max_silence=1.0, lr=1e-3, betas=(0.9, 0.999))

pytestmark = pytest.mark.usefixtures("tiny_preset")


@pytest.fixture(scope="module")
def trained(chorale_dataset, tmp_path_factory) -> dict:
    """One tiny run of each family: 6 steps on the chorale dataset."""
    from apollo.model import PRESETS, ModelConfig
    from apollo.sequence import SEQUENCE_PRESETS

    PRESETS["tiny"] = ModelConfig(width=8)  # module scope: the function-scoped fixture is not there yet
    SEQUENCE_PRESETS["tiny"] = {"lstm": dict(width=16, n_layers=2), "gru": dict(width=16, n_layers=2),
                                "transformer": dict(width=16, n_layers=2, n_heads=2)}
    root = tmp_path_factory.mktemp("families")
    try:
        return {family: train(TrainConfig(model=family, steps=6, **TINY), data=chorale_dataset, run=root / family,
                              progress=False) for family in SEQUENCE_FAMILIES}
    finally:
        del PRESETS["tiny"], SEQUENCE_PRESETS["tiny"]


@pytest.mark.parametrize("family", SEQUENCE_FAMILIES)
def test_a_run_of_each_family_has_the_dcgans_layout(trained, family):
    run = trained[family]
    for path in ("config.json", "metrics.jsonl", "checkpoints/last.pt", "samples/step-000004/rolls.png",
                 "samples/step-000006/sample-01.mid"):
        assert (run / path).is_file(), path
    assert any((run / "tensorboard").iterdir())
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["model_config"]["family"] == family and state["train_config"]["model"] == family
    assert state["step"] == 6 and "discriminator" not in state and state["train_config"]["terms"] == {}
    lines = (run / "metrics.jsonl").read_text()
    assert '"nll"' in lines and '"eval/mean_oa"' in lines and '"grad_norm"' in lines


@pytest.mark.parametrize("family", SEQUENCE_FAMILIES)
def test_n_steps_resume_n_steps_equals_2n_steps_bit_for_bit(chorale_dataset, tmp_path, family):
    config = TrainConfig(model=family, steps=6, **{**TINY, "sample_every": 0, "eval_every": 0})
    once = train(config, data=chorale_dataset, run=tmp_path / "once", progress=False)
    half = train(TrainConfig(**{**config.__dict__, "steps": 3}), data=chorale_dataset, run=tmp_path / "half",
                 progress=False)
    train(TrainConfig(steps=6), resume=half, progress=False)
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (once, half))
    for part in ("generator", "generator_ema"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)
    assert a["g_optimizer"]["state"][0]["step"] == b["g_optimizer"]["state"][0]["step"] == 6


def test_likelihood_training_learns(chorale_dataset, tmp_path):
    run = train(TrainConfig(model="gru", steps=40, **{**TINY, "batch_size": 8, "sample_every": 0, "eval_every": 0,
                                                         "lr": 1e-2}),
                data=chorale_dataset, run=tmp_path / "run", progress=False)
    import json

    nll = [json.loads(line)["nll"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"nll"' in line]
    # From about 21 nats per step at the start to about 11 after 40 steps.
    assert nll[-1] < 0.6 * nll[0], nll


@pytest.mark.parametrize("family", SEQUENCE_FAMILIES)
def test_sampling_step_by_step_draws_from_the_likelihood_training_reads(family):
    """Each drawn cell is 1 exactly where its uniform lies below the probability the teacher-forced
    pass gives it (the RNN state and the Transformer's key-value cache agree with the parallel pass),
    except where keeping the planes consistent decides it."""
    torch.manual_seed(0)
    model = SequenceModel(SequenceConfig(family=family, width=32, n_layers=2, n_heads=2, n_steps=40, dropout=0.0))
    with torch.no_grad():
        model.chain.normal_(0, 1.0)  # a chain that matters
        model.head.bias.fill_(-1.0)  # busy enough that chords form
    model.eval()
    uniforms = model.sample_noise(3, torch.Generator().manual_seed(1))
    planes = model(uniforms)
    steps = to_steps(planes)
    with torch.no_grad():
        probability = torch.sigmoid(model.logits(steps))
    expected = (uniforms < probability).float()
    sounding, onset = steps[..., 0::2], steps[..., 1::2]
    before = torch.nn.functional.pad(sounding[:, :-1], (0, 0, 1, 0))
    decided = torch.zeros_like(steps, dtype=torch.bool)
    decided[..., 1::2] = (sounding == 0) | (before == 0)  # onset cells that consistency sets
    assert steps.sum() > 50
    assert torch.equal(steps[~decided], expected[~decided])
    # The planes are a valid onset encoding: onsets sound, and a note that starts is struck.
    assert not (onset * (1 - sounding)).any() and not (sounding * (1 - before) * (1 - onset)).any()


def test_steps_and_planes_are_one_layout():
    planes = (torch.rand(2, 2, 64, 16) < 0.3).float()
    steps = to_steps(planes)
    assert steps.shape == (2, 16, 128) and torch.equal(steps[1, 5, 2 * 7 + 1], planes[1, 1, 7, 5])
    assert torch.equal(to_planes(steps, 2), planes)


def test_a_piece_runs_on_past_the_window_and_starts_as_the_shorter_one():
    torch.manual_seed(0)
    for family in ("lstm", "transformer"):
        model = SequenceModel(SequenceConfig(family=family, width=16, n_layers=1, n_heads=2, n_steps=32, context=32)).eval()
        short, long = sample_piece(model, 32, seed=3), sample_piece(model, 80, seed=3)
        assert long.shape == (2, 64, 80) and torch.equal(long[..., :32], short)
        assert torch.equal(sample_pieces(model, 80, [2, 3, 4])[1], long)  # drawn together or alone, the same
        assert not torch.equal(sample_piece(model, 32, seed=4), short)


@pytest.mark.parametrize("family", SEQUENCE_FAMILIES)
def test_every_family_generates_through_apollo_generate(trained, tmp_path, family):
    checkpoint = trained[family] / "checkpoints" / "last.pt"
    result = generate(tmp_path / "piece.mid", checkpoint=checkpoint, bars=20, seed=5, instrument="violin",
                      ending="none", min_length=1)
    piece = result.pieces[0]
    assert result.family == family and result.temperature == 1.0
    midi = mido.MidiFile(piece.midi)
    assert abs(midi.length - piece.seconds) < 0.5 and piece.seconds == pytest.approx(20 * 4 * 60 / 100)
    programs = {message.program for message in midi if message.type == "program_change"}
    assert programs == {40}  # violin
    again = generate(tmp_path / "again.mid", checkpoint=checkpoint, bars=20, seed=5, instrument="violin",
                     ending="none", min_length=1)
    assert piece.midi.read_bytes() == again.pieces[0].midi.read_bytes()
    cold = generate(tmp_path / "cold.mid", checkpoint=checkpoint, bars=20, seed=5, ending="none", min_length=1,
                    temperature=0.5)
    hot = generate(tmp_path / "hot.mid", checkpoint=checkpoint, bars=20, seed=5, ending="none", min_length=1,
                   temperature=2.0)
    # A hotter draw of a model that is still near its start flips more cells on.
    assert cold.pieces[0].n_notes < hot.pieces[0].n_notes


def test_an_ensemble_a_wav_and_a_safetensors_export(trained, tmp_path):
    checkpoint = trained["transformer"] / "checkpoints" / "last.pt"
    exported = export_model(checkpoint, tmp_path / "model.safetensors")
    a = generate(tmp_path / "a.mid", checkpoint=checkpoint, seed=2, ensemble="string quartet", wav=True)
    b = generate(tmp_path / "b.mid", checkpoint=exported, seed=2, ensemble="string quartet")
    assert a.pieces[0].midi.read_bytes() == b.pieces[0].midi.read_bytes()
    assert len(a.pieces[0].parts) == 4 and a.pieces[0].wav.stat().st_size > 44
    model, meta = load_generator(exported)
    assert isinstance(model, SequenceModel) and meta["model_config"]["family"] == "transformer"


def test_the_command_line_trains_generates_and_refuses_what_does_not_apply(chorale_dataset, tmp_path, monkeypatch):
    from apollo.sequence import SEQUENCE_PRESETS

    monkeypatch.setitem(SEQUENCE_PRESETS, "small", SEQUENCE_PRESETS["tiny"])  # `apollo train` on CPU picks small
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--model", "lstm", "--data", str(chorale_dataset),
                                 "--steps", "2", "--batch-size", "4", "--no-progress", "--set", "eval_every=0",
                                 "--set", "sample_every=0", "--run", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "Training the lstm (small" in result.output and "Trained 2 steps" in result.output
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.pt")
    result = runner.invoke(cli, ["generate", "--checkpoint", checkpoint, "--temperature", "0.9", "--seed", "1",
                                 str(tmp_path / "out.mid")])
    assert result.exit_code == 0 and "lstm drawing at temperature 0.9" in result.output, result.output
    roll = PianoRoll.from_midi(tmp_path / "out.mid")
    assert roll.n_steps >= 16 * 16 - 1

    for args, message in (
        (["generate", "--checkpoint", checkpoint, "--threshold", "0.3", str(tmp_path / "x.mid")], "use --temperature"),
        (["generate", "--checkpoint", "bundled", "--temperature", "0.9", str(tmp_path / "x.mid")], "--threshold"),
        (["continue", "--checkpoint", checkpoint, str(tmp_path / "out.mid"), str(tmp_path / "x.mid")], "needs a DCGAN"),
        (["export", "--onnx", str(tmp_path / "x.onnx"), "--checkpoint", checkpoint], "needs a DCGAN"),
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1, result.output
        assert not (tmp_path / "x.mid").exists() and not (tmp_path / "x.onnx").exists()
    result = runner.invoke(cli, ["train", "--model", "rnn"])
    assert result.exit_code == 2 and "rnn" in result.output


def test_a_sequence_config_that_cannot_be_built_is_one_error(tmp_path):
    with pytest.raises(ValueError, match="family"):
        SequenceConfig(family="rnn")
    with pytest.raises(ValueError, match="heads"):
        SequenceConfig(family="transformer", width=30, n_heads=4)
    with pytest.raises(ValueError, match="model must be one of"):
        TrainConfig(model="wavenet")
    from apollo.checkpoint import save_generator

    model = SequenceModel(SequenceConfig(family="gru", width=8, n_layers=1))
    save_generator(tmp_path / "m.safetensors", model, {})
    loaded, _ = load_generator(tmp_path / "m.safetensors")
    assert isinstance(loaded, SequenceModel) and loaded.config.family == "gru"
    with pytest.raises(ApolloError):
        generate(tmp_path / "x.mid", checkpoint=tmp_path / "m.safetensors", temperature=0.0)
