"""``apollo train``: train the DCGAN on a preprocessed dataset (see apollo.train)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from click.core import ParameterSource

from apollo.model import PRESETS
from apollo.train import LOSSES, TrainConfig, saved_train_config, train as run_training

# What a resumed run may change: how long it goes on and where. Everything else would make the
# continuation a different run.
RESUMABLE = ("steps", "minutes", "device", "resume", "progress")


def default_d_lr(lr: float) -> float:
    """The discriminator's rate when only the generator's is given: the default ratio to it."""
    return lr * TrainConfig.d_lr / TrainConfig.lr


@click.command("train")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="Dataset folder (default: the newest under datasets/).")
@click.option("--run", "--run-dir", "run", type=click.Path(path_type=Path), help="New run folder (default: runs/<date-time>); must not exist. Under torchrun spell it --run-dir.")
@click.option("--resume", type=click.Path(path_type=Path), metavar="RUN", help="Continue the run in this folder (or runs/RUN) from its last checkpoint.")
@click.option("--from", "start_from", type=click.Path(dir_okay=False, path_type=Path), metavar="CHECKPOINT", help="Fine-tune: a new run that goes on from this training checkpoint with its settings, changed by the options given here.")
@click.option("--preset", default="auto", show_default=True, type=click.Choice([*PRESETS, "auto"]), help="Model size; auto: small on CPU, apollo on a GPU.")
@click.option("--loss", default="bce", show_default=True, type=click.Choice(LOSSES), help="GAN loss.")
@click.option("--steps", type=click.IntRange(min=0), help="Train until this many generator updates in all.")
@click.option("--minutes", type=click.FloatRange(min=0), help="Train for this long (default: 20 unless --steps is given).")
@click.option("--batch-size", default=TrainConfig.batch_size, show_default=True, type=click.IntRange(min=1), help="Real rolls per update (per GPU with torchrun).")
@click.option("--lr", default=TrainConfig.lr, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Learning rate of the generator (the discriminator's keeps its ratio to it).")
@click.option("--d-lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate of the discriminator (default: --lr times the default ratio).")
@click.option("--label-smoothing", default=TrainConfig.label_smoothing, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="bce: label real rolls 1 - this.")
@click.option("--instance-noise", default=TrainConfig.instance_noise, show_default=True, type=click.FloatRange(min=0), help="Std of Gaussian noise added to all the discriminator sees.")
@click.option("--augment-transpose", default=TrainConfig.augment_transpose, show_default=True, type=click.IntRange(min=0), help="Show the discriminator real and fake rolls moved by random -N..N semitones.")
@click.option("--augment-shift", default=TrainConfig.augment_shift, show_default=True, type=click.IntRange(min=0), help="Show the discriminator real and fake rolls moved by random -N..N steps in time.")
@click.option("--shift-in-beats/--shift-in-steps", default=TrainConfig.shift_in_beats, show_default=True, help="Move rolls in time by whole beats (keeps where the beats fall), or by any number of steps.")
@click.option("--r1", default=TrainConfig.r1, show_default=True, type=click.FloatRange(min=0), help="bce/hinge: weight of the R1 penalty on the discriminator's gradient at real rolls (0: off).")
@click.option("--ema", default=TrainConfig.ema, show_default=True, type=click.FloatRange(0, 1, max_open=True), help="Decay of the moving average of the generator's weights used for samples and checkpoints (0: off).")
@click.option("--diversity", default=TrainConfig.diversity, show_default=True, type=click.FloatRange(min=0), help="Weight of the generator's penalty for rolls that differ less than real ones do (0: off).")
@click.option("--chroma/--no-chroma", default=TrainConfig.chroma, show_default=True, help="Give the model its pitch-class paths: a key bias in the generator, a folded view in the discriminator.")
@click.option("--rhythm/--no-rhythm", default=TrainConfig.rhythm, show_default=True, help="Give the discriminator its rhythm path: how many pitches sound and start at each step.")
@click.option("--refine/--no-refine", default=TrainConfig.refine, show_default=True, help="End the generator in a stride-1 layer that sees neighbouring steps together.")
@click.option("--closeness", default=TrainConfig.closeness, show_default=True, type=click.FloatRange(min=0), help="Weight of the generator's penalty for pairs of pieces whose cells overlap by more than half (0: off).")
@click.option("--lengths", default=TrainConfig.lengths, show_default=True, type=click.FloatRange(min=0), help="Weight of the generator's penalty for a share of short notes (under 3 steps) other than real pieces' (0: off).")
@click.option("--length-mix", default=TrainConfig.length_mix, show_default=True, type=click.FloatRange(min=0), help="Weight of the generator's penalty for pieces whose mix of note lengths (MGEval's classes, sixteenth to whole) differs from real pieces', on average or in its spread from piece to piece (0: off).")
@click.option("--ending", default=TrainConfig.ending, show_default=True, type=click.FloatRange(min=0), help="Weight of the generator's penalty for pieces that fall silent bar by bar less or more often than real pieces (how full each bar is: mean and spread over the batch; 0: off).")
@click.option("--silence", default=TrainConfig.silence, show_default=True, type=click.FloatRange(min=0), help="Weight of the generator's penalty for bars silent less or more often than real pieces' bar by bar, where a bar holding a note or two counts as barely silent (0: off).")
@click.option("--texture", default=TrainConfig.texture, show_default=True, type=click.FloatRange(min=0), help="Weight of the generator's penalty for pieces whose texture (share of cells sounding, voices sounding together, notes starting together, notes per cell) differs on average from real pieces' (0: off).")
@click.option("--character", default=TrainConfig.character, show_default=True, type=click.FloatRange(min=0), help="Weight of the generator's penalty for pieces whose rhythm (note lengths, onsets between beats, fullness) varies from piece to piece less, or more, than real pieces' does (0: off).")
@click.option("--style", default=TrainConfig.style, show_default=True, type=click.IntRange(min=0), help="Numbers the generator reads from the whole noise and gives to every position, for what concerns the whole piece, such as where it ends (0: off).")
@click.option("--pitch-bias/--no-pitch-bias", default=TrainConfig.pitch_bias, show_default=True, help="Give the generator a learned bias per pitch row: which pitches sound at all.")
@click.option("--confidence", default=TrainConfig.confidence, show_default=True, type=click.FloatRange(min=0), help="Weight of the generator's penalty for probabilities near 0.5 (0: off).")
@click.option("--binarize/--soft", default=TrainConfig.binarize, show_default=True, help="Show the discriminator generated rolls thresholded at 0.5 (straight-through), or as probabilities.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="Where to train.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for weights, noise and batch order.")
@click.option("--sample-every", default=TrainConfig.sample_every, show_default=True, type=click.IntRange(min=0), help="Steps between sample MIDI files and PNGs (0: never).")
@click.option("--eval-every", default=TrainConfig.eval_every, show_default=True, type=click.IntRange(min=0), help="Steps between quality evaluations that pick best.pt (0: never).")
@click.option("--best-max-duplicates", default=TrainConfig.best_max_duplicates, show_default=True, type=click.FloatRange(0, 1), help="Never keep as best.pt an evaluation where more than this share of pieces has a near-duplicate.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.pass_context
def train(ctx: click.Context, data: Path | None, run: Path | None, resume: Path | None, start_from: Path | None, preset: str, loss: str,
          steps: int | None, minutes: float | None, batch_size: int, lr: float, d_lr: float | None,
          label_smoothing: float, instance_noise: float, augment_transpose: int,
          augment_shift: int, shift_in_beats: bool, r1: float, ema: float, diversity: float, closeness: float, character: float, texture: float, ending: float, lengths: float, length_mix: float, silence: float,
          chroma: bool,
          rhythm: bool, refine: bool, style: int, pitch_bias: bool, confidence: float, binarize: bool,
          device: str,
          seed: int, sample_every: int, eval_every: int, best_max_duplicates: float, progress: bool) -> None:
    """Train the DCGAN on a preprocessed dataset.

    A run folder gets the config, metrics (metrics.jsonl and TensorBoard), checkpoints (last.pt,
    best.pt) and sample MIDI files with piano-roll PNGs. Ctrl-C stops after the current step and
    saves; --resume continues exactly where the run stopped. For several GPUs:
    torchrun --nproc_per_node N -m apollo train ...

    \b
    Example:
      apollo train --minutes 20
      apollo train --resume runs/20260101-120000 --steps 20000
      apollo train --from runs/20260101-120000/checkpoints/best.pt --texture 2 --minutes 30
    """
    given = [name for name in ctx.params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if resume is not None:
        changed = [name for name in given if name not in RESUMABLE]
        if changed:
            flags = {param.name: param.opts[0] for param in ctx.command.params}
            options = ", ".join(flags[name] for name in changed)
            raise click.UsageError(f"--resume continues a run with its own settings; drop {options} "
                                   "(only --steps, --minutes and --device may change)")
        run_training(TrainConfig(steps=steps, minutes=minutes, device=device), resume=resume, progress=progress)
        return
    if start_from is not None:  # the checkpoint's settings, changed where the command line says
        config = saved_train_config(start_from)
        changes = {name: ctx.params[name] for name in given if hasattr(config, name) and name not in ("steps", "minutes")}
        if "lr" in changes and "d_lr" not in changes:
            changes["d_lr"] = default_d_lr(changes["lr"])
        config = dataclasses.replace(config, **changes, steps=steps, minutes=minutes)
        run_training(config, data=data, run=run, start_from=start_from, progress=progress)
        return
    config = TrainConfig(
        preset=preset, loss=loss, steps=steps, minutes=minutes, batch_size=batch_size, lr=lr,
        d_lr=d_lr if d_lr is not None else default_d_lr(lr),
        label_smoothing=label_smoothing, instance_noise=instance_noise, augment_transpose=augment_transpose,
        augment_shift=augment_shift, shift_in_beats=shift_in_beats, r1=r1, ema=ema, diversity=diversity, closeness=closeness, character=character, texture=texture, ending=ending, lengths=lengths, length_mix=length_mix, silence=silence,
        chroma=chroma,
        rhythm=rhythm, refine=refine, style=style, pitch_bias=pitch_bias, confidence=confidence, binarize=binarize, device=device, seed=seed,
        sample_every=sample_every, eval_every=eval_every, best_max_duplicates=best_max_duplicates,
    )
    run_training(config, data=data, run=run, progress=progress)
