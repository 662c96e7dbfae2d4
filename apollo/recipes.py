"""Recipes: how a model is made, as a small file anyone can run again.

A recipe is a TOML file (the shipped ones are in ``apollo/recipes/``; ``apollo recipes`` lists
them) with four parts::

    description = "one line"
    [dataset]             # the corpus, where its dataset lives, and any DatasetConfig field
    [train]               # TrainConfig fields every stage shares
    [[stage]]             # one or more: name, steps (how many this stage trains), terms,
                          # start ("best" or "last": which checkpoint of the stage before it
                          # goes on from), and any TrainConfig field that differs in this stage

``apollo train --recipe NAME`` makes the dataset if it is missing (exporting the corpus and
preprocessing it), then trains each stage in turn, every stage after the first fine-tuning the
one before. The recipe's run is a folder of stage runs (``runs/<name>-<date-time>/1-<stage>/``,
...) with a copy of the recipe; ``apollo train --resume`` on it goes on where it stopped.

This module also turns ``KEY=VALUE`` text (``--set``, ``--term``) into checked settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apollo.dataset import DatasetConfig
from apollo.errors import ApolloError
from apollo.io import write_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Recipe", "Stage", "RECIPES_DIR", "shipped_recipes", "load_recipe", "run_recipe", "find_recipe_run",
           "resume_recipe", "configure", "parse_settings", "parse_terms"]

RECIPES_DIR = Path(__file__).parent / "recipes"
RECIPE_FILE = "recipe.json"  # in a recipe's run folder: the recipe's text and how it was run


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int  # how many steps this stage trains
    start: str = "best"  # the previous stage's checkpoint this stage starts from: "best" or "last"
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # TrainConfig fields, terms included


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    corpus: str | None  # exported with `apollo corpus export` when the dataset is missing
    data: Path  # the dataset folder
    dataset: DatasetConfig
    train: dict[str, Any]
    stages: tuple[Stage, ...]
    text: str  # the file as written

    def config(self, stage: Stage, overrides: dict[str, Any] | None = None):
        """The TrainConfig of ``stage``: the shared settings, the stage's own, then ``overrides``."""
        from apollo.train import TrainConfig

        return configure(TrainConfig(), {**self.train, **stage.settings, **(overrides or {})},
                         where=f"recipe {self.name}, stage {stage.name}")


# -- reading recipes -------------------------------------------------------------------------


def shipped_recipes() -> dict[str, str]:
    """Name -> description of every recipe that ships with Apollo."""
    return {path.stem: load_recipe(path).description for path in sorted(RECIPES_DIR.glob("*.toml"))}


def load_recipe(name: str | Path, text: str | None = None) -> Recipe:
    """A shipped recipe by name, or a recipe file by path (or ``text`` under ``name``), checked."""
    path = Path(name)
    if text is None:
        if path.suffix != ".toml":
            path = RECIPES_DIR / f"{name}.toml"
            if not path.is_file():
                known = [p.stem for p in RECIPES_DIR.glob("*.toml")]
                near = difflib.get_close_matches(str(name), known, n=2, cutoff=0.5)
                hint = f"did you mean {' or '.join(near)}? " if near else ""
                raise ApolloError(f"no recipe named {name!r}; {hint}`apollo recipes` lists them "
                                  f"({', '.join(sorted(known))})")
        try:
            text = path.read_text()
        except OSError as error:
            raise ApolloError(f"{path}: cannot read the recipe ({error.strerror or error})") from None
    where = f"recipe {path.stem}"
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ApolloError(f"{where}: not valid TOML ({error})") from None
    unknown = set(table) - {"description", "dataset", "train", "stage"}
    if unknown:
        raise ApolloError(f"{where}: unknown part(s) {', '.join(sorted(unknown))} (description, dataset, train, stage)")
    dataset = dict(table.get("dataset", {}))
    corpus, data = dataset.pop("corpus", None), Path(dataset.pop("path", f"datasets/{path.stem}"))
    try:
        dataset_config = DatasetConfig(**dataset)
    except (TypeError, ValueError) as error:
        raise ApolloError(f"{where}, [dataset]: {error}") from None
    stages = []
    for i, entry in enumerate(table.get("stage", []), 1):
        entry = dict(entry)
        try:
            stage = Stage(name=str(entry.pop("name", f"stage{i}")), steps=int(entry.pop("steps")),
                          start=entry.pop("start", "best"), settings=entry)
        except (KeyError, TypeError, ValueError):
            raise ApolloError(f"{where}: stage {i} needs a whole number of steps") from None
        if stage.start not in ("best", "last"):
            raise ApolloError(f"{where}, stage {stage.name}: start must be 'best' or 'last', got {stage.start!r}")
        if stage.steps < 1:
            raise ApolloError(f"{where}, stage {stage.name}: steps must be at least 1, got {stage.steps}")
        stages.append(stage)
    if not stages:
        raise ApolloError(f"{where}: no [[stage]]")
    recipe = Recipe(path.stem, str(table.get("description", "")), corpus, data, dataset_config,
                    dict(table.get("train", {})), tuple(stages), text)
    for stage in stages:
        recipe.config(stage)  # every stage's settings are checked before anything runs
    return recipe


# -- settings from text ----------------------------------------------------------------------


def configure(config, changes: dict[str, Any], where: str = "--set"):
    """``config`` (a TrainConfig) with ``changes``, checked: unknown names get the nearest ones, and
    a bad value is one clear error."""
    fields = {f.name for f in dataclasses.fields(config)}
    for key in changes:
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise ApolloError(f"{where}: no setting named {key!r}{hint}")
    if "betas" in changes:
        changes = {**changes, "betas": tuple(changes["betas"])}
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as error:
        raise ApolloError(f"{where}: {error}") from None


def parse_settings(assignments: list[str] | tuple[str, ...], config) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> {key: value}, each value read as the type of ``config``'s field."""
    types = {f.name: str(f.type) for f in dataclasses.fields(config)}
    settings = {}
    for key, text in _pairs(assignments, "--set", "KEY=VALUE"):
        if key == "terms":
            raise ApolloError("--set terms: give generator terms with --term NAME=WEIGHT")
        if key not in types:
            configure(config, {key: None})  # the error names the nearest settings
        settings[key] = _read_value(key, text, types[key])
    configure(config, settings)  # values out of range are refused here, naming --set
    return settings


def parse_terms(assignments: list[str] | tuple[str, ...]) -> dict[str, float]:
    """``["NAME=WEIGHT", ...]`` -> {name: weight}; names are checked against :data:`apollo.terms.TERMS`."""
    from apollo.terms import check_terms

    weights = {}
    for name, text in _pairs(assignments, "--term", "NAME=WEIGHT"):
        try:
            weights[name] = float(text)
        except ValueError:
            raise ApolloError(f"--term {name}={text}: the weight must be a number") from None
    check_terms(weights)
    return weights


def _pairs(assignments, option: str, form: str) -> list[tuple[str, str]]:
    pairs = []
    for item in assignments:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ApolloError(f"{option} {item!r}: expected {form}")
        pairs.append((key.strip().replace("-", "_"), text.strip()))
    return pairs


def _read_value(key: str, text: str, kind: str) -> Any:
    """``text`` as a value of the annotated type ``kind`` (``"int | None"``, ``"bool"``, ...)."""
    if "None" in kind and text.lower() in ("none", "null"):
        return None
    try:
        if kind.startswith("bool"):
            words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
            return words[text.lower()]
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("tuple"):
            return tuple(float(part) for part in text.split(","))
    except (KeyError, ValueError):
        raise ApolloError(f"--set {key}={text}: expected {kind.replace(' | None', '')}"
                          f"{' (or none)' if 'None' in kind else ''}") from None
    return text


# -- running a recipe ------------------------------------------------------------------------


def prepare_data(recipe: Recipe, progress: bool = True) -> Path:
    """The recipe's dataset folder, made first if it is missing (corpus export, then preprocess).
    A dataset already there must have been made with the recipe's settings."""
    from apollo import corpus
    from apollo.dataset import load_config
    from apollo.preprocess import preprocess

    if (recipe.data / "manifest.json").is_file():
        if load_config(recipe.data) != recipe.dataset:
            raise ApolloError(f"{recipe.data} was made with other settings than recipe {recipe.name} asks for; "
                              "move it away, or give another dataset with --data")
        return recipe.data
    if recipe.corpus is None:
        raise ApolloError(f"recipe {recipe.name}: no dataset at {recipe.data} and no corpus to make it from")
    midi = Path("midi") / recipe.corpus
    if not midi.is_dir() or not any(midi.iterdir()):
        print(corpus.export(recipe.corpus, midi).line(), file=sys.stderr)
    # Never overwrite: a folder that is in the way is the user's to move (an interrupted run resumes).
    print(preprocess(midi, recipe.data, recipe.dataset, progress=progress).line(), file=sys.stderr)
    return recipe.data


def run_recipe(recipe: Recipe | str | Path, *, data: str | Path | None = None, run: str | Path | None = None,
               runs_root: str | Path = "runs", overrides: dict[str, Any] | None = None,
               limit_steps: int | None = None, progress: bool = True) -> Path:
    """Run every stage of ``recipe`` and return the last stage's run folder (or the stage where
    it stopped early: Ctrl-C, or out of ``minutes``; resuming goes on from there).

    ``data`` replaces the recipe's dataset; ``overrides`` (TrainConfig fields) apply to every
    stage; ``limit_steps`` trains each stage only that many steps (a quick check of the recipe).
    ``run`` may be an earlier run of a recipe: it goes on where it stopped, with the settings
    it was started with (:func:`resume_recipe`).
    """
    from apollo.runs import new_run_dir

    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if run is not None and find_recipe_run(run, runs_root) is not None:
        return resume_recipe(find_recipe_run(run, runs_root), progress=progress)
    data = Path(data) if data is not None else prepare_data(recipe, progress)
    folder = new_run_dir(run, runs_root, prefix=f"{recipe.name}-")
    write_json(folder / RECIPE_FILE, {"name": recipe.name, "text": recipe.text, "data": str(data),
                                      "overrides": overrides or {}, "limit_steps": limit_steps})
    return _run_stages(recipe, folder, data, overrides or {}, limit_steps, progress)


def find_recipe_run(run: str | Path, root: str | Path = "runs") -> Path | None:
    """The recipe run at ``run`` (a path, or a name under ``root``), or None if it is not one."""
    return next((path for path in (Path(run), Path(root) / run) if (path / RECIPE_FILE).is_file()), None)


def resume_recipe(folder: str | Path, overrides: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Go on with the recipe run in ``folder`` where it stopped. ``overrides`` may change only
    where, in what arithmetic and for how long this session runs (device, precision, minutes)."""

    folder = Path(folder)
    try:
        saved = json.loads((folder / RECIPE_FILE).read_text())
    except (OSError, ValueError) as error:
        raise ApolloError(f"{folder}: not a recipe run ({error})") from None
    recipe = load_recipe(saved["name"], text=saved["text"])
    return _run_stages(recipe, folder, Path(saved["data"]), {**saved["overrides"], **(overrides or {})},
                       saved["limit_steps"], progress)


def _run_stages(recipe: Recipe, folder: Path, data: Path, overrides: dict, limit_steps: int | None,
                progress: bool) -> Path:
    from apollo.runs import read_training_checkpoint
    from apollo.train import train

    previous: Path | None = None
    for i, stage in enumerate(recipe.stages, 1):
        stage_dir = folder / f"{i}-{stage.name}"
        start = None if previous is None else previous / "checkpoints" / f"{stage.start}.pt"
        if start is not None and not start.is_file():  # a stage too short to evaluate has no best.pt
            start = previous / "checkpoints" / "last.pt"
        start_step = 0 if start is None else read_training_checkpoint(start)["step"]
        target = start_step + (stage.steps if limit_steps is None else min(stage.steps, limit_steps))
        config = recipe.config(stage, {**overrides, "steps": target})
        last = stage_dir / "checkpoints" / "last.pt"
        step = read_training_checkpoint(last)["step"] if last.is_file() else None
        if step is None:
            if stage_dir.exists():  # a stage that stopped before its first checkpoint holds nothing to keep
                shutil.rmtree(stage_dir)
            train(config, data=data if start is None else None, run=stage_dir, start_from=start, progress=progress,
                  provenance={"recipe": recipe.name, "stage": stage_dir.name})
        elif step < target:
            train(config, resume=stage_dir, progress=progress)
        if read_training_checkpoint(last)["step"] < target:  # stopped early: Ctrl-C, or out of minutes
            print(f"The recipe stopped in stage {stage_dir.name}; go on with: apollo train --resume {folder}",
                  file=sys.stderr)
            return stage_dir
        previous = stage_dir
    return previous
