"""Training throughput: ``apollo train`` beside a bare training step of the same model.

    python bench/train.py                          # small preset on this machine's default device
    python bench/train.py --preset apollo --steps 6
    python bench/train.py --variants               # the bare step in fp32 / bf16 x NCHW / NHWC
    python bench/train.py --device cuda --preset apollo --batch-size 256
    python bench/train.py --plot runs/NAME docs/img/losses.png   # a run's curves, for the docs

The bare step is the trainer's update with nothing around it: random binary rolls already on the
device, one discriminator update on real + fake, one generator update, in the precision and memory
layout the trainer uses, with the same algorithm (decoded fakes, time shifts, the lazy R1 penalty
the moving average of the generator and the diversity term, as the config asks). The trainer is
:func:`apollo.train.train` on a real dataset, timed from its own metrics lines (so start-up is left
out, but batch gathering and unpacking, logging and the progress bar are in). Sample sets, evaluations and checkpoints happen every few hundred steps; each
is timed once and its cost spread over its default interval. The bare step and the trainer take
turns, ``--repeats`` times, so that both see the same load on a shared machine; the table shows
medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from apollo.checkpoint import load_checkpoint, load_generator, save_checkpoint
from apollo.dataset import RollDataset, find_latest_dataset
from apollo.train import (R1_EVERY, TrainConfig, as_judged, discriminator_loss, diversity_shortfall, evaluate,
                          generate_rolls, generator_loss, model_config_for, r1_penalty, resolve_device, settle,
                          shift_randomly, train, update_ema, write_samples)
from apollo.model import Discriminator, Generator, ModelConfig
from apollo.roll import Grid


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_rate(config: TrainConfig, model_config: ModelConfig, encoding: str, device: torch.device, steps: int,
              warmup: int) -> float:
    """Samples per second of the bare update on random rolls (about 4 % of cells set, like music)."""
    torch.manual_seed(0)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    G = Generator(model_config).to(device).to(memory_format=layout)
    D = Discriminator(model_config).to(device).to(memory_format=layout)
    g_opt = torch.optim.Adam(G.parameters(), lr=config.lr, betas=config.betas)
    d_opt = torch.optim.Adam(D.parameters(), lr=config.d_lr, betas=config.betas)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(config.bf16))
    b = config.batch_size
    real = (torch.rand(b, model_config.roll_channels, model_config.n_pitches, model_config.n_steps,
                       device=device) < 0.04).float().contiguous(memory_format=layout)
    G_ema = Generator(model_config).to(device) if config.ema else None
    rng = torch.Generator(device)

    def seen(rolls: torch.Tensor) -> torch.Tensor:
        unit = Grid().steps_per_beat if config.shift_in_beats else 1  # speed does not depend on it
        return shift_randomly(rolls, config.augment_shift, 3, rng, unit) if config.augment_shift else rolls

    def step(i: int) -> None:
        noise = torch.randn(b, *model_config.noise_shape, device=device).contiguous(memory_format=layout)
        with autocast:
            fake = as_judged(G(noise), config.binarize, encoding)
            penalize = config.r1 and i % R1_EVERY == 0
            seen_real = seen(real).requires_grad_(bool(penalize))
            scores = D(torch.cat([seen_real, seen(fake.detach())]).contiguous(memory_format=layout)).float()
            d_loss = discriminator_loss(config.loss, scores[:b], scores[b:], config.label_smoothing)
            if penalize:
                d_loss = d_loss + config.r1 / 2 * R1_EVERY * r1_penalty(scores[:b], seen_real)
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        D.requires_grad_(False)
        with autocast:
            g_loss = generator_loss(config.loss, D(seen(fake).contiguous(memory_format=layout)).float())
            if config.diversity:
                g_loss = g_loss + config.diversity * diversity_shortfall(fake.float(), real)
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        D.requires_grad_(True)
        if G_ema is not None:
            update_ema(G_ema, G, config.ema)

    for i in range(warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    return steps * b / (time.perf_counter() - start)


def trainer_rate(config: TrainConfig, data: Path, steps: int, warmup: int, out: Path) -> tuple[float, Path]:
    """Samples per second of apollo.train.train between its metrics lines after ``warmup`` steps."""
    config = dataclasses.replace(config, steps=warmup + steps, log_every=1, sample_every=0, eval_every=0)
    run = train(config, data=data, run=out, progress=True)
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
    parser.add_argument("--variants", action="store_true", help="time the bare step in fp32/bf16 x NCHW/NHWC")
    parser.add_argument("--plot", nargs=2, type=Path, metavar=("RUN", "PNG"), help="plot a run's curves instead")
    args = parser.parse_args()
    if args.plot:
        plot(*args.plot)
        return

    device = resolve_device(args.device)
    data = args.data or find_latest_dataset()
    config = settle(TrainConfig(preset=args.preset, device=args.device, batch_size=args.batch_size), device)
    dataset = RollDataset(data)
    model_config, encoding = model_config_for(config, dataset), dataset.config.encoding
    cpu = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"{config.preset} preset, batch {config.batch_size}, {device.type} ({cpu}), torch {torch.__version__}")

    if args.variants:
        variants = {f"{'bf16' if bf16 else 'fp32'} {'NHWC' if nhwc else 'NCHW'}":
                    dataclasses.replace(config, bf16=bf16, channels_last=nhwc)
                    for bf16 in (False, True) for nhwc in (False, True)}
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):  # round robin, so that every variant sees the same load
            for name, variant in variants.items():
                rates[name].append(bare_rate(variant, model_config, encoding, device, args.steps, args.warmup))
        base = statistics.median(rates["fp32 NCHW"])
        for name, values in rates.items():
            median = statistics.median(values)
            print(f"  bare step {name}: {median:8.1f} samples/s  ({median / base:.2f}x)  runs: "
                  + " ".join(f"{v:.1f}" for v in values))
        return

    bare, trainer = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            bare.append(bare_rate(config, model_config, encoding, device, args.steps, args.warmup))
            rate, run = trainer_rate(config, data, args.steps, args.warmup, Path(tmp) / f"run{i}")
            trainer.append(rate)
        costs = event_costs(config, run, data)
    bare_median, trainer_median = statistics.median(bare), statistics.median(trainer)
    print(f"  bare step: {bare_median:8.1f} samples/s   runs: " + " ".join(f"{v:.1f}" for v in bare))
    print(f"  trainer:   {trainer_median:8.1f} samples/s   runs: " + " ".join(f"{v:.1f}" for v in trainer))
    # Periodic work, spread over its default interval at the trainer's pace.
    step_seconds = config.batch_size / trainer_median
    spread = {
        "sample set": costs["sample set"] / (config.sample_every * step_seconds),
        "evaluation": costs["evaluation"] / (config.eval_every * step_seconds),
        "checkpoint": costs["checkpoint"] / (60 * config.checkpoint_minutes),
    }
    for name, share in spread.items():
        print(f"  {name}: {costs[name]:.2f} s each, {100 * share:.2f} % of the time at the default interval")
    overall = trainer_median / (1 + sum(spread.values()))
    # Each repeat's pair ran back to back under the same load: the median of their ratios is the
    # steadiest figure on a shared machine.
    ratio = statistics.median(t / b for t, b in zip(trainer, bare)) / (1 + sum(spread.values()))
    print(f"  trainer with periodic work: {overall:.1f} samples/s; per-repeat ratio to the bare step "
          f"(median): {100 * ratio:.0f} %")


if __name__ == "__main__":
    main()
