"""Timing of `apollo play`: how late each message leaves, and how far ahead generation stays.

Plays ``--minutes`` of music in real time, exactly as ``apollo play`` does (the same
:class:`apollo.live.Player`, its background generation included), into a port of Apollo's own
that records when each message arrived, so no MIDI system is needed. Prints the lateness of the
messages against their schedule (median, p99, max, in ms), the least lead of generation over
playback (the time between a hop being ready and its first step sounding) and how many hops
came late. Usage::

    python bench/live.py --minutes 2
    python bench/live.py --minutes 2 --ensemble "string quartet" --tempo 160
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from apollo.generate import find_model, load_model
from apollo.live import Player, RecordingPort, Stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--checkpoint", default="bundled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tempo", type=float, help="beats per minute (default: the model's)")
    parser.add_argument("--instrument", help="default piano")
    parser.add_argument("--ensemble")
    args = parser.parse_args(argv)

    generator, spec = load_model(find_model(args.checkpoint))
    tempo = args.tempo or spec.tempo
    bars = max(1, round(args.minutes * tempo / 4))
    stream = Stream(generator, spec, seed=args.seed, tempo=tempo, bars=bars, instrument=args.instrument,
                    ensemble=args.ensemble)
    port = RecordingPort()
    cpu = time.process_time()
    result = Player(port, stream).play()
    cpu = time.process_time() - cpu
    late = np.array(result.lateness) * 1000
    print(f"{bars} bars at {tempo:g} BPM ({result.seconds / 60:.1f} min), {len(late)} messages, "
          f"{result.n_notes} notes, {os.cpu_count()} CPUs, CPU time {cpu:.1f} s")
    print(f"lateness ms: median {np.median(late):.3f}, p99 {np.percentile(late, 99):.3f}, max {late.max():.3f}")
    print(f"generation ahead of playback: at least {result.min_lead:.2f} s; hops late: {result.behind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
