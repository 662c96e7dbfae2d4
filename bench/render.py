"""Benchmark: `apollo render` against the fluidsynth command line on the same long file and SoundFont.

    python bench/render.py [--minutes 3] [--soundfont FILE.sf2] [--midi FILE.mid] [--repeats 3]

Without ``--midi`` it writes a Bach chorale (music21's corpus, BWV 66.6) looped to ``--minutes``.
Both programs run as fresh processes, so each time includes its start-up (Python and imports for
Apollo; loading the SoundFont for both), and their runs alternate so that both see the same load.
The best of ``--repeats`` runs is reported, as wall time (and multiples of real time) and CPU time.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def looped_chorale(path: Path, minutes: float) -> float:
    """Write a chorale repeated to at least ``minutes``; returns its length in seconds."""
    import mido
    from music21 import corpus

    source = path.with_name("chorale.mid")
    corpus.parse("bach/bwv66.6").write("midi", fp=str(source))
    midi = mido.MidiFile(source)
    merged = mido.merge_tracks(midi.tracks)  # one track, ending in a single end_of_track
    body, gap = list(merged[:-1]), merged[-1].time
    repeats = max(1, round(minutes * 60 / midi.length))
    track = mido.MidiTrack()
    for i in range(repeats):
        # The first message of each pass waits out the silence the previous pass ended with.
        track.append(body[0].copy(time=body[0].time + (gap if i else 0)))
        track.extend(body[1:])
    track.append(mido.MetaMessage("end_of_track", time=0))
    mido.MidiFile(type=0, ticks_per_beat=midi.ticks_per_beat, tracks=[track]).save(path)
    return mido.MidiFile(path).length


def run_once(command: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one run of a command (which must succeed).

    CPU time is reported too because it barely moves when other processes share the machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def best_times(commands: dict[str, list[str]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best wall and best CPU time of each command; the runs alternate, so both see the same load."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            runs[name].append(run_once(command))
    return {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--soundfont", type=Path, help="default: the system FluidR3_GM.sf2, else Apollo's choice")
    parser.add_argument("--midi", type=Path, help="render this file instead of a looped chorale")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample-rate", type=int, default=44100)
    args = parser.parse_args()

    from apollo.render import CPU_CORES, SYSTEM_SOUNDFONTS, find_soundfont

    soundfont = args.soundfont or next((p for p in SYSTEM_SOUNDFONTS if p.is_file()), None)
    soundfont = soundfont or find_soundfont().path
    cli = shutil.which("fluidsynth")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.midi:
            import mido

            midi, seconds = args.midi, mido.MidiFile(args.midi).length
        else:
            midi = tmp / "long.mid"
            seconds = looped_chorale(midi, args.minutes)
        print(f"MIDI: {midi.name if not args.midi else midi}, {seconds:.1f} s; SoundFont: {soundfont.name}; "
              f"{args.sample_rate} Hz; best of {args.repeats}")
        apollo = [sys.executable, "-m", "apollo", "render", "--soundfont", str(soundfont),
                  "--sample-rate", str(args.sample_rate), str(midi), str(tmp / "apollo.wav")]
        commands = {"apollo render": apollo}
        if cli:
            fluid = [cli, "-ni", "-q", "-r", str(args.sample_rate), "-F", str(tmp / "cli.wav"), str(soundfont), str(midi)]
            commands["fluidsynth CLI"] = fluid
            # For reference: the CLI given the cores Apollo uses (its default is one).
            commands[f"CLI, {CPU_CORES} cores"] = [*fluid[:2], "-o", f"synth.cpu-cores={CPU_CORES}", *fluid[2:]]
        else:
            print("fluidsynth command line not found: apt-get install fluidsynth")
        results = best_times(commands, args.repeats)
        for name, (wall, cpu) in results.items():
            print(f"{name:15s} wall {wall:6.2f} s ({seconds / wall:5.1f}x real time)   CPU {cpu:6.2f} s")
        if cli:
            (apollo_wall, apollo_cpu), (cli_wall, cli_cpu) = results["apollo render"], results["fluidsynth CLI"]
            print(f"apollo render / fluidsynth CLI: wall {apollo_wall / cli_wall:.2f}, CPU {apollo_cpu / cli_cpu:.2f}")


if __name__ == "__main__":
    main()
