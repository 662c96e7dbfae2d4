"""How many notes survive MIDI -> piano roll -> MIDI, for each encoding.

    python bench/roundtrip.py                      # the built-in corpora bach-chorales and folk
    python bench/roundtrip.py midi/mine [...]      # or any folders of MIDI files

For every readable file, its notes on the grid (quantized to sixteenths, folded into the 64-pitch
window) are the reference; quantization and folding are not counted as losses. The roll is
encoded, decoded, written as a MIDI file and read back. Two recalls, counted as multisets:

- note recall: reference notes whose (pitch, start) comes back, i.e. onsets that survive. A
  repeated note merged into the one before it is lost; a note shortened by a step is not.
- exact recall: reference notes whose (pitch, start, end) comes back unchanged.

Two notes that share a pitch and a start step (a unison between voices) are one cell, so no
encoding keeps both; the "unisons" column is that share of the notes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from apollo.errors import MidiError
from apollo.midi import read_notes
from apollo.roll import ENCODINGS, Grid, PianoRoll, fold_pitches


def grid_notes(source: Path | bytes, grid: Grid) -> list[tuple[int, int, int]] | None:
    """(pitch, start, end) of every note on the grid, pitches folded into the window; None if unreadable."""
    try:
        notes = read_notes(source, grid.steps_per_beat)
    except MidiError:
        return None
    pitch, _ = fold_pitches(notes.pitch, grid)
    return list(zip(pitch.tolist(), notes.start.tolist(), notes.end.tolist()))


def round_trip(notes: list[tuple[int, int, int]], encoding: str, grid: Grid) -> list[tuple[int, int, int]]:
    pitch, start, end = (np.array(column) for column in zip(*notes))
    roll = PianoRoll.from_notes(pitch, start, end, grid)
    decoded = PianoRoll.decode(roll.encode(encoding), encoding, grid)
    # Through a real MIDI file, as the pipeline writes them.
    return grid_notes(decoded.to_midi(), grid) or []


def measure(folder: Path, grid: Grid) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    counts = Counter()
    for path in files:
        reference = grid_notes(path, grid)
        if not reference:
            continue
        onsets = Counter((p, s) for p, s, _ in reference)
        exact = Counter(reference)
        counts["files"] += 1
        counts["notes"] += len(reference)
        counts["unison"] += len(reference) - len(onsets)  # notes doubling another note's (pitch, start)
        for encoding in ENCODINGS:
            back = round_trip(reference, encoding, grid)
            counts[f"{encoding} note"] += sum((onsets & Counter((p, s) for p, s, _ in back)).values())
            counts[f"{encoding} exact"] += sum((exact & Counter(back)).values())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="folders of MIDI files (default: the built-in corpora)")
    args = parser.parse_args()
    grid = Grid()
    folders = args.folders
    scratch = None
    if not folders:
        from apollo.corpus import export

        scratch = tempfile.TemporaryDirectory()
        folders = []
        for name in ("bach-chorales", "folk"):
            export(name, Path(scratch.name) / name)
            folders.append(Path(scratch.name) / name)

    columns = [f"{e} {kind}" for kind in ("note", "exact") for e in ENCODINGS]
    header = f"{'corpus':14} {'files':>6} {'notes':>8} {'unisons':>8} " + " ".join(f"{c:>12}" for c in columns)
    print(header)
    print("-" * len(header))
    for folder in folders:
        started = time.perf_counter()
        r = measure(folder, grid)
        recalls = " ".join(f"{100 * r[c] / r['notes']:11.1f}%" for c in columns)
        print(f"{folder.name:14} {r['files']:6} {r['notes']:8} {100 * r['unison'] / r['notes']:7.1f}% {recalls}"
              f"   ({time.perf_counter() - started:.0f} s)", flush=True)
    print("\nnote: share of notes whose (pitch, start) is back after MIDI -> roll -> MIDI;"
          "\nexact: share whose (pitch, start, end) is back; unisons: notes no single roll can keep.")
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    sys.exit(main())
