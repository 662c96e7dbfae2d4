"""What each model family costs: parameters, training time, and generation speed on this machine.

For each ``LABEL=CHECKPOINT`` (a training checkpoint inside its run folder, or an exported model
beside the run it came from, given with ``LABEL=CHECKPOINT@RUN``), prints a Markdown row with:

- the family and its parameters;
- the training the checkpoint had: its step, and the run's wall-clock time to that step (from the
  run's metrics.jsonl), with the precision it trained in;
- generation speed: 16-bar pieces per second through the path ``apollo generate`` takes
  (:func:`apollo.generate.sample_cells`: the DCGAN one chained piece at a time, a sequence model
  all pieces together), for ``-n`` pieces, after one warm-up piece, on the threads torch uses here
  (``--threads``).

The quality of the same models is measured by bench/baselines.py. Usage::

    python bench/families.py "lstm=runs/families/lstm-chorales/1-base/checkpoints/best.pt" -n 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from apollo.checkpoint import load_checkpoint
from apollo.generate import ModelChoice, family, load_model, sample_cells


def training_of(checkpoint: Path, run: Path | None) -> tuple[int | None, float | None, str]:
    """(step, seconds of training to that step, precision) of a checkpoint, from its run's metrics."""
    step, precision = None, "?"
    if checkpoint.suffix == ".pt":
        state = load_checkpoint(checkpoint)
        step, precision = state["step"], state["train_config"].get("precision", "?")
        run = run or checkpoint.parent.parent
    elif run is not None:
        meta = json.loads(checkpoint.with_suffix(".json").read_text())
        step = meta.get("provenance", {}).get("step")
        precision = json.loads((run / "config.json").read_text())["train_config"].get("precision", "?")
    if run is None or step is None or not (run / "metrics.jsonl").is_file():
        return step, None, precision
    # A resumed run's clock restarts: add up the sessions before the one that reached the step.
    total, session = 0.0, 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("event") == "stop":
            total, session = total + record["time"], 0.0
        elif "time" in record and record.get("step", 0) <= step:
            session = record["time"]
        if record.get("step") == step and "time" in record:
            return step, total + session, precision
    return step, total + session, precision


def speed(model, spec, n: int) -> float:
    """16-bar pieces per second through sample_cells."""
    list(sample_cells(model, spec.n_steps, [0], spec.temperature))  # warm-up
    start = time.perf_counter()
    list(sample_cells(model, spec.n_steps, list(range(1, n + 1)), spec.temperature))
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", metavar="LABEL=CHECKPOINT[@RUN]")
    parser.add_argument("-n", type=int, default=64, help="pieces generated for the speed")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"Generation on {args.threads} thread(s), {args.n} pieces of 16 bars each.\n")
    print("| row | family | parameters | checkpoint's step | training time to it | precision | pieces/s |")
    print("|---|---|---|---|---|---|---|")
    for item in args.models:
        label, _, where = item.partition("=")
        path, _, run = where.partition("@")
        model, spec = load_model(ModelChoice(Path(path), "bench"))
        step, seconds, precision = training_of(Path(path), Path(run) if run else None)
        parameters = sum(p.numel() for p in model.parameters())
        minutes = f"{seconds / 60:.1f} min" if seconds is not None else "?"
        print(f"| {label} | {family(model)} | {parameters / 1e6:.2f} M | {step} | {minutes} | {precision} "
              f"| {speed(model, spec, args.n):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
