"""``apollo preprocess``: a folder of MIDI files becomes a piano-roll dataset (see apollo.preprocess)."""

from __future__ import annotations

from pathlib import Path

import click

from apollo.dataset import DatasetConfig
from apollo.preprocess import DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT
from apollo.preprocess import preprocess as run_preprocess
from apollo.roll import ENCODINGS, Grid

SHOWN_SKIPS = 10  # the rest are in manifest.json


class SemitoneRange(click.ParamType):
    """``LOW:HIGH`` (inclusive, e.g. ``-5:6`` for all twelve keys) or a single number."""

    name = "LOW:HIGH"

    def convert(self, value, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:
            low, _, high = str(value).partition(":")
            return (int(low), int(high or low))
        except ValueError:
            self.fail(f"{value!r} is not a range like -5:6", param, ctx)


@click.command("preprocess")
@click.argument("midi_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path),
              help="Dataset folder (default: datasets/<MIDI_DIR name>).")
@click.option("--steps-per-beat", default=4, show_default=True, type=click.IntRange(min=1),
              help="Time steps per quarter note (4: sixteenths).")
@click.option("--n-steps", default=256, show_default=True, type=click.IntRange(min=1), help="Steps per chunk.")
@click.option("--hop", default=128, show_default=True, type=click.IntRange(min=1), help="Steps between chunk starts.")
@click.option("--lowest-pitch", default=30, show_default=True, type=int, help="MIDI pitch of the lowest row.")
@click.option("--n-pitches", default=64, show_default=True, type=int, help="Rows (pitches) per chunk.")
@click.option("--encoding", default="onset", show_default=True, type=click.Choice(list(ENCODINGS)),
              help="Planes per chunk: onset (sounding + onset), rest or plain.")
@click.option("--transpose", default="0:0", show_default=True, type=SemitoneRange(),
              help="Semitone range for transposed copies, e.g. -5:6.")
@click.option("--normalize-key", is_flag=True,
              help="Move every chunk to C major / A minor (generated pieces are moved back to the corpus's keys).")
@click.option("--time-shift", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also add copies delayed by 1..N steps.")
@click.option("--min-fill", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Keep a training window if this share of it lies inside the piece.")
@click.option("--fill", default="repeat", show_default=True, type=click.Choice(["repeat", "silence"]),
              help="What follows a piece's end in a training window: the piece again, or silence.")
@click.option("--min-notes", default=8, show_default=True, type=click.IntRange(min=0),
              help="Drop chunks with fewer note onsets.")
@click.option("--val-fraction", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of tunes held out for validation (choosing).")
@click.option("--test-fraction", default=0.1, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of tunes held out for test (reporting).")
@click.option("--held-out-hop", default=16, show_default=True, type=click.IntRange(min=1),
              help="Steps between the starts of held-out (validation, test) windows.")
@click.option("--out-of-range", default="fold", show_default=True, type=click.Choice(["fold", "drop"]),
              help="Notes outside the pitch window: fold by octaves or drop.")
@click.option("--drums/--no-drums", default=False, show_default=True, help="Include drum tracks.")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes (default: all cores).")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds before a file counts as hung.")
@click.option("--memory-limit", default=DEFAULT_MEMORY_LIMIT >> 20, show_default=True, type=click.IntRange(min=64),
              help="MiB a worker may allocate.")
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset folder.")
def preprocess(midi_dir: Path, out: Path | None, steps_per_beat: int, n_steps: int, hop: int, lowest_pitch: int,
               n_pitches: int, encoding: str, transpose: tuple[int, int], normalize_key: bool, time_shift: int, min_fill: float,
               fill: str, min_notes: int, val_fraction: float, test_fraction: float, held_out_hop: int, out_of_range: str, drums: bool, workers: int | None,
               timeout: float, memory_limit: int, overwrite: bool) -> None:
    """Turn the MIDI files under MIDI_DIR into a piano-roll dataset.

    Broken files are skipped and named in the dataset's manifest.json; an interrupted run
    resumes when run again.

    \b
    Example:
      apollo preprocess midi/bach-chorales --transpose -5:6
    """
    try:
        grid = Grid(lowest_pitch, n_pitches, steps_per_beat)
        config = DatasetConfig(
            grid=grid, n_steps=n_steps, hop=hop, encoding=encoding, transpose=transpose, normalize_key=normalize_key,
            time_shift=time_shift,
            min_fill=min_fill, fill=fill, min_notes=min_notes, val_fraction=val_fraction, test_fraction=test_fraction,
            held_out_hop=held_out_hop, out_of_range=out_of_range,
            include_drums=drums,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    summary = run_preprocess(
        midi_dir, out, config, workers=workers, timeout=timeout, memory_limit=memory_limit << 20,
        overwrite=overwrite, progress=True,
    )
    for entry in summary.skipped[:SHOWN_SKIPS]:
        click.echo(f"skipped {entry['file']}: {entry['reason']}", err=True)
    if len(summary.skipped) > SHOWN_SKIPS:
        click.echo(f"... and {len(summary.skipped) - SHOWN_SKIPS} more (see {summary.out / 'manifest.json'})", err=True)
    click.echo(summary.line())
