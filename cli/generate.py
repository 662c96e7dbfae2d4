"""`apollo generate`: a thin wrapper over apollo.generate.

torch is imported only when the command runs (not for ``--help``), through apollo.generate.
"""

from __future__ import annotations

from pathlib import Path

import click
from apollo.cli.render import INSTRUMENT, arrangement_options, describe, soundfont_option, model_options

from apollo.decoding import Decoding
from apollo.errors import ApolloError
from apollo.generate import DEFAULT_TEMPO, bundled_decoding
from apollo.instruments import instrument_name
from apollo.parts import check_choice

PROBABILITY = click.FloatRange(0, 1, min_open=True, max_open=True)
DEFAULT, BUNDLED = Decoding(), bundled_decoding() or Decoding()  # quoted by --help


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@model_options
@click.option("--instrument", type=INSTRUMENT,
              help="General MIDI name, alias or program number (see `apollo instruments`); an instrument that "
              "plays one note at a time gets one line. Default: piano.")
@arrangement_options
@click.option("--n", "n", type=click.IntRange(min=1), default=1, show_default=True,
              help="Pieces to generate; several are numbered beside OUT (out-01.mid, ...).")
@click.option("--seed", type=click.IntRange(min=0), help="Same seed, same files. Default: random (printed).")
@click.option("--bars", type=click.IntRange(min=1), help="Length in bars of 4/4. Default: one window of the model (16).")
@click.option("--ending", type=click.Choice(["hold", "none"]), default="hold", show_default=True,
              help="How the piece stops at its last bar: hold the chord on its first beat, or cut as the model made it.")
@click.option("--tempo", type=click.FloatRange(10, 400), help=f"Beats per minute. Default: the model's (else {DEFAULT_TEMPO:g}).")
@click.option("--threshold", type=PROBABILITY,
              help="A cell sounds where its probability is above this; lower gives more notes. "
              f"Default: the model's own (the bundled model's: {BUNDLED.threshold:g}), else {DEFAULT.threshold:g}.")
@click.option("--onset-threshold", type=PROBABILITY,
              help="A held note is struck again where its onset probability is above this; higher gives "
              f"longer notes. Default: the model's own (the bundled model's: {BUNDLED.effective[1]:g}), "
              "else --threshold.")
@click.option("--fill", type=PROBABILITY,
              help="A step where no pitch passes --threshold sounds its most probable pitch if that is above "
              "this (below --threshold): fills the rests of a model unsure which note a step holds. "
              "Default: the model's own, else none.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True),
              help="Sequence models (lstm, gru, transformer) draw their cells: below 1 safer, above 1 wilder. "
              "Default: the model's own, else 1. The DCGAN uses --threshold instead.")
@click.option("--min-length", type=click.IntRange(min=1), metavar="STEPS",
              help="A pitch must sound this many steps in a row; shorter flickers stay silent (1 keeps all). "
              f"Default: the model's own (the bundled model's: {BUNDLED.min_length}), else {DEFAULT.min_length}.")
@click.option("--transpose", type=click.IntRange(-24, 24), metavar="SEMITONES",
              help="Move every piece by this many semitones. Default: a model trained in one key "
              "(--normalize-key) writes each piece in a key drawn from its corpus's keys.")
@click.option("--wav", is_flag=True, help="Also render each piece to a WAV beside it (as `apollo render`).")
@click.option("--png", is_flag=True, help="Also save each piece's piano roll as a PNG beside it.")
@soundfont_option
def generate(out: Path, checkpoint: str | None, run: Path | None, instrument: int | None, ensemble: str | None,
             line: str | None, n: int, seed: int | None,
             bars: int | None, ending: str, tempo: float | None, threshold: float | None, onset_threshold: float | None,
             min_length: int | None, fill: float | None, temperature: float | None,
             transpose: int | None, wav: bool, png: bool,
             soundfont: Path | None) -> None:
    """Generate new music as the MIDI file OUT (and a WAV and PNG beside it).

    \b
    Examples:
        apollo generate --instrument violin --bars 32 --wav out.mid
        apollo generate --ensemble "string quartet" --wav quartet.mid
    """
    from apollo.generate import generate as generate_pieces

    try:
        check_choice(instrument, ensemble, line)
    except ApolloError as error:  # options that exclude each other: a usage error
        raise click.UsageError(str(error)) from None
    result = generate_pieces(out, checkpoint=checkpoint, run=run, instrument=instrument, ensemble=ensemble, line=line,
                             n=n, seed=seed, bars=bars,
                             ending=ending, tempo=tempo, threshold=threshold, onset_threshold=onset_threshold, min_length=min_length,
                             fill=fill, temperature=temperature, transpose=transpose, wav=wav, png=png, soundfont=soundfont)
    click.echo(f"Model: {result.model}; {result.describe_decoding()}")
    seeds = f"{result.seed}" if n == 1 else f"{result.seed}..{result.seed + n - 1} (one per piece)"
    click.echo(f"Seed: {seeds}; --seed {result.seed} makes the same files again")
    for piece in result.pieces:
        played_by = (instrument_name(piece.program) if piece.program is not None
                     else f"{ensemble} ({', '.join(part.name for part in piece.parts)})")
        click.echo(f"Wrote {piece.midi}: {piece.bars} bars, {piece.seconds:.1f} s at {result.tempo:g} BPM, "
                   f"{piece.n_notes} notes, {played_by}"
                   + (f", moved {piece.transpose:+d} semitones" if piece.transpose else ""))
        if piece.message:
            click.echo(f"  {piece.message}")
        if piece.n_notes == 0:
            click.echo(f"warning: {piece.midi} has no notes (try a lower --threshold or --min-length)", err=True)
        if piece.png:
            click.echo(f"Wrote {piece.png}")
        if piece.render_info:
            click.echo(f"Wrote {describe(piece.render_info)}")
