"""Training throughput: each precision of the real training step, which one ``auto`` picks, and
``apollo train`` around it.

    python bench/train.py                          # small preset on this machine's default device
    python bench/train.py --preset apollo --steps 6
    python bench/train.py --variants               # also the NCHW memory layout
    python bench/train.py --motion --no-trainer    # the step with the discriminator's motion path
    python bench/train.py --device cuda --preset apollo --batch-size 256
    python bench/train.py --plot runs/NAME docs/img/losses.png   # a run's curves, for the docs

The step is :class:`apollo.step.TrainingStep`, the one ``apollo train`` runs, on random binary rolls
already on the device (about 4 % of cells set, like music), with the default config's terms. It is
timed in fp32 and bf16, and ``auto`` is what :func:`apollo.device.choose_precision` picks here: on a
CPU without native bfloat16 that must be fp32, and never slower than it. The trainer is
:func:`apollo.train.train` on a real dataset in ``auto``, timed from its own metrics lines (so
start-up is left out, but batch gathering and unpacking, logging and the progress bar are in).
Sample sets, evaluations and checkpoints happen every few hundred steps; each is timed once and its
cost spread over its default interval. Measurements take turns, ``--repeats`` times, so that all
see the same load on a shared machine; the table shows medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from apollo.checkpoint import load_checkpoint, load_generator, save_checkpoint
from apollo.dataset import RollDataset, find_latest_dataset
from apollo.distributed import World
from apollo.device import cpu_has_native_bf16, resolve_device
from apollo.errors import ApolloError
from apollo.model import ModelConfig
from apollo.runs import evaluate, generate_rolls, write_samples
from apollo.step import TrainingStep
from apollo.train import TrainConfig, build_networks, model_config_for, settle, train


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(config: TrainConfig, model_config: ModelConfig, encoding: str, steps_per_beat: int,
              device: torch.device, steps: int, warmup: int) -> float:
    """Samples per second of the training step on random rolls."""
    step = TrainingStep(config, build_networks(config, model_config, None, World(device=device)),
                        encoding=encoding, steps_per_beat=steps_per_beat, device=device)
    real = (torch.rand(config.batch_size, model_config.roll_channels, model_config.n_pitches, model_config.n_steps,
                       device=device, generator=torch.Generator(device).manual_seed(0)) < 0.04).float()
    for i in range(warmup):
        step(i, lambda b: real)
    sync(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i, lambda b: real)
    sync(device)
    return steps * config.batch_size * config.n_critic / (time.perf_counter() - start)


def trainer_rate(config: TrainConfig, data: Path, steps: int, warmup: int, out: Path) -> tuple[float, Path]:
    """Samples per second of apollo.train.train between its metrics lines after ``warmup`` steps."""
    config = dataclasses.replace(config, steps=warmup + steps, log_every=1, sample_every=0, eval_every=0)
    run = train(config, data=data, run=out, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    timed = {line["step"]: line["time"] for line in lines if "d_loss" in line}
    return steps * config.batch_size / (timed[warmup + steps] - timed[warmup]), run


def event_costs(config: TrainConfig, run: Path, data: Path) -> dict[str, float]:
    """Seconds for one sample set, one evaluation and one checkpoint save, with the trained model."""
    generator, _ = load_generator(run / "checkpoints" / "last.pt")
    dataset = RollDataset(data)
    val = RollDataset(data, "val")
    reference = (val if len(val) else dataset).rolls(range(min(config.n_reference, len(val) or len(dataset))))
    noise = generator.sample_noise(max(config.n_samples, config.n_eval), torch.Generator().manual_seed(0))
    costs = {}
    start = time.perf_counter()
    write_samples(generate_rolls(generator, noise[: config.n_samples], dataset.config), run / "bench-samples")
    costs["sample set"] = time.perf_counter() - start
    evaluate(generate_rolls(generator, noise[: config.n_eval], dataset.config), reference)  # fills the reference cache
    start = time.perf_counter()
    evaluate(generate_rolls(generator, noise[: config.n_eval], dataset.config), reference)
    costs["evaluation"] = time.perf_counter() - start
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    start = time.perf_counter()
    save_checkpoint(run / "bench.pt", state)
    costs["checkpoint"] = time.perf_counter() - start
    return costs


def plot(run: Path, out: Path) -> None:
    """Losses, D(real) and D(fake), and mean OA (if evaluated) of a run, against training minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [line for line in lines if "d_loss" in line]
    evaluated = [line for line in lines if line.get("eval/mean_oa") is not None]
    steps = [line["step"] for line in logged]
    panels = 3 if evaluated else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.6 * panels), sharex=True)
    axes[0].plot(steps, [x["d_loss"] for x in logged], label="D loss")
    axes[0].plot(steps, [x["g_loss"] for x in logged], label="G loss")
    axes[0].set_ylabel("loss")
    axes[1].plot(steps, [x["d_real"] for x in logged], label="D(real)")
    axes[1].plot(steps, [x["d_fake"] for x in logged], label="D(fake)")
    axes[1].set_ylabel("discriminator output")
    if evaluated:
        axes[2].plot([x["step"] for x in evaluated], [x["eval/mean_oa"] for x in evaluated], "o-", label="mean OA")
        axes[2].set_ylabel("vs validation")
    for ax in axes:
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    # Each session's clock starts at 0: add up the sessions that stopped, then the one still going.
    stopped = sum(line["time"] for line in lines if line.get("event") == "stop")
    going = logged[-1]["time"] if logged and lines[-1].get("event") != "stop" else 0.0
    axes[-1].set_xlabel(f"step ({(stopped + going) / 60:.0f} minutes in all)" if logged else "step")
    config = json.loads((run / "config.json").read_text())
    train_config = config["train_config"]
    fig.suptitle(f"{run.name}: {train_config['preset']} preset, {train_config['loss']} loss, "
                 f"batch {train_config['batch_size']}, {config['device']}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="dataset (default: the newest under datasets/)")
    parser.add_argument("--preset", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", action="store_true", help="also time the NCHW memory layout")
    parser.add_argument("--no-trainer", action="store_true", help="time the step only, not apollo train around it")
    parser.add_argument("--motion", action="store_true", help="with the discriminator's motion path (TrainConfig.motion)")
    parser.add_argument("--plot", nargs=2, type=Path, metavar=("RUN", "PNG"), help="plot a run's curves instead")
    args = parser.parse_args()
    if args.plot:
        plot(*args.plot)
        return

    device = resolve_device(args.device)
    data = args.data or find_latest_dataset()
    config, why = settle(TrainConfig(preset=args.preset, device=args.device, batch_size=args.batch_size,
                                        motion=args.motion), device)
    dataset = RollDataset(data)
    model_config, encoding = model_config_for(config, dataset), dataset.config.encoding
    beat = dataset.config.grid.steps_per_beat
    if device.type == "cpu":
        where = f"{torch.get_num_threads()} threads, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}"
    else:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"{config.preset} preset{', motion path' if config.motion else ''}, batch {config.batch_size}, {device.type} ({where}), torch {torch.__version__}")
    print(f"auto chooses {config.precision} ({why})")

    layouts = (True, False) if args.variants else (True,)
    variants = {f"{precision} {'NHWC' if nhwc else 'NCHW'}":
                dataclasses.replace(config, precision=precision, channels_last=nhwc)
                for nhwc in layouts for precision in ("fp32", "bf16")}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    trainer: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):  # round robin, so that everything sees the same load
            for name, variant in variants.items():
                rates[name].append(step_rate(variant, model_config, encoding, beat, device, args.steps, args.warmup))
            if not args.no_trainer:
                rate, run = trainer_rate(config, data, args.steps, args.warmup, Path(tmp) / f"run{i}")
                trainer.append(rate)
        costs = event_costs(config, run, data) if trainer else {}
    base = statistics.median(rates["fp32 NHWC"])
    chosen = f"{config.precision} {'NHWC' if config.channels_last else 'NCHW'}"
    for name, values in rates.items():
        median = statistics.median(values)
        mark = "   <- auto" if name == chosen else ""
        print(f"  step {name}: {median:8.1f} samples/s  ({median / base:.2f}x fp32)  runs: "
              + " ".join(f"{v:.1f}" for v in values) + mark)
    if not trainer:
        return
    trainer_median = statistics.median(trainer)
    print(f"  apollo train ({config.precision}): {trainer_median:8.1f} samples/s   runs: "
          + " ".join(f"{v:.1f}" for v in trainer))
    # Periodic work, spread over its default interval at the trainer's pace.
    step_seconds = config.batch_size / trainer_median
    spread = {
        "sample set": costs["sample set"] / (config.sample_every * step_seconds),
        "evaluation": costs["evaluation"] / (config.eval_every * step_seconds),
        "checkpoint": costs["checkpoint"] / (60 * config.checkpoint_minutes),
    }
    for name, share in spread.items():
        print(f"  {name}: {costs[name]:.2f} s each, {100 * share:.2f} % of the time at the default interval")
    print(f"  apollo train with periodic work: {trainer_median / (1 + sum(spread.values())):.1f} samples/s, "
          f"{step_seconds * (1 + sum(spread.values())):.2f} s per step")


if __name__ == "__main__":
    try:
        main()
    except ApolloError as error:  # a missing or unfinished dataset, say: one line, as apollo's own commands
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted")
