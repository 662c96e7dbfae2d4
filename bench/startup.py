"""Benchmark: start-up time of `apollo generate` (one piece, no WAV) against `python -c "import torch"`.

    python bench/startup.py [--repeats 5]

Every command runs as a fresh process and the best of ``--repeats`` wall times is kept (the
machine's other load only ever adds time). The generator is an untrained model of each preset,
scaled to write about as many notes as a trained one and exported as the bundled model is
(safetensors), plus the real default model (most recent run, else the bundled one) when there is one. The runs of all commands alternate, so that they see
the same load. The goal is ``apollo generate`` at most 2x ``import torch``. The commands that need no torch are timed too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def best_times(commands: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """Best wall time of each command (which must succeed); the runs alternate, so all see the same load."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def chorale_like(generator, density: float = 0.06):
    """Untrained weights that write about as many notes as a trained model (four voices of 64 pitches).

    A freshly initialized generator outputs ~0.5 everywhere, so its piece is either silent or
    thousands of notes; writing those notes would dominate the time and say nothing about a
    real model. Scaled weights plus a bias found by bisection give ``density`` of sounding cells.
    """
    import math

    import torch

    torch.manual_seed(0)
    noise = generator.sample_noise(1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, torch.nn.ConvTranspose2d):
                module.weight.normal_(0, 2 / math.sqrt(4 * module.in_channels))
        low, high = -50.0, 50.0
        for _ in range(20):
            generator.net[-1].bias.fill_((low + high) / 2)
            sounding = float((generator(noise)[0, 0] > 0.5).float().mean())
            low, high = ((low + high) / 2, high) if sounding < density else (low, (low + high) / 2)
    return generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from apollo.checkpoint import save_generator
    from apollo.errors import ApolloError
    from apollo.generate import find_model
    from apollo.model import PRESETS, Generator

    python, apollo = sys.executable, [sys.executable, "-m", "apollo"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        commands = {"python -c 'import torch'": [python, "-c", "import torch"]}
        models = {}  # name -> the options that select the model
        for preset in ("small", "apollo"):
            path = tmp / f"{preset}.safetensors"
            save_generator(path, chorale_like(Generator(PRESETS[preset]).eval()), {})
            models[f"{preset} preset, {path.stat().st_size / 1e6:.0f} MB"] = ["--checkpoint", str(path)]
        try:
            models[f"default: {find_model().source}"] = []  # exactly `apollo generate out.mid`
        except ApolloError as error:  # no run and no bundled model yet: say so and go on
            print(f"(no default model: {error})")
        for name, options in models.items():
            command = [*apollo, "generate", "--seed", "0", *options, str(tmp / "out.mid")]
            notes = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split(" notes,")[0]
            commands[f"apollo generate out.mid ({name}, {notes.rsplit(' ', 1)[-1]} notes)"] = command
        for command in (["--help"], ["instruments"], ["render", "--help"]):
            commands[f"apollo {' '.join(command)}"] = [*apollo, *command]
        results = best_times(commands, args.repeats)
        torch_time = results["python -c 'import torch'"]

    print(f"best of {args.repeats} runs, wall time")
    for name, seconds in results.items():
        print(f"{name:62s} {seconds:5.2f} s  {seconds / torch_time:4.2f}x import torch")


if __name__ == "__main__":
    main()
