"""Speed and memory of ``apollo preprocess`` end to end, beside a plain pretty_midi loop on the same files.

    python bench/preprocess.py                  # bach-chorales + folk (about 3,400 files)
    python bench/preprocess.py midi/mine        # or any folder of MIDI files

Each run is a fresh process, timed from start to exit: ``python -m apollo preprocess`` on the
first N files for a few N (to show that memory does not grow with the corpus), and the reference
loop, which parses each file with pretty_midi, samples a piano roll on a sixteenth-note grid from
the file's beats and cuts it into [64, 256] chunks (hop 128, like preprocess). Peak memory is the
largest sum of resident memory over the process and all its children, sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MIDI_SUFFIXES = (".mid", ".midi")


# -- the reference loop (runs in its own process) --------------------------------------------------


def reference_loop(list_file: Path) -> None:
    import numpy as np
    import pretty_midi

    paths = list_file.read_text().splitlines()
    chunks = refused = 0
    for path in paths:
        try:
            midi = pretty_midi.PrettyMIDI(path)
        except Exception:  # e.g. "largest tick ... likely corrupt": pretty_midi's own guard
            refused += 1
            continue
        beats = midi.get_beats()
        if len(beats) < 2:
            continue
        # Four sixteenths per beat, from the file's own beats (so tempo changes are followed).
        grid = (beats[:-1, None] + np.diff(beats)[:, None] * np.arange(4) / 4).ravel()
        roll = midi.get_piano_roll(times=grid)[30:94] > 0  # drums are left out by pretty_midi
        starts = range(0, max(roll.shape[1] - 256, 0) + 1, 128)
        if roll.shape[1] >= 128:
            padded = np.pad(roll, ((0, 0), (0, max(0, 256 - roll.shape[1]))))
            chunks += len(np.stack([padded[:, s : s + 256] for s in starts]))
    print(f"{len(paths)} files, {refused} refused by pretty_midi, {chunks} chunks")


# -- measuring -------------------------------------------------------------------------------------


def _tree(root: int) -> dict[int, tuple[int, float]]:
    """{pid: (resident bytes, CPU seconds so far)} for ``root`` and all its descendants (Linux /proc)."""
    page, tick = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    found, stack = {}, [root]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[21]) * page, (int(fields[11]) + int(fields[12])) / tick)
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    stack.extend(int(child) for child in f.read().split())
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    return found


def timed(command: list[str]) -> tuple[float, int, float, str]:
    """Run ``command``; return wall seconds, peak resident bytes of its process tree, CPU seconds of
    the tree (sampled, so a process's last 20 ms may be missed) and its last output line."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak, cpu = 0, {}
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            tree = _tree(process.pid)
            peak = max(peak, sum(rss for rss, _ in tree.values()))
            cpu.update({pid: seconds for pid, (_, seconds) in tree.items()})
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return seconds, peak, sum(cpu.values()), (output.strip().splitlines() or [""])[-1]


def corpus_folder(scratch: Path) -> Path:
    from apollo.corpus import export

    folder = scratch / "corpus"
    for name in ("bach-chorales", "folk"):
        print(export(name, folder / name).line(), flush=True)
    return folder


def subset(files: list[Path], n: int, scratch: Path) -> Path:
    """A folder of links to the first ``n`` files (the walker follows links to files)."""
    folder = scratch / f"first-{n}"
    folder.mkdir()
    for i, path in enumerate(files[:n]):
        (folder / f"{i:05}-{path.name}").symlink_to(path.resolve())
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, help="folder of MIDI files (default: bach-chorales + folk)")
    parser.add_argument("--reference-loop", type=Path, help=argparse.SUPPRESS)  # internal: the child process
    args = parser.parse_args()
    if args.reference_loop:
        return reference_loop(args.reference_loop)

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        folder = args.folder or corpus_folder(scratch)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
        sizes = sorted({n for n in (len(files) // 8, len(files) // 4, len(files) // 2, len(files)) if n})
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{len(files)} files in {folder}; {os.cpu_count()} cores, load average {load} before the runs\n")
        print(f"{'run':38} {'files':>6} {'seconds':>8} {'files/s':>8} {'CPU s':>7} {'peak MiB':>9}")

        def run(name: str, n: int, command: list[str]) -> tuple[float, float, str]:
            seconds, peak, cpu, line = timed(command)
            print(f"{name:38} {n:6} {seconds:8.2f} {n / seconds:8.0f} {cpu:7.1f} {peak / 2**20:9.0f}", flush=True)
            return seconds, cpu, line

        apollo = [sys.executable, "-m", "apollo", "preprocess"]
        for n in sizes:
            source = subset(files, n, scratch)
            command = [*apollo, str(source), "-o", str(scratch / f"out-{n}")]
            seconds, cpu, _ = run("apollo preprocess (all cores)", n, command)
        all_files = scratch / f"first-{len(files)}"
        command = [*apollo, str(all_files), "-o", str(scratch / "out-1"), "--workers", "1"]
        one, _, _ = run("apollo preprocess --workers 1", len(files), command)
        command = [*apollo, str(all_files), "-o", str(scratch / "out-t"), "--transpose", "-5:6"]
        run("apollo preprocess --transpose -5:6", len(files), command)

        list_file = scratch / "files.txt"
        list_file.write_text("\n".join(str(p) for p in files))
        command = [sys.executable, __file__, "--reference-loop", str(list_file)]
        reference, reference_cpu, line = run("pretty_midi loop (one process)", len(files), command)
        print(f"  ({line})")
        print(f"\napollo preprocess is {reference / seconds:.1f}x the pretty_midi loop end to end "
              f"({reference / one:.1f}x with one worker), and uses {reference_cpu / cpu:.1f}x less CPU time")


if __name__ == "__main__":
    sys.exit(main())
