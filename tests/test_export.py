"""`apollo export --onnx`: onnxruntime gives PyTorch's probabilities and notes, and MODEL.json is enough to chain windows."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from apollo.cli.main import cli
from click.testing import CliRunner

from apollo.checkpoint import save_generator
from apollo.errors import ApolloError
from apollo.export import export_onnx
from apollo.generate import (
    EDGE_COLUMNS,
    OVERLAP_COLUMNS,
    bundled_decoding,
    find_model,
    load_model,
    noise_tape,
    sample_probabilities,
)
from apollo.model import Generator, ModelConfig
from apollo.roll import Grid

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SEEDS = range(6)


@pytest.fixture(scope="module")
def bundled_onnx(tmp_path_factory):
    """The bundled model exported once, its session, and the PyTorch generator and spec it came from."""
    result = export_onnx(tmp_path_factory.mktemp("onnx") / "apollo.onnx", checkpoint="bundled")
    session = ort.InferenceSession(str(result.onnx), providers=["CPUExecutionProvider"])
    generator, spec = load_model(find_model("bundled"))
    return result, session, generator, spec


def feed(session, noise: np.ndarray, whole: np.ndarray | None = None) -> dict:
    """The session's inputs: ``whole`` (default: the noise itself) only where the graph reads it."""
    names = {i.name for i in session.get_inputs()}
    return {"noise": noise, **({"whole": noise if whole is None else whole} if "whole" in names else {})}


def run_both(session, generator, noise: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        expected = generator(noise).numpy()
    return session.run(["probabilities"], feed(session, noise.numpy()))[0], expected


def test_probabilities_match_pytorch(bundled_onnx):
    _, session, generator, _ = bundled_onnx
    noise = torch.stack([generator.sample_noise(1, torch.Generator().manual_seed(seed))[0] for seed in SEEDS])
    got, expected = run_both(session, generator, noise)  # the batch axis is dynamic: all seeds at once
    assert got.shape == expected.shape == (len(SEEDS), 2, 64, 256)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    for one, row in zip(noise, expected):  # and one at a time
        np.testing.assert_allclose(session.run(["probabilities"], feed(session, one[None].numpy()))[0][0], row, rtol=0, atol=1e-4)


def test_same_notes_after_decoding(bundled_onnx):
    result, session, generator, spec = bundled_onnx
    noise = generator.sample_noise(len(SEEDS), torch.Generator().manual_seed(123))
    got, expected = run_both(session, generator, noise)
    grid = Grid(**result.spec["grid"])
    for ours, theirs in zip(got, expected):
        from_onnx = spec.decoding.decode(ours, result.spec["encoding"], grid, result.spec["tempo"])
        from_torch = spec.decoding.decode(theirs, spec.encoding, spec.grid, spec.tempo)
        assert from_torch.cells.any()
        np.testing.assert_array_equal(from_onnx.cells, from_torch.cells)


def chain_from_json(session, spec: dict, tape: np.ndarray, n_steps: int) -> np.ndarray:
    """What a runtime does with MODEL.json alone: windows of the tape through ONNX, cross-faded."""
    chain = spec["chaining"]
    width, hop_columns = chain["width"], chain["hop_columns"]
    window, hop, overlap, edge = chain["window"], chain["hop"], chain["overlap"], chain["edge"]
    n_windows = 1 + max(0, math.ceil((n_steps - window) / hop))
    windows = np.stack([tape[..., k * hop_columns : k * hop_columns + width] for k in range(n_windows)])
    inputs = {spec["input"]["name"]: windows}
    if spec["whole"]:  # every window reads key and style from the piece's first window
        inputs[spec["whole"]["name"]] = np.repeat(windows[:1], n_windows, axis=0)
    probs = session.run(["probabilities"], inputs)[0]
    fade = overlap - 2 * edge
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 0.5) / fade)
    fade_in = np.concatenate([np.zeros(edge), ramp, np.ones(edge)]).astype(np.float32)
    out = np.zeros((*probs.shape[1:3], window + (n_windows - 1) * hop), dtype=np.float32)
    for k, p in enumerate(probs):
        weight = np.ones(window, dtype=np.float32)
        if k > 0:
            weight[:overlap] = fade_in
        if k < n_windows - 1:
            weight[-overlap:] = fade_in[::-1]
        out[..., k * hop : k * hop + window] += p * weight
    return out[..., :n_steps]


def test_json_chains_windows_as_python_does(bundled_onnx):
    result, session, generator, spec = bundled_onnx
    n_steps = 40 * spec.steps_per_bar  # four windows
    n_columns = 8 + 3 * result.spec["chaining"]["hop_columns"]
    for seed in (0, 7):
        ours = chain_from_json(session, result.spec, noise_tape(generator, n_columns, seed).numpy(), n_steps)
        theirs = sample_probabilities(generator, n_steps, seed)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
        decode = spec.decoding.decode
        assert (decode(ours, spec.encoding, spec.grid, spec.tempo).cells
                == decode(theirs, spec.encoding, spec.grid, spec.tempo).cells).all()


def test_json_holds_what_a_runtime_needs(bundled_onnx):
    result, *_ = bundled_onnx
    written = json.loads(result.json.read_text())
    assert written == result.spec
    assert written["input"] == {"name": "noise", "dtype": "float32", "shape": ["batch", 7, 2, 8]}
    assert written["whole"] == {"name": "whole", "dtype": "float32", "shape": ["batch", 7, 2, 8]}
    assert written["output"]["shape"] == ["batch", 2, 64, 256]
    threshold, onset_threshold, min_length, fill = bundled_decoding().effective
    assert written["decoding"] == {"threshold": threshold, "onset_threshold": onset_threshold, "min_length": min_length,
                                   "fill": fill}
    assert written["grid"] == {"lowest_pitch": 30, "n_pitches": 64, "steps_per_beat": 4}
    assert (written["encoding"], written["n_steps"], written["steps_per_bar"]) == ("onset", 256, 16)
    assert written["chaining"]["overlap_columns"] == OVERLAP_COLUMNS
    assert written["chaining"]["edge_columns"] == EDGE_COLUMNS
    assert {k: written["chaining"][k] for k in ("width", "hop_columns", "window", "hop", "overlap", "edge")} == {
        "width": 8, "hop_columns": 4, "window": 256, "hop": 128, "overlap": 128, "edge": 32}
    assert written["provenance"]["model"] == "generator.safetensors"
    assert not list(result.onnx.parent.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_any_checkpoint(tmp_path):
    """A model without the chroma path, from its own file, on a finer grid."""
    torch.manual_seed(0)
    generator = Generator(ModelConfig(width=8, n_pitches=32, n_steps=128, n_layers=4)).eval()
    meta = {"dataset_config": {"grid": {"lowest_pitch": 48, "n_pitches": 32, "steps_per_beat": 2},
                               "encoding": "onset", "n_steps": 128},
            "decoding": {"threshold": 0.3, "min_length": 1, "fill": 0.2}}
    save_generator(tmp_path / "tiny.safetensors", generator, meta)
    result = export_onnx(tmp_path / "out" / "tiny.onnx", checkpoint=tmp_path / "tiny.safetensors")
    assert result.spec["input"]["shape"] == ["batch", 7, 2, 8]
    assert result.spec["grid"]["lowest_pitch"] == 48
    assert result.spec["decoding"] == {"threshold": 0.3, "onset_threshold": 0.3, "min_length": 1, "fill": 0.2}
    assert result.spec["whole"] is None  # no key, no style: nothing is read from the whole noise
    session = ort.InferenceSession(str(result.onnx), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["noise"]
    got, expected = run_both(session, generator, generator.sample_noise(3, torch.Generator().manual_seed(1)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("scaled_biases", [False, True])
def test_a_generator_with_voices(tmp_path, scaled_biases):
    torch.manual_seed(0)
    generator = Generator(ModelConfig(width=8, voices=4, chroma=True, pitch_bias=True, scaled_biases=scaled_biases)).eval()
    if scaled_biases:
        with torch.no_grad():  # maps with a spread above 1, so that the gain is more than its floor
            generator.net[-1].weight.mul_(20.0)
    meta = {"dataset_config": {"grid": {"lowest_pitch": 30, "n_pitches": 64, "steps_per_beat": 4},
                               "encoding": "onset", "n_steps": 256}}
    save_generator(tmp_path / "voices.safetensors", generator, meta)
    result = export_onnx(tmp_path / "out" / "voices.onnx", checkpoint=tmp_path / "voices.safetensors")
    session = ort.InferenceSession(str(result.onnx), providers=["CPUExecutionProvider"])
    got, expected = run_both(session, generator, generator.sample_noise(3, torch.Generator().manual_seed(1)))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_cli_prints_what_it_wrote(tmp_path):
    out = tmp_path / "web" / "model.onnx"
    result = CliRunner().invoke(cli, ["export", "--onnx", str(out), "--checkpoint", "bundled"])
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}:" in result.output
    assert f"Wrote {out.with_suffix('.json')}:" in result.output
    assert "the bundled model" in result.output
    assert out.stat().st_size > 1_000_000 and json.loads(out.with_suffix(".json").read_text())["format"]


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "missing.pt"], "missing.pt: no such checkpoint"),
    (["--run", "no-such-run"], "no-such-run: no such run directory"),
])
def test_cli_bad_model_is_one_line(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["export", "--onnx", str(tmp_path / "m.onnx"), *args])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {message}"]
    assert not list(tmp_path.iterdir())


def test_bad_outputs(tmp_path):
    with pytest.raises(ApolloError, match="should be a .onnx file"):
        export_onnx(tmp_path / "m.json", checkpoint="bundled")
    (tmp_path / "file").write_text("")
    with pytest.raises(ApolloError, match="is not a folder"):
        export_onnx(tmp_path / "file" / "m.onnx", checkpoint="bundled")


def test_failed_export_leaves_old_files(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    out.write_text("old")

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ApolloError, match=r"cannot export to ONNX \(unsupported operator\)$"):
        export_onnx(out, checkpoint="bundled")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m.onnx"] and out.read_text() == "old"


def test_onnx_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ApolloError, match=r"needs the onnx package: pip install 'apollo-music\[onnx\]'"):
        export_onnx(tmp_path / "m.onnx", checkpoint="bundled")
    assert not Path(tmp_path / "m.onnx").exists()
