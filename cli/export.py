"""`apollo export`: a thin wrapper over apollo.export (torch is imported only when it runs)."""

from __future__ import annotations

from pathlib import Path

import click
from apollo.cli.render import model_options


@click.command()
@click.option("--onnx", "onnx_path", required=True, metavar="MODEL.onnx", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the generator here as ONNX, and its spec (grid, decoding, chaining) as MODEL.json beside it.")
@model_options
def export(onnx_path: Path, checkpoint: str | None, run: Path | None) -> None:
    """Export a generator for runtimes without Python (onnxruntime, onnxruntime-web).

    \b
    Example:
        apollo export --onnx web/apollo.onnx --checkpoint bundled
    """
    from apollo.decoding import Decoding
    from apollo.export import export_onnx

    result = export_onnx(onnx_path, checkpoint=checkpoint, run=run)
    spec = result.spec
    click.echo(f"Model: {result.model}")
    click.echo(f"Wrote {result.onnx}: {spec['input']['name']} {spec['input']['shape']} -> "
               f"{spec['output']['name']} {spec['output']['shape']}, opset {spec['opset']}, "
               f"{result.onnx.stat().st_size / 1e6:.1f} MB")
    decoding = Decoding.from_dict(spec["decoding"])
    click.echo(f"Wrote {result.json}: grid, encoding {spec['encoding']}, tempo {spec['tempo']:g}, decoding "
               f"({decoding}), window chaining, provenance")
