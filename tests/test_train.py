"""The trainer: real steps on a tiny chorale dataset, the run layout, exact resume, Ctrl-C, safe loading."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import apollo.train as train_module
from apollo.checkpoint import load_checkpoint, load_generator, save_checkpoint
from apollo.cli.main import cli
from apollo.dataset import DatasetConfig, RollDataset
from apollo.errors import ApolloError
from apollo.model import PRESETS, Discriminator, ModelConfig
from apollo.preprocess import preprocess
from apollo.roll import PianoRoll
from apollo.train import TrainConfig, latest_checkpoint, saved_train_config, train

# Width 8 and batches of 4: every step takes milliseconds, and the loop still runs for real.
TINY = dict(preset="tiny", batch_size=4, log_every=2, sample_every=4, eval_every=4, n_samples=2, n_eval=8,
            n_reference=16)


@pytest.fixture(autouse=True)
def tiny_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny", ModelConfig(width=8))


@pytest.fixture(scope="module")
def data(chorale_dir, tmp_path_factory) -> Path:
    """A real dataset: two dozen chorales through `apollo preprocess`."""
    out = tmp_path_factory.mktemp("datasets") / "chorales"
    preprocess(chorale_dir, out, DatasetConfig(), workers=1)
    return out


def weights(path: Path) -> dict:
    state = load_checkpoint(path)
    return {part: state[part] for part in ("generator", "discriminator", "g_optimizer", "d_optimizer")}


def assert_identical(a, b, where: str = "") -> None:
    """Bit for bit: tensors by torch.equal, containers recursively."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_a_run_writes_config_metrics_checkpoints_and_samples(data, tmp_path):
    # Eight steps of a tiny model write near-identical rolls: let best.pt take them all the same.
    run = train(TrainConfig(steps=8, best_max_duplicates=1.0, **TINY), data=data, run=tmp_path / "run", progress=False)
    assert run == tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["train_config"]["steps"] == 8 and config["data"] == str(data)
    assert config["model_config"]["width"] == 8 and config["dataset_config"]["grid"]["n_pitches"] == 64
    assert config["train_config"]["preset"] == "tiny" and config["device"] == "cpu"

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "start" and lines[-1] == {**lines[-1], "event": "stop", "step": 8, "reason": "done"}
    logged = [line for line in lines if "d_loss" in line]
    assert [line["step"] for line in logged] == [2, 4, 6, 8]
    for line in logged:
        assert 0 < line["d_real"] < 1 and 0 < line["d_fake"] < 1 and line["samples_per_s"] > 0
        assert line["d_grad_norm"] > 0 and line["g_grad_norm"] > 0
    evaluated = [line for line in lines if "eval/mean_oa" in line]
    assert [line["step"] for line in evaluated] == [4, 8] and 0 <= evaluated[0]["eval/mean_oa"] <= 1

    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 8
    for step in (4, 8):
        folder = run / "samples" / f"step-{step:06d}"
        assert sorted(p.name for p in folder.iterdir()) == ["rolls.png", "sample-00.mid", "sample-01.mid"]
    assert any((run / "tensorboard").iterdir())


@pytest.mark.parametrize("limit", [0.0, 1.0])
def test_best_is_the_highest_mean_oa_among_evaluations_without_collapse(data, tmp_path, limit):
    run = train(TrainConfig(steps=8, best_max_duplicates=limit, **{**TINY, "eval_every": 2}), data=data,
                run=tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [line for line in lines if "eval/mean_oa" in line]
    allowed = [line for line in evaluated if (line["eval/near_duplicate_rate"] or 0.0) <= limit and
               line["eval/mean_oa"] is not None]
    assert any((line["eval/near_duplicate_rate"] or 0.0) > 0 for line in evaluated)  # the rule has work to do
    if limit == 1.0:
        assert allowed == [line for line in evaluated if line["eval/mean_oa"] is not None]
    best = run / "checkpoints" / "best.pt"
    if not allowed:
        assert not best.exists()
    else:
        chosen = max(allowed, key=lambda line: line["eval/mean_oa"])
        state = load_checkpoint(best)
        assert state["best_metric"] == chosen["eval/mean_oa"] and state["step"] == chosen["step"]


def test_the_checkpoint_alone_rebuilds_the_generator(data, tmp_path):
    run = train(TrainConfig(steps=2, **TINY), data=data, run=tmp_path / "run", progress=False)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["dataset_config"]["encoding"] == "onset" and state["dataset_config"]["n_steps"] == 256
    assert state["dataset_config"]["grid"] == {"lowest_pitch": 30, "n_pitches": 64, "steps_per_beat": 4}
    assert state["train_config"]["loss"] == "bce" and state["step"] == 2
    generator, meta = load_generator(run / "checkpoints" / "last.pt")
    assert meta["model_config"]["width"] == 8
    rolls = generator(generator.sample_noise(3))
    assert rolls.shape == (3, 2, 64, 256) and 0 <= rolls.min() and rolls.max() <= 1


def test_n_steps_resume_n_steps_equals_2n_steps_bit_for_bit(data, tmp_path):
    once = train(TrainConfig(steps=6, **TINY), data=data, run=tmp_path / "once", progress=False)
    half = train(TrainConfig(steps=3, **TINY), data=data, run=tmp_path / "half", progress=False)
    again = train(TrainConfig(steps=6), resume=half, progress=False)
    assert again == half
    assert_identical(weights(once / "checkpoints" / "last.pt"), weights(half / "checkpoints" / "last.pt"))
    events = [json.loads(line).get("event") for line in (half / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in events if e] == ["start", "stop", "resume", "stop"]


def test_fine_tuning_goes_on_from_a_checkpoint_in_a_new_run_and_leaves_the_old_one(data, tmp_path):
    once = train(TrainConfig(steps=6, **TINY), data=data, run=tmp_path / "once", progress=False)
    half = train(TrainConfig(steps=3, **TINY), data=data, run=tmp_path / "half", progress=False)
    checkpoint = half / "checkpoints" / "last.pt"
    before = weights(checkpoint)
    saved = saved_train_config(checkpoint)
    # With its settings unchanged, fine-tuning is resuming in a new folder: the same weights, bit for bit.
    same = train(dataclasses.replace(saved, steps=6), start_from=checkpoint, run=tmp_path / "same", progress=False)
    assert_identical(weights(once / "checkpoints" / "last.pt"), weights(same / "checkpoints" / "last.pt"))
    assert_identical(before, weights(checkpoint))  # the source run is left as it was
    first = json.loads((same / "metrics.jsonl").read_text().splitlines()[0])
    assert first["event"] == "start" and first["step"] == 3
    assert json.loads((same / "config.json").read_text())["start_from"] == str(checkpoint)
    # With new settings it goes on with them.
    tuned = train(dataclasses.replace(saved, steps=5, texture=1.0, lr=1e-4, d_lr=2e-5), start_from=checkpoint,
                  run=tmp_path / "tuned", progress=False)
    state = load_checkpoint(tuned / "checkpoints" / "last.pt")
    assert state["step"] == 5 and state["train_config"]["texture"] == 1.0
    assert state["g_optimizer"]["param_groups"][0]["lr"] == 1e-4 and state["d_optimizer"]["param_groups"][0]["lr"] == 2e-5
    assert any("texture_gap" in json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines())
    with pytest.raises(ApolloError, match="style cannot change"):
        train(dataclasses.replace(saved, style=3), start_from=checkpoint, run=tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()


def test_ctrl_c_saves_and_resumes_exactly(data, tmp_path, monkeypatch, capsys):
    once = train(TrainConfig(steps=5, **TINY), data=data, run=tmp_path / "once", progress=False)

    real_batches = train_module.Batches.__call__
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background

    def interrupt_during_batch_2(self, b):
        if b == 2:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: the step in progress finishes
        return real_batches(self, b)

    with monkeypatch.context() as patch:
        patch.setattr(train_module.Batches, "__call__", interrupt_during_batch_2)
        run = train(TrainConfig(steps=5, **TINY), data=data, run=tmp_path / "stopped", progress=False)
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    message = capsys.readouterr().err
    assert "Stopped at step 3 (Ctrl-C)" in message and f"apollo train --resume {run}" in message

    train(resume=run, progress=False)  # the run's own target: 5 steps
    assert_identical(weights(once / "checkpoints" / "last.pt"), weights(run / "checkpoints" / "last.pt"))


@pytest.mark.parametrize("loss", ["wgan-gp", "hinge"])
def test_other_losses_train(data, tmp_path, loss):
    run = train(TrainConfig(steps=2, loss=loss, **{**TINY, "eval_every": 0}), data=data, run=tmp_path / "run",
                progress=False)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["train_config"]["n_critic"] == (5 if loss == "wgan-gp" else 1)
    # The WGAN-GP critic is normalized per example (layer norm): no batch norm, no spectral norm.
    assert state["model_config"]["discriminator_norm"] == ("layer" if loss == "wgan-gp" else "spectral")
    line = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "d_loss" in x][-1]
    assert all(torch.isfinite(torch.tensor(line[key])) for key in ("d_loss", "g_loss", "d_real", "d_fake"))
    if loss == "wgan-gp":
        assert line["penalty"] >= 0


class Trap:
    """Unpickling this would create a file: what a malicious checkpoint does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_tampered_checkpoint_is_refused_without_running_it(data, tmp_path):
    run = train(TrainConfig(steps=1, **{**TINY, "eval_every": 0, "sample_every": 0}), data=data,
                run=tmp_path / "run", progress=False)
    last = run / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    evidence = tmp_path / "pwned"
    torch.save({**state, "step": Trap(evidence)}, last)
    with pytest.raises(ApolloError) as error:
        train(resume=run, progress=False)
    assert not evidence.exists()
    assert "refused to load" in str(error.value) and "\n" not in str(error.value)

    result = CliRunner().invoke(cli, ["train", "--resume", str(run)])
    assert result.exit_code == 1 and not evidence.exists()
    assert result.output.count("\n") == 1 and "refused to load" in result.output and "Traceback" not in result.output


def test_a_checkpoint_that_is_not_a_training_checkpoint_is_refused(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", {"generator": {}})
    with pytest.raises(ApolloError, match="not an Apollo training checkpoint"):
        train(resume=tmp_path / "run", progress=False)


def test_runs_are_never_reused(data, tmp_path):
    root = tmp_path / "runs"
    first = train(TrainConfig(steps=0, **TINY), data=data, runs_root=root, progress=False)
    second = train(TrainConfig(steps=0, **TINY), data=data, runs_root=root, progress=False)
    assert first != second and first.parent == second.parent == root
    with pytest.raises(ApolloError, match="already exists"):
        train(TrainConfig(steps=0, **TINY), data=data, run=first, progress=False)


def test_latest_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    assert latest_checkpoint(runs) is None
    for name, which, age in (("old", "best", 100), ("mid", "last", 50), ("new", "last", 0), ("new", "best", 10)):
        path = runs / name / "checkpoints" / f"{which}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (path.stat().st_atime - age,) * 2)
    assert latest_checkpoint(runs) == runs / "new" / "checkpoints" / "best.pt"
    assert latest_checkpoint(runs, "last") == runs / "new" / "checkpoints" / "last.pt"
    (runs / "new" / "checkpoints" / "best.pt").unlink()
    (runs / "new" / "checkpoints" / "last.pt").unlink()
    assert latest_checkpoint(runs) == runs / "mid" / "checkpoints" / "last.pt"  # best falls back to last


def test_the_command_line(data, tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "small", PRESETS["tiny"])  # `apollo train` on CPU picks small
    runner = CliRunner()
    args = ["train", "--data", str(data), "--steps", "2", "--batch-size", "4", "--no-progress",
            "--sample-every", "2", "--eval-every", "0"]
    result = runner.invoke(cli, [*args, "--run", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "Trained 2 steps" in result.output and (tmp_path / "run" / "samples" / "step-000002" / "rolls.png").is_file()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_config"]["preset"] == "small"

    result = runner.invoke(cli, ["train", "--resume", str(tmp_path / "run"), "--steps", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3

    # Fine-tuning keeps the checkpoint's settings (batches of 4, not the default 64) but those given.
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.pt")
    result = runner.invoke(cli, ["train", "--from", checkpoint, "--texture", "1", "--steps", "4", "--no-progress",
                                 "--run", str(tmp_path / "tuned")])
    assert result.exit_code == 0, result.output
    tuned = load_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.pt")
    assert tuned["step"] == 4 and tuned["train_config"]["texture"] == 1.0 and tuned["train_config"]["batch_size"] == 4

    for bad, message in (
        (["train", "--from", checkpoint, "--style", "3", "--run", str(tmp_path / "styled")], "style cannot change"),
        (["train", "--from", str(tmp_path / "nope.pt")], "nope.pt"),
        ([*args, "--run-dir", str(tmp_path / "run")], "already exists"),  # --run's name under torchrun
        (["train", "--data", str(tmp_path / "nothing")], "not a finished dataset"),
        (["train", "--resume", str(tmp_path / "nope")], "no run to resume"),
    ):
        result = runner.invoke(cli, bad)
        assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1, result.output
    result = runner.invoke(cli, ["train", "--resume", str(tmp_path / "run"), "--lr", "0.1"])
    assert result.exit_code == 2 and "drop --lr" in result.output


def test_no_dataset_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["train", "--steps", "1"])
    assert result.exit_code == 1 and "no dataset in datasets/" in result.output


def test_minibatch_std_groups_divide_the_batch(data, tmp_path, monkeypatch):
    from apollo.dataset import RollDataset
    from apollo.train import model_config_for

    monkeypatch.setitem(PRESETS, "tiny", ModelConfig(width=8, minibatch_std=4))
    dataset = RollDataset(data)
    groups = {b: model_config_for(TrainConfig(preset="tiny", batch_size=b), dataset).minibatch_std for b in (4, 5, 6, 8)}
    assert groups == {4: 4, 5: 0, 6: 2, 8: 4}  # a group never mixes real and fake rolls
    run = train(TrainConfig(steps=2, **{**TINY, "batch_size": 6, "eval_every": 0}), data=data, run=tmp_path / "run",
                progress=False)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["model_config"]["minibatch_std"] == 2


@pytest.mark.parametrize("dim", [2, 3])
def test_shift_augmentation_moves_each_roll_by_at_most_n_cells(dim):
    rolls = torch.zeros(32, 2, 64, 256)
    rolls[:, :, 30, 100] = 1.0
    moved = train_module.shift_randomly(rolls, 5, dim, torch.Generator().manual_seed(0))
    where = moved.nonzero()
    assert len(where) == 64  # one cell per plane per roll: nothing lost, nothing added
    offsets = where[:, dim] - (30 if dim == 2 else 100)
    other = 3 if dim == 2 else 2
    assert (where[:, other] == (100 if dim == 2 else 30)).all()  # the other axis does not move
    assert offsets.abs().max() <= 5 and len(offsets.unique()) > 3
    assert torch.equal(moved[:, 0], moved[:, 1])  # both planes of a roll move together
    assert torch.equal(train_module.shift_randomly(rolls, 0, dim, torch.Generator()), rolls)
    # In whole beats (unit 4): the moves keep every note where it falls within the beat.
    beats = train_module.shift_randomly(rolls, 9, dim, torch.Generator().manual_seed(0), unit=4).nonzero()
    moves = beats[:, dim] - (30 if dim == 2 else 100)
    assert set(moves.unique().tolist()) == {-8, -4, 0, 4, 8}


def test_r1_and_the_moving_average_train_resume_exactly_and_sample(data, tmp_path):
    settings = dict(r1=1.0, ema=0.9, augment_shift=8, augment_transpose=2, **TINY)
    once = train(TrainConfig(steps=6, **settings), data=data, run=tmp_path / "once", progress=False)
    half = train(TrainConfig(steps=3, **settings), data=data, run=tmp_path / "half", progress=False)
    train(TrainConfig(steps=6), resume=half, progress=False)
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (once, half))
    assert_identical(a["generator_ema"], b["generator_ema"])
    assert_identical(weights(once / "checkpoints" / "last.pt"), weights(half / "checkpoints" / "last.pt"))
    # The average differs from the trained weights, and it is what apollo generate loads.
    assert not all(torch.equal(a["generator"][k], a["generator_ema"][k]) for k in a["generator"])
    generator, _ = load_generator(once / "checkpoints" / "last.pt")
    assert_identical(dict(generator.state_dict()), a["generator_ema"])
    penalties = [json.loads(x)["penalty"] for x in (once / "metrics.jsonl").read_text().splitlines() if "d_loss" in x]
    assert penalties and all(p >= 0 for p in penalties) and max(penalties) > 0


def test_the_discriminator_sees_generated_planes_as_they_decode(data):
    from apollo.dataset import RollDataset

    real = RollDataset(data, split="train")
    planes = torch.from_numpy(np.stack([roll.encode("onset") for roll in real.rolls(range(len(real)))])).float()
    assert torch.equal(train_module.as_decoded(planes), planes)  # real rolls already obey the rules
    noise = (torch.rand(8, 2, 64, 256, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    decoded = train_module.as_decoded(noise)
    assert not torch.equal(decoded, noise)  # stray onsets and onset-less starts were there
    for planes_in, planes_out in zip(noise, decoded):
        assert np.array_equal(PianoRoll.decode(planes_in.numpy()).encode("onset"), planes_out.numpy().astype(bool))


def test_a_run_saved_before_r1_ema_and_shift_existed_resumes_without_them(data, tmp_path):
    run = train(TrainConfig(steps=2, r1=0.0, ema=0.0, augment_shift=0, diversity=0.0, chroma=False, rhythm=False,
                            pitch_bias=False, **TINY),
                data=data,
                run=tmp_path / "old",
                progress=False)
    path = run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    older = ("r1", "ema", "augment_shift", "shift_in_beats", "diversity", "chroma", "confidence", "rhythm", "refine",
             "style", "pitch_bias", "best_max_duplicates", "closeness", "character", "texture", "ending", "lengths")
    for key in older:  # what an older Apollo wrote
        del state["train_config"][key]
        state["model_config"].pop(key, None)
    save_checkpoint(path, state)
    train(TrainConfig(steps=3), resume=run, progress=False)
    resumed = load_checkpoint(path)
    assert resumed["step"] == 3 and "generator_ema" not in resumed
    assert {key: resumed["train_config"][key] for key in ("r1", "ema", "augment_shift", "shift_in_beats", "diversity")} == \
        {"r1": 0.0, "ema": 0.0, "augment_shift": 0, "shift_in_beats": False, "diversity": 0.0}
    assert not resumed["model_config"]["chroma"] and not resumed["model_config"]["rhythm"]


def test_diversity_shortfall_is_one_for_a_collapsed_generator_and_zero_for_real_variety():
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(8, 2, 64, 256, generator=g) > 0.9).float()
    collapsed = real[:1].expand(8, -1, -1, -1)
    assert train_module.diversity_shortfall(collapsed, real).item() == pytest.approx(1.0)
    assert train_module.diversity_shortfall(real.flip(0), real).item() == pytest.approx(0.0)  # as varied as real
    half_as_varied = torch.where(torch.arange(8).reshape(8, 1, 1, 1) % 2 == 0, real, real[:1])
    assert 0.1 < train_module.diversity_shortfall(half_as_varied, real).item() < 0.9


def test_closeness_sees_a_few_duplicated_pieces_that_the_mean_spread_misses():
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(16, 2, 64, 256, generator=g) > 0.9).float()
    fake = (torch.rand(16, 2, 64, 256, generator=g) > 0.9).float()
    assert train_module.closeness(fake).item() == 0.0  # overlap about 0.1 between any two
    fake[1] = fake[0]  # one pair of twins among 120 pairs
    assert train_module.diversity_shortfall(fake, real).item() == 0.0
    assert train_module.closeness(fake).item() == pytest.approx(1 / 120)
    assert train_module.closeness(fake[:1].expand(16, -1, -1, -1)).item() == pytest.approx(1.0)
    # More notes do not buy distance: a twin with twice the notes still overlaps by 2/3.
    fake[1] = torch.maximum(fake[0], (torch.rand(2, 64, 256, generator=g) > 0.9).float())
    assert train_module.closeness(fake).item() > 0


def _one_voice(note_steps: int, sounding_steps: int = 256) -> torch.Tensor:
    """One pitch playing notes of ``note_steps`` back to back for ``sounding_steps``, onset-encoded."""
    roll = torch.zeros(2, 64, 256)
    roll[0, 10, :sounding_steps] = 1
    roll[1, 10, :sounding_steps:note_steps] = 1
    return roll


def test_rhythm_character_reads_note_lengths_offbeat_onsets_and_fullness():
    quarters, eighths, halves, half_silent = _one_voice(4), _one_voice(2), _one_voice(8), _one_voice(4, 128)
    character = train_module.rhythm_character(torch.stack([quarters, eighths, halves, half_silent]), steps_per_beat=4)
    expected = [[1 / 4, 0, 1 / 64], [1 / 2, 1 / 2, 1 / 64], [1 / 8, 0, 1 / 64], [1 / 4, 0, 1 / 128]]
    assert torch.allclose(character, torch.tensor(expected))
    # A one-plane roll: notes start where a pitch begins to sound after silence.
    separated = torch.zeros(1, 1, 64, 256)
    separated[0, 0, 10, 2:4] = separated[0, 0, 10, 8:16] = 1
    assert torch.allclose(train_module.rhythm_character(separated, steps_per_beat=4),
                          torch.tensor([[2 / 10, 1 / 2, 10 / 64 / 256]]))


def test_character_gap_is_one_when_every_piece_has_the_same_rhythm_and_zero_for_real_variety():
    real = torch.stack([_one_voice(4, 192), _one_voice(2, 192), _one_voice(4, 128), _one_voice(2, 128)])
    assert train_module.character_gap(real[[0, 0, 0, 0]], real, steps_per_beat=4).item() == pytest.approx(1.0)
    assert train_module.character_gap(real.flip(0), real, steps_per_beat=4).item() == pytest.approx(0.0)
    # The same rhythms, all of them as full: two of the three met.
    assert train_module.character_gap(real[[0, 1, 0, 1]], real, steps_per_beat=4).item() == pytest.approx(1 / 3)
    # Varying more than real pieces do costs as much: here twice the real spread of fullness.
    more = torch.stack([_one_voice(4, 224), _one_voice(2, 224), _one_voice(4, 96), _one_voice(2, 96)])
    assert train_module.character_gap(more, real, steps_per_beat=4).item() == pytest.approx(1 / 3)
    fake = real[[0, 0, 0, 1]].clone().requires_grad_(True)
    train_module.character_gap(fake, real, steps_per_beat=4).backward()
    assert fake.grad.abs().sum() > 0


def _chords(voices: int, note_steps: int, sounding_steps: int = 256) -> torch.Tensor:
    """``voices`` pitches a fifth apart, playing notes of ``note_steps`` together, onset-encoded."""
    return torch.stack([_one_voice(note_steps, sounding_steps).roll(7 * v, dims=1) for v in range(voices)]).amax(dim=0)


def test_texture_reads_fullness_voices_chord_size_and_note_density():
    four_voices, one_voice, half_silent = _chords(4, 4), _chords(1, 2), _chords(2, 4, 128)
    expected = [[4 / 64, 4, 4, 1 / 64], [1 / 64, 1, 1, 1 / 128], [2 * 128 / (64 * 256), 2, 2, 1 / 256]]
    assert torch.allclose(train_module.texture(torch.stack([four_voices, one_voice, half_silent])), torch.tensor(expected))
    # Voices that do not start together: two sound at once, but notes start one at a time.
    staggered = _chords(1, 4) + _chords(1, 4).roll((7, 2), dims=(1, 2))
    assert torch.allclose(train_module.texture(staggered[None]), torch.tensor([[2 / 64, 2, 1, 1 / 128]]))


def test_texture_gap_is_zero_for_the_real_mean_and_grows_with_thinner_or_fuller_pieces():
    real = torch.stack([_chords(4, 4), _chords(4, 4), _chords(2, 4), _chords(2, 4)])  # 3 voices on average
    assert train_module.texture_gap(real.flip(0), real).item() == pytest.approx(0.0)
    assert train_module.texture_gap(torch.stack([_chords(3, 4)] * 4), real).item() == pytest.approx(0.0)
    # The same texture in eighths: twice the notes, one of the four numbers off by 100 %.
    assert train_module.texture_gap(torch.stack([_chords(3, 2)] * 4), real).item() == pytest.approx(1 / 4)
    thin, full = torch.stack([_chords(1, 4)] * 4), torch.stack([_chords(5, 4)] * 4)
    assert train_module.texture_gap(thin, real).item() == pytest.approx(2 / 3)  # a third of each number
    assert train_module.texture_gap(full, real).item() == pytest.approx(2 / 3)
    fake = thin.clone().requires_grad_(True)
    train_module.texture_gap(fake, real).backward()
    assert fake.grad.abs().sum() > 0


def test_short_notes_counts_notes_under_three_steps_and_skips_what_the_decoder_drops():
    count = lambda roll: tuple(int(n) for n in train_module.short_notes(roll[None]))
    assert count(_one_voice(2)) == (128, 128)  # eighths: every note short
    assert count(_one_voice(4)) == (0, 64)  # quarters: none
    assert count(_one_voice(3)) == (0, 85)  # three steps is qualified; the 86th note, cut to one step, is none
    assert count(_one_voice(1)) == (0, 0)  # one-step sounds are dropped by the decoder, so are no notes
    mixed = _one_voice(2, sounding_steps=128) + _one_voice(8).roll(20, dims=1)  # another pitch, in half notes
    assert count(mixed) == (64, 64 + 32)


def test_length_gap_is_zero_for_the_real_mix_and_grows_with_fewer_short_notes():
    real = torch.stack([_one_voice(2), _one_voice(4)])  # 128 short notes of 192
    assert train_module.length_gap(real.flip(0), real).item() == pytest.approx(0.0)
    assert train_module.length_gap(torch.stack([_one_voice(4)] * 2), real).item() == pytest.approx(1.0)
    assert train_module.length_gap(torch.stack([_one_voice(2)] * 2), real).item() == pytest.approx(0.5)
    fake = torch.stack([_one_voice(2), _one_voice(4)]).mul(0.9).requires_grad_(True)
    train_module.length_gap(fake, torch.stack([_one_voice(2)] * 2)).backward()
    assert fake.grad.abs().sum() > 0


def test_length_mix_sorts_notes_into_mgevals_length_classes():
    # Classes in steps: 1, 2, 3, 4-5, 6-7, 8-11, 12-15, 16 and longer.
    mix = train_module.length_mix(torch.stack([_one_voice(2), _one_voice(3), _one_voice(6), _one_voice(32),
                                               torch.zeros(2, 64, 256)]), steps_per_beat=4)
    assert torch.allclose(mix, torch.tensor([[0, 1.0, 0, 0, 0, 0, 0, 0],
                                             [1 / 86, 0, 85 / 86, 0, 0, 0, 0, 0],  # the last note is cut to 1 step
                                             [0, 0, 0, 1 / 43, 42 / 43, 0, 0, 0],  # ... to 4 steps
                                             [0, 0, 0, 0, 0, 0, 0, 1.0], [0.0] * 8]))


def test_length_mix_of_real_chorales_is_mgevals_note_length_histogram(data):
    from apollo.mgeval import note_length_histogram

    dataset = RollDataset(data, "train")
    planes = dataset.planes(range(8))
    mix = train_module.length_mix(torch.from_numpy(planes).float(), steps_per_beat=dataset.config.grid.steps_per_beat)
    for piece, cells in zip(mix, planes):
        histogram = note_length_histogram(PianoRoll.decode(cells, "onset", dataset.config.grid))
        expected = np.append(histogram[:7], histogram[7:].sum())  # a bar or longer: one class
        assert np.allclose(piece.numpy(), expected, atol=1e-6)


def test_length_mix_gap_is_zero_for_the_real_mix_and_counts_the_mean_and_the_spread():
    real = torch.stack([_one_voice(2), _one_voice(4)])  # half the pieces in eighths, half in quarters
    assert train_module.length_mix_gap(real.flip(0), real, steps_per_beat=4).item() == pytest.approx(0.0)
    # Every piece half eighths, half quarters: the mean is met, the spread of both classes is not.
    mixed = _one_voice(2, sounding_steps=128) + _one_voice(4).roll(20, dims=1)
    spread = torch.tensor([1.0, 0.0]).std().item()  # of each class's share over the real pieces
    assert train_module.length_mix_gap(torch.stack([mixed] * 2), real, steps_per_beat=4).item() == \
        pytest.approx(2 * spread, rel=1e-5)
    # Every piece in quarters: half the notes in the wrong class, on both sides, and no spread.
    quarters = torch.stack([_one_voice(4)] * 2)
    assert train_module.length_mix_gap(quarters, real, steps_per_beat=4).item() == pytest.approx(1.0 + 2 * spread, rel=1e-5)
    fake = torch.stack([mixed, _one_voice(4)]).mul(0.9).requires_grad_(True)
    train_module.length_mix_gap(fake, real, steps_per_beat=4).backward()
    assert fake.grad.abs().sum() > 0


def test_bar_fullness_reads_each_bar_and_silence_as_zero():
    ends_halfway = _chords(4, 4, sounding_steps=128)
    assert torch.allclose(train_module.bar_fullness(ends_halfway[None], steps_per_bar=16),
                          torch.tensor([[4 / 64] * 8 + [0.0] * 8]))


def test_ending_gap_is_zero_for_real_endings_and_grows_without_them():
    full, ends_halfway = _chords(4, 4), _chords(4, 4, sounding_steps=128)
    real = torch.stack([full, full, ends_halfway, ends_halfway])  # half the pieces fall silent after bar 8
    assert train_module.ending_gap(real.flip(0), real, steps_per_bar=16).item() == pytest.approx(0.0)
    # Every piece sounds to its end: the last 8 bars are twice as full as real ones on average and
    # do not spread at all, so 16 of the 32 numbers are off by 100 %.
    assert train_module.ending_gap(torch.stack([full] * 4), real, steps_per_bar=16).item() == pytest.approx(0.5)
    # Every piece thinned to two voices instead: the last bars' mean is met, their spread is not,
    # and the first bars are half as full.
    thin = torch.stack([_chords(2, 4)] * 4)
    assert train_module.ending_gap(thin, real, steps_per_bar=16).item() == pytest.approx((8 * 0.5 + 8 * 1.0) / 32)
    fake = thin.clone().requires_grad_(True)
    train_module.ending_gap(fake, real, steps_per_bar=16).backward()
    assert fake.grad.abs().sum() > 0


def test_bar_silence_is_one_for_a_silent_bar_and_counts_a_lingering_note_as_barely_silent():
    ends_halfway = _chords(4, 4, sounding_steps=128)
    lingering = ends_halfway.clone()
    lingering[0, 10, 128:144] = 1  # one note held through bar 9
    lingering[1, 10, 128] = 1
    silence = train_module.bar_silence(torch.stack([ends_halfway, lingering]), steps_per_bar=16)
    assert torch.allclose(silence[0], torch.tensor([float(np.exp(-64 / 8))] * 8 + [1.0] * 8))
    assert silence[1, 8].item() == pytest.approx(np.exp(-16 / 8)) and torch.equal(silence[1, 9:], silence[0, 9:])


def test_silence_gap_is_zero_for_real_endings_and_makes_lingering_notes_pay():
    full, ends_halfway = _chords(4, 4), _chords(4, 4, sounding_steps=128)
    real = torch.stack([full, full, ends_halfway, ends_halfway])
    assert train_module.silence_gap(real.flip(0), real, steps_per_bar=16).item() == pytest.approx(0.0, abs=1e-6)
    # No piece ends: all of the real silence is missing.
    assert train_module.silence_gap(torch.stack([full] * 4), real, steps_per_bar=16).item() == pytest.approx(1.0, abs=2e-3)
    # Endings that fade: one note lingers in every bar after the chord stops.
    fading = ends_halfway.clone()
    fading[0, 10, 128:] = 1
    fading[1, 10, 128::16] = 1
    fake = torch.stack([full, full, fading, fading]).requires_grad_(True)
    gap = train_module.silence_gap(fake, real, steps_per_bar=16)
    assert gap.item() == pytest.approx(1 - np.exp(-2), abs=1e-3)
    gap.backward()
    assert (fake.grad[2, 0, 10, 128:] > 0).all()  # each lingering cell pays: lowering it lowers the gap


def test_uncertainty_is_zero_for_sure_cells_and_one_at_a_coin_flip():
    assert train_module.uncertainty(torch.tensor([0.0, 1.0, 1.0, 0.0])).item() == 0.0
    assert train_module.uncertainty(torch.full((4,), 0.5)).item() == 1.0
    assert train_module.uncertainty(torch.tensor([0.25, 0.9])).item() == pytest.approx((0.5 + 0.2) / 2)


def test_confidence_term_rhythm_path_refine_layer_style_and_pitch_bias_train_and_are_kept(data, tmp_path):
    run = train(TrainConfig(steps=2, confidence=1.0, rhythm=True, refine=True, style=3, pitch_bias=True, closeness=1.0, character=1.0,
                            texture=1.0, ending=1.0, lengths=1.0, length_mix=1.0, silence=1.0, **TINY), data=data,
                run=tmp_path / "run", progress=False)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["model_config"]["rhythm"] and state["model_config"]["refine"] and state["train_config"]["confidence"] == 1.0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= next(row["character_gap"] for row in logged if "character_gap" in row) <= 1
    assert next(row["texture_gap"] for row in logged if "texture_gap" in row) >= 0
    assert next(row["ending_gap"] for row in logged if "ending_gap" in row) >= 0
    assert next(row["length_gap"] for row in logged if "length_gap" in row) >= 0
    assert next(row["length_mix_gap"] for row in logged if "length_mix_gap" in row) >= 0
    assert next(row["silence_gap"] for row in logged if "silence_gap" in row) >= 0
    assert state["model_config"]["style"] == 3 and state["model_config"]["pitch_bias"]
    generator, _ = load_generator(run / "checkpoints" / "last.pt")
    assert isinstance(generator.net[-1], torch.nn.Conv2d) and generator.style.out_features == 3
    discriminator = Discriminator(ModelConfig(**state["model_config"]))
    discriminator.load_state_dict(state["discriminator"])
    assert discriminator.rhythm is not None


def test_chroma_paths_and_the_diversity_term_train_on_a_key_normalized_dataset(chorale_dir, tmp_path, monkeypatch):
    from apollo.key import MOVES

    data = tmp_path / "in-c"
    preprocess(chorale_dir, data, DatasetConfig(normalize_key=True), workers=1)
    run = train(TrainConfig(steps=4, **TINY), data=data, run=tmp_path / "run", progress=False)  # both on by default
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["model_config"]["chroma"] and state["model_config"]["rhythm"] and state["train_config"]["diversity"] == 1.0
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "d_loss" in x]
    assert logged and all(0 <= x["diversity_shortfall"] <= 1 for x in logged)
    assert len(state["key_moves"]) == len(MOVES) and sum(state["key_moves"]) == len(RollDataset(data))
    generator, meta = load_generator(run / "checkpoints" / "last.pt")
    assert generator.key is not None and meta["key_moves"] == state["key_moves"]
