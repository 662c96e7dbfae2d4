"""`apollo continue`, `vary`, `infill` and `harmonize`: thin wrappers over apollo.compose.

torch is imported only when a command runs (not for ``--help``), through apollo.compose.
"""

from __future__ import annotations

from pathlib import Path

import click
from apollo.cli.render import INSTRUMENT, arrangement_options, describe, model_options, soundfont_option

from apollo.errors import ApolloError
from apollo.instruments import instrument_name

MIDI_IN = click.Path(dir_okay=False, path_type=Path)


def shared_options(function):
    """The model, the seed and how the result is written: as for `apollo generate`."""
    for option in reversed([
        click.argument("source", metavar="IN", type=MIDI_IN),
        click.argument("out", type=click.Path(dir_okay=False, path_type=Path)),
        model_options,
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Same seed, same result."),
        click.option("--instrument", type=INSTRUMENT,
                     help="General MIDI name, alias or program (see `apollo instruments`). Default: piano."),
        arrangement_options,
        click.option("--wav", is_flag=True, help="Also render the result to a WAV beside it (as `apollo render`)."),
        click.option("--png", is_flag=True, help="Also save the result's piano roll as a PNG beside it."),
        soundfont_option,
    ]):
        function = option(function)
    return function


def do_task(task: str, source: Path, out: Path, checkpoint: str | None, run: Path | None, **options) -> None:
    """Check the options, do the task and say what was written."""
    from apollo.compose import compose_file
    from apollo.parts import check_choice

    try:
        check_choice(options.get("instrument"), options.get("ensemble"), options.get("line"))
    except ApolloError as error:  # options that exclude each other: a usage error
        raise click.UsageError(str(error)) from None
    result = compose_file(task, source, out, checkpoint=checkpoint, run=run, **options)
    click.echo(f"Model: {result.model}; seed {result.seed}")
    for note in result.notes:
        click.echo(note, err=True)
    for piece in result.pieces:
        played = instrument_name(piece.program) if piece.program is not None else ", ".join(p.name for p in piece.parts)
        click.echo(f"Wrote {piece.midi}: {piece.bars} bars, {piece.seconds:.1f} s, {piece.n_notes} notes, {played}")
        if piece.message:
            click.echo(piece.message)
        if piece.png:
            click.echo(f"Wrote {piece.png}")
        if piece.render_info:
            click.echo(f"Wrote {describe(piece.render_info)}")


@click.command("continue")
@shared_options
@click.option("--bars", type=click.IntRange(min=1), default=8, show_default=True, help="Bars to add after IN.")
@click.option("--ending", type=click.Choice(["hold", "none"]), default="hold", show_default=True,
              help="How the continuation stops: hold the chord on its last bar's first beat, or cut as made.")
def continue_(source: Path, out: Path, checkpoint: str | None, run: Path | None, **options) -> None:
    """Continue the MIDI file IN for --bars more bars, keeping its notes exactly, as OUT.

    \b
    Example:
        apollo continue my-piece.mid longer.mid --bars 16 --wav
    """
    do_task("continue", source, out, checkpoint, run, **options)


@click.command()
@shared_options
@click.option("--n", "n", type=click.IntRange(min=1), default=3, show_default=True,
              help="Variations to write, numbered beside OUT (out-01.mid, ...); variation i uses seed SEED+i.")
@click.option("--amount", type=click.FloatRange(0, 1, min_open=True), default=0.25, show_default=True,
              help="Share of the bars made anew: small stays close to IN, 1 is a new piece.")
def vary(source: Path, out: Path, checkpoint: str | None, run: Path | None, **options) -> None:
    """Write variations of the MIDI file IN: each makes a share of its bars anew.

    \b
    Example:
        apollo vary my-piece.mid var.mid --n 4 --amount 0.3
    """
    do_task("vary", source, out, checkpoint, run, **options)


@click.command()
@shared_options
@click.option("--bars", required=True, metavar="FIRST-LAST", help="The bars to make anew, counted from 1, such as 5-8.")
def infill(source: Path, out: Path, checkpoint: str | None, run: Path | None, **options) -> None:
    """Make bars of the MIDI file IN anew and keep every other note exactly, as OUT.

    Notes that cross into the chosen bars are cut at their edge.

    \b
    Example:
        apollo infill my-piece.mid filled.mid --bars 5-8
    """
    do_task("infill", source, out, checkpoint, run, **options)


@click.command()
@shared_options
def harmonize(source: Path, out: Path, checkpoint: str | None, run: Path | None, **options) -> None:
    """Write the voices below the melody in IN, which stays the top voice note for note, as OUT.

    A melody with chords is harmonized from its top line.

    \b
    Example:
        apollo harmonize tune.mid chorale.mid --ensemble choir --wav
    """
    do_task("harmonize", source, out, checkpoint, run, **options)
