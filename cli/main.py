"""The ``apollo`` command: a group whose subcommands are imported only when run.

Lazy loading keeps ``apollo --help``, ``apollo render`` and ``apollo instruments`` free of the
torch import. Every :class:`~apollo.errors.ApolloError` becomes one line on stderr and exit 1 (exit 2 for a
:class:`~apollo.errors.UsageError`).
"""

from __future__ import annotations

import importlib

import click

from apollo import __version__
from apollo.errors import ApolloError, UsageError

# command name -> (module under apollo.cli, attribute, one-line help shown by `apollo --help`)
COMMANDS = {
    "corpus": ("corpus", "corpus", "List and export the MIDI corpora that ship with music21."),
    "preprocess": ("preprocess", "preprocess", "Turn a folder of MIDI files into a piano-roll dataset."),
    "train": ("train", "train", "Train the DCGAN on a preprocessed dataset."),
    "recipes": ("train", "recipes", "List the shipped training recipes and the generator's terms."),
    "generate": ("generate", "generate", "Sample new pieces from a trained model as MIDI (and WAV, PNG)."),
    "continue": ("compose", "continue_", "Continue your MIDI piece for more bars."),
    "vary": ("compose", "vary", "Variations of your MIDI piece, from close to free."),
    "infill": ("compose", "infill", "Make chosen bars of your MIDI piece anew, keeping everything else."),
    "harmonize": ("compose", "harmonize", "Write the voices below your melody."),
    "play": ("live", "play", "Play endless generated music live to a MIDI port."),
    "export": ("export", "export", "Export a generator for other runtimes (ONNX)."),
    "web": ("web", "web", "Write (and serve) a web page that generates and plays music in the browser."),
    "render": ("render", "render", "Render a MIDI file to WAV through a SoundFont."),
    "instruments": ("render", "instruments", "List the General MIDI instruments and their aliases."),
    "evaluate": ("evaluate", "evaluate", "Measure the musical quality of generated pieces against real ones."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"apollo.cli.{module}"), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from COMMANDS so that `apollo --help` imports no subcommand.
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, _, text) in COMMANDS.items()])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UsageError as error:
            raise click.UsageError(str(error)) from None
        except ApolloError as error:
            raise click.ClickException(str(error)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="apollo")
def cli() -> None:
    """Apollo: turn a folder of MIDI files into music that never existed.

    \b
    apollo corpus export bach-chorales midi/chorales
    apollo preprocess midi/chorales
    apollo train --minutes 20
    apollo generate --instrument violin out.mid --wav
    """
