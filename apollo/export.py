"""A generator as ONNX, for runtimes without Python (onnxruntime-web in a page, onnxruntime anywhere).

:func:`export_onnx` writes ``MODEL.onnx`` with its inputs and one output::

    noise          float32 [batch, C, H, W]                 (the bundled model: [batch, 7, 2, 8])
    whole          float32 [batch, C, H, W]                 (only a model with a key or style numbers)
    probabilities  float32 [batch, planes, pitches, steps]  (the bundled model: [batch, 2, 64, 256])

and beside it ``MODEL.json`` (:func:`onnx_spec`): the grid, encoding, tempo and decoding that turn
probabilities into notes as ``apollo generate`` does, the noise shape, the constants that chain
windows into a piece of any length (:func:`apollo.generate.sample_probabilities`), and the
provenance. The batch axis is dynamic; the width is not: a model with the chroma path (the bundled
one) or style numbers reads its key and style from the whole flattened noise through a dense layer
of fixed size, and Python itself only ever runs the generator on windows of one width, so a runtime
that chains windows exactly as Python does needs nothing else. That key and style are read from
``whole``, which every window of a piece takes from the piece's first window (``Generator.forward``);
a model without them has no such input (``MODEL.json``'s ``"whole"`` is then null).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from apollo import __version__
from apollo.errors import ApolloError
from apollo.generate import (
    BEATS_PER_BAR,
    Chaining,
    ModelChoice,
    ModelSpec,
    find_model,
    load_model,
)
from apollo.io import atomic_path

if TYPE_CHECKING:  # torch is imported only when a model is exported
    from apollo.model import Generator

__all__ = ["FORMAT", "OPSET", "OnnxExport", "chaining", "export_onnx", "onnx_spec"]

FORMAT = "apollo-onnx/3"  # what MODEL.json holds; a later change to its meaning gets a new number
OPSET = 17  # ONNX opset: onnxruntime-web and every recent onnxruntime run it
INPUT, WHOLE, OUTPUT = "noise", "whole", "probabilities"


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote, and from which model."""

    onnx: Path
    json: Path
    model: ModelChoice
    spec: dict  # the JSON written beside the model


def chaining(generator: Generator) -> dict:
    """How windows make a piece of any length: :class:`apollo.generate.Chaining`, as
    :func:`apollo.generate.sample_probabilities` uses it (see its module doc), in steps except
    those named columns (noise columns)."""
    chain = Chaining.of(generator)
    column = chain.window // chain.width
    return {
        **dataclasses.asdict(chain),  # window k reads tape columns [k * hop_columns, k * hop_columns + width)
        # and covers steps [k * hop, k * hop + window) of the piece
        "overlap_columns": chain.overlap // column,  # noise columns shared by neighbouring windows
        "edge_columns": chain.edge // column,  # columns at a window's inner edge that get weight 0
        "steps_per_column": column,
        "fade": "fade-in weights over a later window's first `overlap` steps: `edge` zeros, then "
                "w(i) = 0.5 - 0.5 cos(pi (i + 0.5) / (overlap - 2 edge)) for i < overlap - 2 edge, then `edge` "
                "ones; the earlier window's last `overlap` steps take them reversed; weighted windows are "
                "summed on the probabilities, before decoding",
        "noise": "i.i.d. standard normal, drawn one column [C, H] at a time, so a tape's first columns never "
                 "depend on its length (apollo.generate.noise_tape draws them with torch's generator)",
        "whole": "every window of a piece is given its first window's noise as `whole` (where the model "
                 "has that input), so the piece keeps one key and one character",
    }


def onnx_spec(generator: Generator, spec: ModelSpec, provenance: dict) -> dict:
    """Everything a runtime needs beside the ONNX file to write the notes Python writes."""
    channels, height, width = generator.config.noise_shape
    planes = generator.config.roll_channels
    threshold, onset_threshold, min_length, fill = spec.decoding.effective
    return {
        "format": FORMAT,
        "opset": OPSET,
        "input": {"name": INPUT, "dtype": "float32", "shape": ["batch", channels, height, width]},
        # The noise the key and style numbers are read from: the first window's, for every window of a piece.
        "whole": ({"name": WHOLE, "dtype": "float32", "shape": ["batch", channels, height, width]}
                  if generator.reads_whole else None),
        "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", planes, spec.grid.n_pitches, spec.n_steps]},
        "grid": spec.grid.to_dict(),  # row r is MIDI pitch lowest_pitch + r; a step is 1 / steps_per_beat beats
        "encoding": spec.encoding,  # "onset": plane 0 sounding, plane 1 a note starts
        "n_steps": spec.n_steps,
        "beats_per_bar": BEATS_PER_BAR,
        "steps_per_bar": spec.steps_per_bar,
        "tempo": spec.tempo,
        "key_moves": list(spec.key_moves) if spec.key_moves else None,
        # As apollo.roll.PianoRoll.decode applies it: a cell sounds above `threshold`; runs of one
        # pitch shorter than `min_length` steps stay silent; a sounding cell starts a note where
        # silence precedes it or (onset encoding) its onset probability is above `onset_threshold`.
        # With `fill` (null: none), a step where no cell sounds sounds its most probable pitch if that
        # is above `fill`, before the runs are measured.
        "decoding": {"threshold": threshold, "onset_threshold": onset_threshold, "min_length": min_length,
                     "fill": fill},
        "chaining": chaining(generator),
        "provenance": provenance,
    }


def export_onnx(
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    run: str | Path | None = None,
    runs_root: str | Path = "runs",
) -> OnnxExport:
    """Export a generator (chosen as ``apollo generate`` chooses it) to ``out`` (``.onnx``) and its
    spec to ``out`` with ``.json``, both atomically. Raises ApolloError with a one-line message."""
    out = Path(out)
    if out.suffix.lower() != ".onnx" or out.is_dir():
        raise ApolloError(f"{out}: the output should be a .onnx file")
    if out.parent.exists() and not out.parent.is_dir():
        raise ApolloError(f"{out}: cannot write ({out.parent} is not a folder)")
    try:
        import onnx
    except ImportError:
        raise ApolloError("exporting to ONNX needs the onnx package: pip install 'apollo-music[onnx]'") from None
    choice = find_model(checkpoint, run, runs_root)

    import torch

    from apollo.checkpoint import load_generator

    load_model(choice, dcgan_only="apollo export --onnx")
    generator, meta = load_generator(choice.path)  # as load_model, keeping the metadata
    spec = ModelSpec.from_meta(meta)
    provenance = {
        "model": choice.path.name,
        "chosen": choice.source,
        "step": meta.get("step"),
        **meta.get("provenance", {}),
        "exported_by": f"apollo {__version__} (apollo export --onnx), torch {torch.__version__}, opset {OPSET}",
    }
    written = onnx_spec(generator, spec, provenance)
    noise = generator.sample_noise(2, torch.Generator().manual_seed(0))
    json_path = out.with_suffix(".json")
    try:
        with atomic_path(out) as tmp_onnx, atomic_path(json_path) as tmp_json, warnings.catch_warnings():
            # The TorchScript exporter: fast, and its opset-17 graph holds only classic operators.
            warnings.simplefilter("ignore")
            # An input the graph never reads (``whole`` without key or style) is left out of it.
            torch.onnx.export(generator, (noise, noise), str(tmp_onnx), input_names=[INPUT, WHOLE],
                              output_names=[OUTPUT], opset_version=OPSET, dynamo=False,
                              dynamic_axes={INPUT: {0: "batch"}, WHOLE: {0: "batch"}, OUTPUT: {0: "batch"}})
            onnx.checker.check_model(str(tmp_onnx))
            tmp_json.write_text(json.dumps(written, indent=1) + "\n")
    except OSError as error:
        raise ApolloError(f"{out}: cannot write ({error.strerror or error})") from None
    except (RuntimeError, onnx.checker.ValidationError) as error:
        raise ApolloError(f"{choice.path}: cannot export to ONNX ({str(error).splitlines()[0][:200]})") from None
    return OnnxExport(out, json_path, choice, written)
