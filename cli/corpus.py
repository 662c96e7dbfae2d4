"""``apollo corpus``: list and export the MIDI corpora built from music21's offline scores."""

from __future__ import annotations

from pathlib import Path

import click

from apollo import corpus as corpora


@click.group("corpus")
def corpus() -> None:
    """List and export the MIDI corpora that ship with music21.

    \b
    Example:
      apollo corpus list
      apollo corpus export bach-chorales midi/bach-chorales
    """


@corpus.command("list")
def list_corpora() -> None:
    """Show the built-in corpora."""
    for name, entry in corpora.CORPORA.items():
        click.echo(f"{name:15} {entry.description}")


@corpus.command("export")
@click.argument("name", type=click.Choice(list(corpora.CORPORA)))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(min=0), help="Write at most this many pieces.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes for converting (default: all cores).")
def export(name: str, out_dir: Path, limit: int | None, workers: int | None) -> None:
    """Write corpus NAME as MIDI files into OUT_DIR (converted once, then cached).

    \b
    Example:
      apollo corpus export folk midi/folk --limit 500
    """
    summary = corpora.export(name, out_dir, limit, workers=workers)
    click.echo(summary.line())
