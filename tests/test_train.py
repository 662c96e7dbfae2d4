"""The trainer: real steps on a tiny chorale dataset, the run layout, exact resume, Ctrl-C, safe loading."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import apollo.dataset as dataset_module
from apollo.checkpoint import load_checkpoint, load_generator, save_checkpoint
from apollo.cli.main import cli
from apollo.dataset import DatasetConfig, RollDataset
from apollo.decoding import Decoding
from apollo.errors import ApolloError
from apollo.generate import ModelSpec, export_model
from apollo.model import PRESETS, Discriminator, ModelConfig
from apollo.preprocess import preprocess
from apollo.runs import generate_rolls
from apollo.step import lr_scale
from apollo.terms import TERMS
from apollo.train import TrainConfig, latest_checkpoint, saved_train_config, train

# Width 8 and batches of 4: every step takes milliseconds, and the loop still runs for real.
# best_max_silence off: a model of a few steps leaves bars empty, and most tests want a best.pt.
TINY = dict(preset="tiny", batch_size=4, log_every=2, sample_every=4, eval_every=4, n_samples=2, n_eval=8,
            n_reference=16, best_max_silence=1.0)


pytestmark = pytest.mark.usefixtures("tiny_preset")


@pytest.fixture
def data(chorale_dataset) -> Path:
    """A real dataset: two dozen chorales through `apollo preprocess`."""
    return chorale_dataset


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


@pytest.mark.parametrize("limit", [0.0, 1.0])
def test_best_never_falls_silent_more_often_than_real_music(data, tmp_path, limit):
    config = TrainConfig(steps=8, best_max_duplicates=1.0, **{**TINY, "eval_every": 2, "best_max_silence": limit})
    run = train(config, data=data, run=tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [line for line in lines if line.get("eval/mean_oa") is not None]
    extra = [(line["eval/empty_bar_rate"] or 0.0) - (line["eval/real/empty_bar_rate"] or 0.0) for line in evaluated]
    assert max(extra) > 0  # the rule has work to do: a model of 8 steps leaves bars empty
    allowed = [line for line, e in zip(evaluated, extra) if e <= limit]
    best = run / "checkpoints" / "best.pt"
    if not allowed:
        assert not best.exists()
    else:
        chosen = max(allowed, key=lambda line: line["eval/mean_oa"])
        assert load_checkpoint(best)["step"] == chosen["step"]


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


def test_a_run_judged_with_fill_is_evaluated_and_decoded_with_it(data, tmp_path):
    """The trainer's evaluations, the checkpoint and its export decode as the discriminator judged:
    with the run's ``binarize_fill``; a run without it keeps the plain default."""
    noise = torch.randn(4, 7, 2, 8, generator=torch.Generator().manual_seed(0))
    run = train(TrainConfig(steps=4, binarize_fill=0.2, **TINY), data=data, run=tmp_path / "run", progress=False)
    generator, meta = load_generator(run / "checkpoints" / "last.pt")
    assert ModelSpec.from_meta(meta).decoding == Decoding(fill=0.2)
    dataset_config = RollDataset(data, split="train").config
    filled = generate_rolls(generator, noise, dataset_config, decoding=Decoding(fill=0.01))  # 4 steps in, every cell is low
    plain = generate_rolls(generator, noise, dataset_config)
    assert sum(r.cells.any(axis=0).sum() for r in filled) > sum(r.cells.any(axis=0).sum() for r in plain)
    exported = export_model(run / "checkpoints" / "last.pt", tmp_path / "m.safetensors")
    assert ModelSpec.from_meta(load_generator(exported)[1]).decoding == Decoding(fill=0.2)
    plain_run = train(TrainConfig(steps=2, **TINY), data=data, run=tmp_path / "plain", progress=False)
    assert ModelSpec.from_meta(load_generator(plain_run / "checkpoints" / "last.pt")[1]).decoding == Decoding()


@pytest.mark.parametrize("binarize, negatives", [("threshold", 0.0), ("sample", 0.0), ("piece", 0.0), ("threshold", 0.5)])
def test_n_steps_resume_n_steps_equals_2n_steps_bit_for_bit(data, tmp_path, binarize, negatives):
    options = dict(binarize=binarize, negatives=negatives, **TINY)
    once = train(TrainConfig(steps=6, **options), data=data, run=tmp_path / "once", progress=False)
    half = train(TrainConfig(steps=3, **options), data=data, run=tmp_path / "half", progress=False)
    again = train(TrainConfig(steps=6), resume=half, progress=False)
    assert again == half
    assert_identical(weights(once / "checkpoints" / "last.pt"), weights(half / "checkpoints" / "last.pt"))
    events = [json.loads(line).get("event") for line in (half / "metrics.jsonl").read_text().splitlines()]
    assert [e for e in events if e] == ["start", "stop", "resume", "stop"]


def test_negatives_change_what_the_discriminator_learns(data, tmp_path):
    plain = weights(train(TrainConfig(steps=2, **TINY), data=data, run=tmp_path / "plain", progress=False)
                    / "checkpoints" / "last.pt")
    broken = weights(train(TrainConfig(steps=2, negatives=0.5, **TINY), data=data, run=tmp_path / "broken",
                           progress=False) / "checkpoints" / "last.pt")
    # Step 1's generator update follows step 1's discriminator update, so only D differs after one
    # step; after two, G has learned from a different D too.
    assert any(not torch.equal(a, b) for a, b in zip(plain["discriminator"].values(), broken["discriminator"].values()))
    with pytest.raises(ValueError, match="negatives must be in"):
        TrainConfig(negatives=1.0)
    with pytest.raises(ValueError, match="negative_breaks must name some of off_key_bars, half_speed"):
        TrainConfig(negatives=0.5, negative_breaks="off_key_bars,slow")


def test_a_discriminator_judging_with_a_shortest_sound_trains_differently(data, tmp_path):
    plain = weights(train(TrainConfig(steps=2, **TINY), data=data, run=tmp_path / "plain", progress=False)
                    / "checkpoints" / "last.pt")
    run = train(TrainConfig(steps=2, judged_min_length=3, **TINY), data=data, run=tmp_path / "cut", progress=False)
    cut = weights(run / "checkpoints" / "last.pt")
    assert any(not torch.equal(a, b) for a, b in zip(plain["discriminator"].values(), cut["discriminator"].values()))
    assert saved_train_config(run / "checkpoints" / "last.pt").judged_min_length == 3
    _, meta = load_generator(run / "checkpoints" / "last.pt")  # it decodes as its discriminator judged
    assert ModelSpec.from_meta(meta).decoding == Decoding(min_length=3)
    for bad in (dict(judged_min_length=0), dict(judged_min_length=2, binarize="none")):
        with pytest.raises(ValueError, match="judged_min_length must be at least 1 step"):
            TrainConfig(**bad)


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
    tuned = train(dataclasses.replace(saved, steps=5, terms={**saved.terms, "texture": 1.0}, lr=1e-4, d_lr=2e-5), start_from=checkpoint,
                  run=tmp_path / "tuned", progress=False)
    state = load_checkpoint(tuned / "checkpoints" / "last.pt")
    assert state["step"] == 5 and state["train_config"]["terms"]["texture"] == 1.0
    assert state["g_optimizer"]["param_groups"][0]["lr"] == 1e-4 and state["d_optimizer"]["param_groups"][0]["lr"] == 2e-5
    assert any("texture" in json.loads(line) for line in (tuned / "metrics.jsonl").read_text().splitlines())
    with pytest.raises(ApolloError, match="style cannot change"):
        train(dataclasses.replace(saved, style=3), start_from=checkpoint, run=tmp_path / "other", progress=False)
    assert not (tmp_path / "other").exists()


def test_ctrl_c_saves_and_resumes_exactly(data, tmp_path, monkeypatch, capsys):
    once = train(TrainConfig(steps=5, **TINY), data=data, run=tmp_path / "once", progress=False)

    real_batches = dataset_module.Batches.__call__
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background

    def interrupt_during_batch_2(self, b):
        if b == 2:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: the step in progress finishes
        return real_batches(self, b)

    with monkeypatch.context() as patch:
        patch.setattr(dataset_module.Batches, "__call__", interrupt_during_batch_2)
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
            "--set", "sample_every=2", "--set", "eval_every=0"]
    result = runner.invoke(cli, [*args, "--run", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "Trained 2 steps" in result.output and (tmp_path / "run" / "samples" / "step-000002" / "rolls.png").is_file()
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["train_config"]["preset"] == "small"

    result = runner.invoke(cli, ["train", "--resume", str(tmp_path / "run"), "--steps", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 3

    # Fine-tuning keeps the checkpoint's settings (batches of 4, not the default 64) but those given.
    checkpoint = str(tmp_path / "run" / "checkpoints" / "last.pt")
    result = runner.invoke(cli, ["train", "--from", checkpoint, "--term", "texture=1", "--steps", "4", "--no-progress",
                                 "--run", str(tmp_path / "tuned")])
    assert result.exit_code == 0, result.output
    tuned = load_checkpoint(tmp_path / "tuned" / "checkpoints" / "last.pt")
    assert tuned["step"] == 4 and tuned["train_config"]["terms"] == {"diversity": 1.0, "texture": 1.0} and tuned["train_config"]["batch_size"] == 4

    for bad, message in (
        (["train", "--from", checkpoint, "--set", "style=3", "--run", str(tmp_path / "styled")], "style cannot change"),
        (["train", "--from", str(tmp_path / "nope.pt")], "nope.pt"),
        ([*args, "--run-dir", str(tmp_path / "run")], "already exists"),  # --run's name under torchrun
        (["train", "--data", str(tmp_path / "nothing")], "not a finished dataset"),
        (["train", "--resume", str(tmp_path / "nope")], "no run to resume"),
        ([*args, "--set", "ema=1.5", "--run", str(tmp_path / "ema")], "ema must be in [0, 1)"),
        ([*args, "--set", "lr_floor=2", "--run", str(tmp_path / "floor")], "lr_floor in [0, 1]"),
        ([*args, "--set", "voices=-1", "--run", str(tmp_path / "voices")], "voices must be at least 0"),
        ([*args, "--set", "scaled_biases=true", "--run", str(tmp_path / "scaled")], "needs voices"),
        ([*args, "--set", "lr_decay_steps=4", "--set", "lr_decay_start=4", "--run", str(tmp_path / "start")],
         "lr_decay_start must be in [0, lr_decay_steps)"),
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


def test_falling_learning_rates_reach_their_floor_and_resume_exactly(data, tmp_path):
    assert [lr_scale(step, 4, 0.25) for step in (0, 2, 4, 9)] == pytest.approx([1.0, 0.625, 0.25, 0.25])
    assert lr_scale(7, 0, 0.25) == 1.0  # 0: constant rates
    assert [lr_scale(step, 6, 0.25, start=2) for step in (0, 2, 4, 6)] == pytest.approx([1.0, 1.0, 0.625, 0.25])
    settings = dict(lr_decay_steps=4, lr_floor=0.25, **TINY)
    once = train(TrainConfig(steps=6, **settings), data=data, run=tmp_path / "once", progress=False)
    half = train(TrainConfig(steps=3, **settings), data=data, run=tmp_path / "half", progress=False)
    train(TrainConfig(steps=6), resume=half, progress=False)
    assert_identical(weights(once / "checkpoints" / "last.pt"), weights(half / "checkpoints" / "last.pt"))
    state = load_checkpoint(once / "checkpoints" / "last.pt")
    defaults = TrainConfig()
    assert state["g_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.25 * defaults.lr)
    assert state["d_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.25 * defaults.d_lr)
    constant = train(TrainConfig(steps=6, **TINY), data=data, run=tmp_path / "constant", progress=False)
    trained = load_checkpoint(constant / "checkpoints" / "last.pt")["generator"]
    assert not all(torch.equal(trained[k], state["generator"][k]) for k in trained)


def test_a_run_saved_before_r1_ema_shift_and_the_term_registry_resumes_as_it_trained(data, tmp_path):
    run = train(TrainConfig(steps=2, r1=0.0, ema=0.0, augment_shift=0, terms={}, chroma=False, rhythm=False,
                            pitch_bias=False, precision="fp32", **TINY),
                data=data,
                run=tmp_path / "old",
                progress=False)
    path = run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    older = ("r1", "ema", "augment_shift", "shift_in_beats", "chroma", "rhythm", "refine", "style", "pitch_bias",
             "best_max_duplicates", "terms", "precision")
    for key in older:  # what an older Apollo wrote: no such settings, each term a field of its own, bf16
        del state["train_config"][key]
        state["model_config"].pop(key, None)
    state["train_config"].update(bf16=False, texture=0.0)
    del state["term_versions"]
    save_checkpoint(path, state)
    train(TrainConfig(steps=3), resume=run, progress=False)
    resumed = load_checkpoint(path)
    assert resumed["step"] == 3 and "generator_ema" not in resumed
    assert {key: resumed["train_config"][key] for key in ("r1", "ema", "augment_shift", "shift_in_beats", "terms")} == \
        {"r1": 0.0, "ema": 0.0, "augment_shift": 0, "shift_in_beats": False, "terms": {}}
    assert not resumed["model_config"]["chroma"] and not resumed["model_config"]["rhythm"]
    # Old term fields become the registry's terms, and bf16 its precision.
    state["train_config"].update(diversity=1.0, closeness=2.0, bf16=True)
    save_checkpoint(tmp_path / "older.pt", state)
    saved = saved_train_config(tmp_path / "older.pt")
    assert saved.terms == {"diversity": 1.0, "closeness": 2.0} and saved.precision == "bf16"


def test_every_term_rhythm_path_refine_layer_style_pitch_bias_nearest_and_voices_train_and_are_kept(data, tmp_path):
    every = {name: 1.0 for name in TERMS}
    run = train(TrainConfig(steps=2, rhythm=True, refine=True, refine_residual=True, style=3, pitch_bias=True, nearest=True, voices=4,
                            scaled_biases=True, rhythm_group=2, key_contrast=0.4, terms=every, **TINY), data=data,
                run=tmp_path / "run", progress=False)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["model_config"]["rhythm"] and state["model_config"]["refine"] and state["train_config"]["terms"] == every
    assert state["term_versions"] == {name: term.version for name, term in TERMS.items()}
    logged = next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "d_loss" in line)
    assert all(logged[name] >= 0 for name in TERMS) and logged["diversity"] <= 1 and logged["character"] <= 1
    assert state["model_config"]["style"] == 3 and state["model_config"]["pitch_bias"]
    generator, _ = load_generator(run / "checkpoints" / "last.pt")
    assert isinstance(generator.net[-1], torch.nn.Conv2d) and generator.style.out_features == 3
    assert generator.residual is not None and generator.residual[-1].weight.abs().sum() > 0  # trained, kept
    assert generator.config.voices == 4 and generator.net[-1].out_channels == 9 and generator.config.scaled_biases
    discriminator = Discriminator(ModelConfig(**state["model_config"]))
    discriminator.load_state_dict(state["discriminator"])
    assert discriminator.rhythm is not None and discriminator.nearest.group == TINY["batch_size"]
    assert discriminator.config.rhythm_group == 2 and generator.config.key_contrast == 0.4


def test_chroma_paths_and_the_diversity_term_train_on_a_key_normalized_dataset(chorale_dir, tmp_path, monkeypatch):
    from apollo.key import MOVES

    data = tmp_path / "in-c"
    preprocess(chorale_dir, data, DatasetConfig(normalize_key=True), workers=1)
    run = train(TrainConfig(steps=4, **TINY), data=data, run=tmp_path / "run", progress=False)  # both on by default
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["model_config"]["chroma"] and state["model_config"]["rhythm"] and state["train_config"]["terms"] == {"diversity": 1.0}
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "d_loss" in x]
    assert logged and all(0 <= x["diversity"] <= 1 for x in logged)
    assert len(state["key_moves"]) == len(MOVES) and sum(state["key_moves"]) == len(RollDataset(data))
    generator, meta = load_generator(run / "checkpoints" / "last.pt")
    assert generator.key is not None and meta["key_moves"] == state["key_moves"]


def test_a_run_saved_by_an_earlier_apollo_still_resumes_and_generates(chorale_dir, tmp_path):
    """tests/data/run-saved-2026-12-05: two steps of a width-8 model, saved by the code of that day."""
    saved = Path(__file__).parent / "data" / "run-saved-2026-12-05"
    data = tmp_path / "chorales"
    state = load_checkpoint(saved / "checkpoints" / "last.pt")
    preprocess(chorale_dir, data, DatasetConfig.from_dict(state["dataset_config"]), workers=1)  # as that day made it
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    save_checkpoint(run / "checkpoints" / "last.pt", {**state, "data": str(data)})  # the dataset lives elsewhere here
    assert saved_train_config(run / "checkpoints" / "last.pt").terms == {"diversity": 1.0, "texture": 2.0}
    assert saved_train_config(run / "checkpoints" / "last.pt").binarize == "threshold"  # saved as true
    train(TrainConfig(steps=3), resume=run, progress=False)
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 3
    result = CliRunner().invoke(cli, ["generate", "--checkpoint", str(run / "checkpoints" / "last.pt"), "--seed", "1",
                                      str(tmp_path / "out.mid")])
    assert result.exit_code == 0 and (tmp_path / "out.mid").is_file(), result.output
