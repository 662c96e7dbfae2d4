"""`apollo play`: a thin wrapper over apollo.live (torch is imported only when music plays)."""

from __future__ import annotations

from pathlib import Path

import click
from apollo.cli.render import INSTRUMENT, arrangement_options, model_options

from apollo.errors import ApolloError
from apollo.parts import check_choice


@click.command()
@click.option("--port", metavar="NAME", help='The MIDI output port. Default: a virtual port named "Apollo" '
              "where the system allows one (Linux, macOS), else the first port there is.")
@click.option("--list-ports", is_flag=True, help="List the MIDI output ports and exit.")
@click.option("--bars", type=click.IntRange(min=1), help="Stop after this many bars of 4/4. Default: play until Ctrl-C.")
@model_options
@click.option("--instrument", type=INSTRUMENT,
              help="General MIDI name, alias or program number (see `apollo instruments`). Default: piano.")
@arrangement_options
@click.option("--tempo", type=click.FloatRange(10, 400), help="Beats per minute. Default: the model's.")
@click.option("--seed", type=click.IntRange(min=0), help="Same seed, same music. Default: random (printed).")
@click.option("--record", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.mid",
              help="Also write what was played as a MIDI file (when playing ends).")
def play(port: str | None, list_ports: bool, bars: int | None, checkpoint: str | None, run: Path | None,
         instrument: int | None, ensemble: str | None, line: str | None, tempo: float | None, seed: int | None,
         record: Path | None) -> None:
    """Play endless generated music live to a MIDI port (a DAW can record it).

    \b
    Examples:
        apollo play --list-ports
        apollo play --bars 8 --port "loopMIDI Port"
        apollo play --ensemble "string quartet" --record live.mid
    """
    from apollo import live

    if list_ports:
        names = live.output_names()
        click.echo("\n".join(names) if names else "no MIDI output ports")
        return
    try:
        check_choice(instrument, ensemble, line)
    except ApolloError as error:
        raise click.UsageError(str(error)) from None
    result = live.play(port, checkpoint=checkpoint, run=run, instrument=instrument, ensemble=ensemble, line=line,
                       bars=bars, tempo=tempo, seed=seed, record=record,
                       announce=lambda text: click.echo(text + ("" if bars else "; Ctrl-C stops")))
    how = "stopped" if result.stopped else "played"
    click.echo(f"{how.capitalize()}: {result.seconds:.1f} s, {result.n_notes} notes; all notes off")
    if result.record:
        click.echo(f"Wrote {result.record}")
