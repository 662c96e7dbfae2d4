"""`apollo web`: a thin wrapper over apollo.web (torch is imported only when the page is built)."""

from __future__ import annotations

from pathlib import Path

import click
from apollo.cli.render import model_options


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@model_options
@click.option("--soundfont", metavar="FILE.sf2", help="The SoundFont the page plays through (default: as apollo render).")
@click.option("--serve", "serve_", is_flag=True, help="Then serve the page until Ctrl-C.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on with --serve.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port for --serve (0: any free one).")
def web(out_dir: Path, checkpoint: str | None, run: Path | None, soundfont: str | None, serve_: bool,
        host: str, port: int) -> None:
    """Write a static page into OUT_DIR that generates and plays endless music in the browser.

    The page runs the generator with onnxruntime-web and plays through FluidSynth compiled to
    WebAssembly; it needs no server-side code and nothing from the internet when it runs. The
    first build fetches those JavaScript packages with npm into a cache folder.

    \b
    Example:
        apollo web out/web --checkpoint bundled --serve
    """
    from apollo.web import build_page, serve

    page = build_page(out_dir, checkpoint=checkpoint, run=run, soundfont=soundfont)
    click.echo(f"Model: {page.model}")
    click.echo(f"SoundFont: {page.soundfont}")
    click.echo(f"Wrote {out_dir}/index.html and the files it needs "
               f"({sum(f.stat().st_size for f in out_dir.rglob('*') if f.is_file()) / 1e6:.1f} MB)")
    if serve_:
        serve(out_dir, host, port, announce=click.echo)
    else:
        click.echo(f"Serve it with any static server, e.g. apollo web {out_dir} --serve")
