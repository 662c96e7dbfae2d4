"""``apollo train`` and ``apollo recipes``: train a model (see apollo.train and apollo.recipes)."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from apollo.checkpoint import run_checkpoint
from apollo.device import DEVICES, PRECISIONS
from apollo.losses import LOSSES
from apollo.model import PRESETS
from apollo.recipes import (configure, find_recipe_run, load_recipe, parse_settings, parse_terms, resume_recipe,
                            run_recipe, shipped_recipes)
from apollo.sequence import FAMILIES
from apollo.terms import TERMS
from apollo.train import TrainConfig, saved_train_config, train as run_training

# What a resumed run may change: how long it goes on, where and in what arithmetic. Everything
# else would make the continuation a different run.
RESUMABLE = ("steps", "minutes", "device", "precision", "resume", "progress")
# What a recipe leaves to the command line: where its data and run are, and where it runs.
WITH_RECIPE = ("recipe", "data", "run", "device", "precision", "minutes", "settings", "progress")


@click.command("train")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Dataset folder (default: the newest under datasets/).")
@click.option("--run", "--run-dir", "run", type=click.Path(path_type=Path), help="New run folder (default: runs/<date-time>); must not exist. Under torchrun spell it --run-dir.")
@click.option("--resume", type=click.Path(path_type=Path), metavar="RUN", help="Continue the run (or recipe run) in this folder, or runs/RUN, where it stopped.")
@click.option("--from", "start_from", type=click.Path(dir_okay=False, path_type=Path), metavar="CHECKPOINT", help="Fine-tune: a new run that goes on from this training checkpoint with its settings, changed by the options given here.")
@click.option("--recipe", metavar="NAME", help="Train as a recipe says: a shipped one (`apollo recipes` lists them) or a .toml file.")
@click.option("--model", default=TrainConfig.model, show_default=True, type=click.Choice(FAMILIES), metavar="FAMILY",
              help=f"Model family: {', '.join(FAMILIES)}. The DCGAN, or a sequence model that writes one time step after another.")
@click.option("--preset", default="auto", show_default=True, type=click.Choice([*PRESETS, "auto"]), help="Model size; auto: small on CPU, apollo on a GPU.")
@click.option("--loss", default=TrainConfig.loss, show_default=True, type=click.Choice(LOSSES), help="GAN loss.")
@click.option("--steps", type=click.IntRange(min=0), help="Train until this many generator updates in all.")
@click.option("--minutes", type=click.FloatRange(min=0), help="Train for this long (default: 20 unless --steps is given).")
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, type=click.IntRange(min=1), help="Real rolls per update (per GPU with torchrun).")
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Generator's learning rate; the discriminator's keeps its ratio to it (--set d_lr=X to choose it).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES), help="Where to train.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(PRECISIONS), help="Arithmetic; auto: bf16 where the GPU or CPU computes in it natively, else fp32.")
@click.option("--seed", default=TrainConfig.seed, show_default=True, type=int, help="Seed for weights, noise and batch order.")
@click.option("--term", "terms", multiple=True, metavar="NAME=WEIGHT", help=f"Weight of a generator term (0: off); repeatable. Terms: {', '.join(TERMS)} (`apollo recipes --terms` says what each does).")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Any other training setting (a TrainConfig field, e.g. eval_every=100, r1=5, channels_last=false); repeatable.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.pass_context
def train(ctx: click.Context, data: Path | None, run: Path | None, resume: Path | None, start_from: Path | None,
          recipe: str | None, model: str, preset: str, loss: str, steps: int | None, minutes: float | None, batch_size: int,
          lr: float, device: str, precision: str, seed: int, terms: tuple[str, ...], settings: tuple[str, ...],
          progress: bool) -> None:
    """Train the DCGAN (or, with --model, an LSTM, GRU or Transformer) on a preprocessed dataset.

    A run folder gets the config, metrics (metrics.jsonl and TensorBoard), checkpoints (last.pt,
    best.pt) and sample MIDI files with piano-roll PNGs. Ctrl-C stops after the current step and
    saves; --resume continues exactly where the run stopped. For several GPUs:
    torchrun --nproc_per_node N -m apollo train ...

    \b
    Example:
      apollo train --minutes 20
      apollo train --model transformer --minutes 20
      apollo train --recipe bundled
      apollo train --resume runs/20260101-120000 --steps 20000
      apollo train --from runs/20260101-120000/checkpoints/best.pt --term texture=2 --minutes 30
    """
    given = [name for name in ctx.params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    if resume is not None:
        refuse(given, RESUMABLE, flags, "--resume continues a run with its own settings",
               "only --steps, --minutes, --device and --precision may change")
        recipe_run = find_recipe_run(resume)
        if recipe_run is not None:
            if steps is not None:
                last = run_checkpoint(recipe_run, "last")
                stage = last.parent.parent if last is not None else recipe_run / "STAGE"
                raise click.UsageError(f"--steps: a recipe's stages say how many steps they train; to train a "
                                       f"stage on, resume its own folder: apollo train --resume {stage} --steps {steps}")
            session = {"device": device, "precision": precision, **({"minutes": minutes} if minutes is not None else {})}
            resume_recipe(recipe_run, session, progress=progress)
        else:
            run_training(TrainConfig(steps=steps, minutes=minutes, device=device, precision=precision),
                         resume=resume, progress=progress)
        return
    if recipe is not None:
        refuse(given, WITH_RECIPE, flags, "--recipe says how to train", "give a changed recipe file instead")
        overrides = {**parse_settings(settings, TrainConfig()), "device": device, "precision": precision,
                     **({"minutes": minutes} if minutes is not None else {})}
        run_recipe(load_recipe(recipe), data=data, run=run, overrides=overrides, progress=progress)
        return
    # Fresh settings, or a checkpoint's; changed where the command line says.
    config = saved_train_config(start_from) if start_from is not None else TrainConfig()
    changes = {name: ctx.params[name] for name in given if hasattr(config, name) and name != "terms"}
    if "lr" in changes:
        changes["d_lr"] = changes["lr"] * TrainConfig.d_lr / TrainConfig.lr
    changes.update(parse_settings(settings, config))
    changes["terms"] = {**config.terms, **parse_terms(terms)}
    config = configure(config, {**changes, "steps": steps, "minutes": minutes}, where="apollo train")
    run_training(config, data=data, run=run, start_from=start_from, progress=progress)


def refuse(given: list[str], allowed: tuple[str, ...], flags: dict[str, str], what: str, instead: str) -> None:
    changed = [flags[name] for name in given if name not in allowed]
    if changed:
        raise click.UsageError(f"{what}; drop {', '.join(changed)} ({instead})")


@click.command("recipes")
@click.option("--terms", "show_terms", is_flag=True, help="List the generator terms instead.")
def recipes(show_terms: bool) -> None:
    """List the shipped training recipes (apollo train --recipe NAME).

    \b
    Example:
      apollo recipes
      apollo train --recipe quick
    """
    if show_terms:
        for term in TERMS.values():
            click.echo(f"{term.name:12} v{term.version}  pays when {term.meaning}")
        return
    for name, description in shipped_recipes().items():
        click.echo(f"{name:12} {description}")
