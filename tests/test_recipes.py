"""Recipes: every shipped one runs (briefly, on tiny data), a recipe run resumes, bad recipes are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from apollo.checkpoint import latest_checkpoint, load_checkpoint, run_checkpoint
from apollo.cli.main import cli
from apollo.dataset import DatasetConfig
from apollo.errors import ApolloError
from apollo.generate import export_model
from apollo.preprocess import preprocess
from apollo.recipes import load_recipe, parse_settings, resume_recipe, run_recipe, shipped_recipes
from apollo.train import TrainConfig

# Every stage a few steps of a width-8 model on batches of 4: the whole recipe runs in seconds.
TINY = dict(preset="tiny", batch_size=4, log_every=2, eval_every=2, sample_every=0, n_eval=8, n_reference=16)

TWO_STAGES = """
description = "two stages"
[dataset]
path = "nowhere"
[train]
preset = "tiny"
[[stage]]
name = "first"
steps = 3
[[stage]]
name = "second"
start = "last"
steps = 2
terms = { diversity = 1, texture = 2 }
"""


pytestmark = pytest.mark.usefixtures("tiny_preset")


@pytest.fixture(scope="module")
def data(chorale_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "chorales-in-c"
    preprocess(chorale_dir, out, DatasetConfig(normalize_key=True), workers=1)
    return out


def stage_runs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir())


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_runs_each_stage_from_the_one_before(name, data, tmp_path):
    recipe = load_recipe(name)
    assert recipe.description and recipe.corpus
    last = run_recipe(recipe, data=data, run=tmp_path / "run", overrides=TINY, limit_steps=2, progress=False)
    stages = stage_runs(tmp_path / "run")
    assert [path.name for path in stages] == [f"{i}-{stage.name}" for i, stage in enumerate(recipe.stages, 1)]
    assert last == stages[-1]
    for stage, path in zip(recipe.stages, stages):
        state = load_checkpoint(path / "checkpoints" / "last.pt")
        config = recipe.config(stage)
        assert state["train_config"]["model"] == config.model
        assert state["train_config"]["terms"] == (config.terms if config.model == "dcgan" else {})
        assert state["provenance"]["recipe"] == name and state["provenance"]["stage"] == path.name
        assert state["train_config"]["style"] == recipe.train.get("style", 0)
        config = json.loads((path / "config.json").read_text())
        assert config.get("start_from", "").startswith(str(stages[0].parent)) or path == stages[0]
    # The exported model names the recipe, the stage and the commit of the code that trained it.
    exported = export_model(last / "checkpoints" / "last.pt", tmp_path / "model.safetensors")
    provenance = json.loads(exported.with_suffix(".json").read_text())["provenance"]
    assert provenance["recipe"] == name and provenance["stage"] == last.name and "commit" in provenance


def test_a_recipe_run_goes_on_where_it_stopped(data, tmp_path):
    recipe = load_recipe("two", text=TWO_STAGES)
    run_recipe(recipe, data=data, run=tmp_path / "run", overrides={k: v for k, v in TINY.items() if k != "preset"},
               progress=False)
    first, second = stage_runs(tmp_path / "run")
    assert load_checkpoint(second / "checkpoints" / "last.pt")["step"] == 5
    # apollo generate --run takes a recipe's run as its last stage, and so does "the newest run".
    assert run_checkpoint(tmp_path / "run", "last") == second / "checkpoints" / "last.pt"
    assert latest_checkpoint(tmp_path).parent.parent == second
    finished = load_checkpoint(second / "checkpoints" / "last.pt")["generator"]
    # Lose the second stage, as if the run had stopped after the first: --resume trains it again, the same.
    for path in sorted(second.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    second.rmdir()
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "run"), "--no-progress"])
    assert result.exit_code == 0, result.output
    again = load_checkpoint(second / "checkpoints" / "last.pt")
    assert again["step"] == 5 and all((again["generator"][k] == finished[k]).all() for k in finished)
    assert resume_recipe(tmp_path / "run", progress=False) == second  # nothing left to do
    # The stages say how long they train; a stage trains on when its own folder is resumed.
    refused = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "run"), "--steps", "7", "--no-progress"])
    assert refused.exit_code != 0 and f"apollo train --resume {second} --steps 7" in refused.output
    result = CliRunner().invoke(cli, ["train", "--resume", str(second), "--steps", "7", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(second / "checkpoints" / "last.pt")["step"] == 7


def test_a_recipe_out_of_time_stops_in_its_stage_and_goes_on_when_resumed(data, tmp_path, capsys):
    recipe = load_recipe("two", text=TWO_STAGES)
    settings = {k: v for k, v in TINY.items() if k != "preset"}
    stopped = run_recipe(recipe, data=data, run=tmp_path / "run", overrides={**settings, "minutes": 0}, progress=False)
    assert stopped.name == "1-first" and not (tmp_path / "run" / "2-second").exists()  # the next stage never starts
    assert f"go on with: apollo train --resume {tmp_path / 'run'}" in capsys.readouterr().err
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path / "run"), "--minutes", "5", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "run" / "2-second" / "checkpoints" / "last.pt")["step"] == 5


@pytest.mark.parametrize("text, message", [
    ("description = 1\n[[stage]]\nname = 'x'\n", "needs a whole number of steps"),
    ("[train]\nevel_every = 3\n[[stage]]\nsteps = 1\n", "did you mean eval_every"),
    ("[[stage]]\nsteps = 1\nterms = { textur = 1 }\n", "did you mean texture"),
    ("[dataset]\nencoding = 'nope'\n[[stage]]\nsteps = 1\n", "unknown encoding"),
    ("[trian]\n[[stage]]\nsteps = 1\n", "unknown part"),
    ("[[stage]]\nsteps = 1\nstart = 'first'\n", "start must be"),
    ("steps = [", "not valid TOML"),
    ("description = 'nothing to do'\n", "no [[stage]]"),
])
def test_a_bad_recipe_is_one_clear_error(text, message, tmp_path):
    with pytest.raises(ApolloError, match=message.replace("[", r"\[")):
        load_recipe("bad", text=text)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = CliRunner().invoke(cli, ["train", "--recipe", str(path)])
    assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1, result.output


def test_the_command_line_lists_recipes_and_keeps_a_recipe_whole(tmp_path):
    runner = CliRunner()
    listing = runner.invoke(cli, ["recipes"])
    assert listing.exit_code == 0 and all(name in listing.output for name in shipped_recipes())
    result = runner.invoke(cli, ["train", "--recipe", "bundle"])
    assert result.exit_code == 1 and "did you mean bundled" in result.output
    result = runner.invoke(cli, ["train", "--recipe", "bundled", "--term", "texture=1"])
    assert result.exit_code == 2 and "drop --term" in result.output


def test_settings_from_text_are_read_as_their_fields_types():
    settings = parse_settings(["eval_every=100", "channels-last=false", "n_critic=none", "betas=0.0,0.9",
                               "label_smoothing=0.1"], TrainConfig())
    assert settings == {"eval_every": 100, "channels_last": False, "n_critic": None, "betas": (0.0, 0.9),
                        "label_smoothing": 0.1}
    for bad, message in ((["eval_every=often"], "expected int"), (["r1"], "expected KEY=VALUE"), (["betas=0.5"], "two numbers"),
                         (["terms=x"], "--term"), (["shift_in_beat=1"], "did you mean shift_in_beats")):
        with pytest.raises(ApolloError, match=message):
            parse_settings(bad, TrainConfig())


def test_a_dataset_in_the_recipes_place_is_used_only_if_made_as_the_recipe_says(data, tmp_path):
    from apollo.recipes import prepare_data

    text = f"[dataset]\npath = '{data.as_posix()}'\nnormalize_key = true\n[[stage]]\nsteps = 1\n"
    assert prepare_data(load_recipe("same", text=text)) == data
    with pytest.raises(ApolloError, match="made with other settings"):
        prepare_data(load_recipe("other", text=text.replace("true", "false")))
