"""`apollo render` and `apollo instruments`: thin wrappers over apollo.render and apollo.instruments.

Neither command imports torch (the test suite checks it in a subprocess).
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from apollo.errors import ApolloError
from apollo.instruments import aliases_of, gm_names, instrument_name, instrument_program
from apollo.parts import ENSEMBLES, PLAYABLE, find_ensemble, pitch_name


class InstrumentType(click.ParamType):
    """A General MIDI program given as a name, an alias or a number; converts to the program (int)."""

    name = "NAME|PROGRAM"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        try:
            return instrument_program(value)
        except ApolloError as error:
            self.fail(str(error), param, ctx)


INSTRUMENT = InstrumentType()


class EnsembleType(click.ParamType):
    """An ensemble of apollo.parts, its name matched forgivingly; converts to the ensemble's name."""

    name = "NAME"

    def convert(self, value, param, ctx) -> str:
        try:
            return find_ensemble(value)[0]
        except ApolloError as error:
            self.fail(str(error), param, ctx)


def arrangement_options(function):
    """--ensemble and --line: how a piece is arranged for real players (apollo.parts)."""
    function = click.option(
        "--line", type=click.Choice(["top", "bottom"]),
        help="The voice a solo instrument plays. Default: the top voice, the bottom one for bass instruments; "
        "a polyphonic instrument plays the whole texture unless this is given.",
    )(function)
    return click.option(
        "--ensemble", type=EnsembleType(),
        help=f"Arrange for an ensemble, one track per part, each in its range: {', '.join(ENSEMBLES)} "
        "(`apollo instruments` lists the parts).",
    )(function)


def model_options(function):
    """--checkpoint and --run: the model, chosen as `apollo generate` chooses it (apollo.generate.find_model)."""

    @functools.wraps(function)
    def checked(*args, checkpoint=None, run=None, **kwargs):
        if checkpoint is not None and run is not None:
            raise click.UsageError("give --checkpoint or --run, not both")
        return function(*args, checkpoint=checkpoint, run=run, **kwargs)

    checked = click.option("--run", type=click.Path(file_okay=False, path_type=Path),
                           help="Use this run's best (else last) checkpoint.")(checked)
    return click.option("--checkpoint", metavar="FILE|bundled",
                        help="A training checkpoint (.pt) or exported model (.safetensors); `bundled` for the model "
                        "that ships with Apollo. Default: the most recent run's best checkpoint, else the bundled model.")(checked)


def soundfont_option(function):
    """--soundfont, shared with `apollo generate --wav`."""
    return click.option(
        "--soundfont",
        type=click.Path(dir_okay=False, path_type=Path),
        help="SoundFont (.sf2/.sf3). Default: $APOLLO_SOUNDFONT, soundfonts/, pretty_midi's TimGM6mb, "
        "the system FluidR3_GM.",
    )(function)


def describe(info) -> str:
    """One line about a rendered WAV: length, format, peak, instruments and SoundFont."""
    programs = sorted({p for used in info.programs.values() for p in used})
    played = ", ".join(instrument_name(p) for p in programs) or "no notes"
    return (
        f"{info.wav_path}: {info.seconds:.1f} s (MIDI {info.midi_seconds:.1f} s + tail), "
        f"{info.sample_rate} Hz stereo 16-bit, peak {info.peak_dbfs:.1f} dBFS; {played}; "
        f"SoundFont {info.soundfont.path.name} ({info.soundfont.source})"
    )


@click.command()
@click.argument("midi", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("wav", type=click.Path(dir_okay=False, path_type=Path))
@soundfont_option
@click.option("--instrument", type=INSTRUMENT, help="Play every non-drum part on this instrument (see `apollo instruments`).")
@click.option("--sample-rate", type=click.IntRange(8000, 96000), default=44100, show_default=True, help="Hz.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=60, show_default=True,
              help="Refuse (without rendering) a MIDI file that lasts longer.")
def render(midi: Path, wav: Path, soundfont: Path | None, instrument: int | None, sample_rate: int, max_minutes: float) -> None:
    """Render the MIDI file MIDI to a WAV file through a SoundFont.

    The WAV is stereo 16-bit, keeps the release tail of the last notes and is peak-normalized
    to -1 dBFS.

    \b
    Example:
        apollo render song.mid song.wav --instrument violin
    """
    from apollo.render import render as render_midi

    info = render_midi(midi, wav, soundfont=soundfont, instrument=instrument, sample_rate=sample_rate,
                       max_seconds=max_minutes * 60)
    if not info.n_notes:
        click.echo(f"warning: {midi} has no notes; the WAV is silent", err=True)
    click.echo(f"Wrote {describe(info)}")


@click.command()
def instruments() -> None:
    """List the 128 General MIDI instruments: program number, name, whether it plays one note at a
    time (`apollo generate` then writes one line) or chords, its playable range, its aliases; then
    the ensembles of `apollo generate --ensemble` with their parts.

    Names are matched ignoring case, spaces and punctuation; numbers count from 0.
    """
    for program, name in enumerate(gm_names()):
        playable = PLAYABLE[program]
        plays = "one note" if playable.monophonic else "chords"
        aliases = aliases_of(program)
        line = f"{program:3d}  {name:<26} {plays:<9} {pitch_name(playable.low):>3}..{pitch_name(playable.high):<4}"
        click.echo((line + (f"  (also: {', '.join(aliases)})" if aliases else "")).rstrip())
    click.echo("\nEnsembles (--ensemble), parts from the top voice down:")
    for ensemble, parts in ENSEMBLES.items():
        click.echo(f"  {ensemble}: " + ", ".join(_describe_part(part) for part in parts))


def _describe_part(part) -> str:
    """'Violin I (Violin, G3..E7)': a part's name, its instrument where the name differs, range, voices."""
    about = [instrument_name(part.program)] if instrument_name(part.program) != part.name else []
    about.append(f"{pitch_name(part.low)}..{pitch_name(part.high)}")
    if part.n_voices > 1:
        about.append(f"{part.n_voices} voices")
    return f"{part.name} ({', '.join(about)})"
