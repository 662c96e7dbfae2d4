"""`apollo generate`: model choice, files, seeds, long pieces, safe loading, the bundled model path."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import wave
from pathlib import Path

import mido
import numpy as np
import pytest
import torch
from apollo.cli.main import cli
from click.testing import CliRunner

from apollo import generate as generate_module
from apollo.checkpoint import load_generator, save_checkpoint, save_generator
from apollo.decoding import Decoding
from apollo.errors import ApolloError
from apollo.generate import (
    export_model,
    find_model,
    generate,
    load_model,
    noise_tape,
    numbered_paths,
    sample_probabilities,
)
from apollo.model import Generator, ModelConfig
from apollo.roll import PianoRoll

DATASET_CONFIG = {"grid": {"lowest_pitch": 30, "n_pitches": 64, "steps_per_beat": 4}, "encoding": "onset", "n_steps": 256}
SECONDS_PER_BAR = 4 * 60 / 100  # 4/4 at the default tempo of 100 BPM


def tiny_generator() -> Generator:
    """A small untrained generator whose output bias is set so that it writes a few notes per bar.

    The bias is measured rather than hand-picked, so the fixture holds whatever the architecture:
    about 3 % of cells sound and a quarter of those are onsets.
    """
    torch.manual_seed(0)
    # Batch norm in eval mode is a fixed affine map, so this generator is translation-equivariant
    # and the long-piece test can check that windows tile exactly.
    generator = Generator(ModelConfig(width=4, generator_norm="batch")).eval()
    with torch.no_grad():
        output = generator.net[-1]
        output.bias.zero_()
        logits = generator.logits(generator.sample_noise(8))
        sounding = torch.quantile(logits[:, 0].flatten(), 0.97)
        onset = torch.quantile(logits[:, 1].flatten(), 0.99)
        output.bias.copy_(-torch.stack([sounding, onset]))
    return generator


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """The same tiny generator as a training checkpoint (.pt) and as an export (.safetensors)."""
    folder = tmp_path_factory.mktemp("models")
    generator = tiny_generator()
    save_generator(folder / "tiny.safetensors", generator, {"dataset_config": DATASET_CONFIG})
    save_checkpoint(folder / "tiny.pt", {"generator": generator.state_dict(), "model_config": generator.config.to_dict(),
                                         "dataset_config": DATASET_CONFIG, "step": 7})
    return {"pt": folder / "tiny.pt", "safetensors": folder / "tiny.safetensors"}


@pytest.fixture
def no_bundled(monkeypatch, tmp_path):
    """No bundled model installed (whatever ships in the package)."""
    monkeypatch.setattr(generate_module, "BUNDLED_MODEL", tmp_path / "bundled" / "generator.safetensors")


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["generate", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def program_and_tempo(path: Path) -> tuple[list[int], list[float]]:
    midi = mido.MidiFile(path)
    messages = [m for track in midi.tracks for m in track]
    programs = [m.program for m in messages if m.type == "program_change"]
    tempos = [round(mido.tempo2bpm(m.tempo), 3) for m in messages if m.type == "set_tempo"]
    return programs, tempos


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_generate_from_checkpoint_and_export(models, tmp_path, kind):
    out = tmp_path / f"{kind}.mid"
    output = run("--checkpoint", models[kind], "--instrument", "violin", "--seed", 3, out)
    assert f"Wrote {out}: 16 bars" in output and "Violin" in output and "Seed: 3" in output
    assert program_and_tempo(out) == ([40], [100.0])
    midi = mido.MidiFile(out)
    # A violin plays one line (apollo.parts): fewer notes than the model's chords, still music.
    assert sum(m.type == "note_on" and m.velocity > 0 for m in midi.tracks[0]) > 10
    assert "Violin plays one note at a time: wrote the top voice" in output
    assert midi.length == pytest.approx(16 * SECONDS_PER_BAR)


def test_pt_and_safetensors_of_one_model_give_the_same_file(models, tmp_path):
    run("--checkpoint", models["pt"], "--seed", 5, tmp_path / "a.mid")
    run("--checkpoint", models["safetensors"], "--seed", 5, tmp_path / "b.mid")
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()


def test_same_seed_same_bytes_other_seed_other_music(models, tmp_path):
    for name in ("a", "b"):
        run("--checkpoint", models["pt"], "--seed", 11, "--png", "--tempo", 90, "--instrument", "sax", tmp_path / f"{name}.mid")
    for suffix in (".mid", ".png"):
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()
    assert program_and_tempo(tmp_path / "a.mid") == ([65], [90.0])
    run("--checkpoint", models["pt"], "--seed", 12, tmp_path / "c.mid")
    assert (tmp_path / "c.mid").read_bytes() != (tmp_path / "a.mid").read_bytes()


def test_a_model_trained_in_one_key_writes_in_the_corpus_keys(models, tmp_path):
    from apollo.key import move_histogram
    from apollo.roll import PianoRoll

    # The corpus was in D (moved down 2 to C) three times as often as in A (moved up 3).
    generator, _ = load_generator(models["pt"])
    keyed = tmp_path / "keyed.safetensors"
    save_generator(keyed, generator, {"dataset_config": {**DATASET_CONFIG, "normalize_key": True},
                                      "key_moves": move_histogram([-2, -2, -2, 3])})
    run("--checkpoint", models["pt"], "--seed", 3, "--n", 8, tmp_path / "plain" / "a.mid")
    output = run("--checkpoint", keyed, "--seed", 3, "--n", 8, tmp_path / "keyed" / "a.mid")
    moves = []
    for plain, moved in zip(sorted((tmp_path / "plain").glob("*.mid")), sorted((tmp_path / "keyed").glob("*.mid"))):
        a, b = PianoRoll.from_midi(plain), PianoRoll.from_midi(moved)
        move = next(m for m in (2, -3) if np.array_equal(a.transpose(m).cells, b.cells))  # the same music, moved
        moves.append(move)
    assert set(moves) == {2, -3} and output.count("moved +2 semitones") == moves.count(2)
    # --transpose chooses the move for every piece, for any model.
    run("--checkpoint", keyed, "--seed", 3, "--transpose", 0, tmp_path / "c.mid")
    assert (tmp_path / "c.mid").read_bytes() == (tmp_path / "plain" / "a-01.mid").read_bytes()
    run("--checkpoint", models["pt"], "--seed", 3, "--transpose", -1, tmp_path / "down.mid")
    down = PianoRoll.from_midi(tmp_path / "down.mid")
    assert np.array_equal(PianoRoll.from_midi(tmp_path / "plain" / "a-01.mid").transpose(-1).cells, down.cells)


def test_one_step_flickers_are_dropped_unless_asked_for(models, tmp_path):
    from apollo.roll import PianoRoll, drop_short_runs

    run("--checkpoint", models["pt"], "--seed", 5, tmp_path / "default.mid")
    run("--checkpoint", models["pt"], "--seed", 5, "--min-length", 1, tmp_path / "all.mid")
    default, everything = (PianoRoll.from_midi(tmp_path / f"{name}.mid").pad(256) for name in ("default", "all"))
    sounding = everything.cells > 0
    assert not np.array_equal(drop_short_runs(sounding, 2), sounding)  # the untrained model flickers
    assert np.array_equal(default.cells > 0, drop_short_runs(sounding, 2))  # and the default drops just that


def test_random_seed_is_printed_and_reproduces(models, tmp_path):
    output = run("--checkpoint", models["pt"], tmp_path / "a.mid")
    seed = int(output.split("Seed: ")[1].split(";")[0])
    run("--checkpoint", models["pt"], "--seed", seed, tmp_path / "b.mid")
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()


def test_n_writes_numbered_files_in_a_new_folder(models, tmp_path):
    out = tmp_path / "new" / "folder" / "piece.mid"
    output = run("--checkpoint", models["pt"], "--n", 3, "--seed", 20, "--png", out)
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["piece-01.mid", "piece-01.png", "piece-02.mid", "piece-02.png", "piece-03.mid", "piece-03.png"]
    assert all(f"Wrote {out.parent / f'piece-0{i}.mid'}" in output for i in (1, 2, 3))
    # Piece i is the single piece of seed + i.
    run("--checkpoint", models["pt"], "--seed", 21, tmp_path / "single.mid")
    assert (out.parent / "piece-02.mid").read_bytes() == (tmp_path / "single.mid").read_bytes()
    assert numbered_paths("x/out.mid", 100)[0] == Path("x/out-001.mid")


@pytest.mark.parametrize("bars", [5, 40])
def test_bars_sets_the_length(models, tmp_path, bars):
    out = tmp_path / "long.mid"
    run("--checkpoint", models["pt"], "--bars", bars, "--seed", 1, out)
    assert mido.MidiFile(out).length == pytest.approx(bars * SECONDS_PER_BAR)


def test_long_pieces_have_no_seams_and_extend_shorter_ones(models):
    generator, _ = load_generator(models["pt"])
    steps = 40 * 16  # 40 bars: four windows, 20 noise columns
    long = sample_probabilities(generator, steps, seed=4)
    assert long.shape == (2, 64, steps)
    # The windows agree where they overlap, so the piece equals one pass of the (convolutional)
    # generator over the whole noise tape: nothing changes abruptly at a seam.
    with torch.inference_mode():
        whole = generator(noise_tape(generator, steps // 32, seed=4)[None])[0].numpy()
    assert np.abs(long - whole)[..., : steps - 32].max() < 1e-5  # the last column: the tape's own edge
    # A longer piece starts with the shorter piece of the same seed.
    short = sample_probabilities(generator, 256, seed=4)
    assert np.abs(long[..., :224] - short[..., :224]).max() < 1e-5


def test_a_long_piece_keeps_one_key():
    """Every window reads the key from the piece's first window: the pitch classes of each later
    16 bars stay those of the first (read from each window's own noise: mean 0.87, lowest 0.58)."""
    generator, spec = load_model(find_model("bundled"))
    classes = (spec.grid.lowest_pitch + np.arange(spec.grid.n_pitches)) % 12
    similarity = []
    for seed in range(8):
        sounding = sample_probabilities(generator, 64 * 16, seed)[0] > spec.decoding.threshold
        blocks = np.stack([np.bincount(classes, weights=sounding[:, a : a + 256].sum(axis=1), minlength=12)
                           for a in range(0, 64 * 16, 256)])
        blocks /= np.linalg.norm(blocks, axis=1, keepdims=True)
        similarity += list(blocks[1:] @ blocks[0])  # cosine of each later block's histogram with the first's
    assert np.mean(similarity) > 0.9 and min(similarity) > 0.75


def test_long_pieces_blend_windows_of_a_per_sample_normalized_generator():
    """With layer norm each window has its own statistics: the cross-fade must still leave no jump."""
    torch.manual_seed(1)
    generator = Generator(ModelConfig(width=4, generator_norm="layer")).eval()
    steps = 40 * 16
    long = sample_probabilities(generator, steps, seed=4)
    change = np.abs(np.diff(long, axis=-1)).mean(axis=(0, 1))  # how much each step differs from the last
    seams = [96 + 128 * k for k in range(4)]  # middles of the overlaps, where windows hand over
    assert change[seams].max() < 3 * np.median(change)


def test_wav_is_rendered_beside_with_the_instrument(models, tmp_path):
    out = tmp_path / "song.mid"
    output = run("--checkpoint", models["pt"], "--instrument", "flute", "--bars", 2, "--seed", 2, "--wav", out)
    assert f"Wrote {out.with_suffix('.wav')}" in output and "Flute" in output
    with wave.open(str(out.with_suffix(".wav"))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (2, 2)
        assert wav.getnframes() / wav.getframerate() >= 2 * SECONDS_PER_BAR


class Trap:
    """Unpickling this would create a file: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_booby_trapped_checkpoint_is_refused_without_running_it(tmp_path, writer):
    marker, trap = tmp_path / "pwned", tmp_path / "trap.pt"
    state = {"generator": Trap(marker), "model_config": ModelConfig(width=4).to_dict()}
    if writer == "torch.save":
        torch.save(state, trap)
    else:
        trap.write_bytes(pickle.dumps(state, protocol=2))
    assert not marker.exists()
    result = CliRunner().invoke(cli, ["generate", "--checkpoint", str(trap), str(tmp_path / "x.mid")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {trap}: ") and result.output.count("\n") == 1
    assert not marker.exists()
    assert not (tmp_path / "x.mid").exists()


def test_model_choice_order(models, tmp_path, monkeypatch, no_bundled):
    runs = tmp_path / "runs"
    # Nothing at all: one line that says what to do.
    with pytest.raises(ApolloError, match="no model to generate with.*apollo train"):
        find_model(runs_root=runs)
    with pytest.raises(ApolloError, match="bundled model is not installed"):
        find_model("bundled", runs_root=runs)
    # The bundled model when there is no run, or when asked for.
    monkeypatch.setattr(generate_module, "BUNDLED_MODEL", models["safetensors"])
    assert find_model(runs_root=runs).path == models["safetensors"]
    # A run: its best checkpoint, else its last; the most recent run by default.
    for name, which, age in (("old", "best", 100), ("new", "last", 0)):
        (runs / name / "checkpoints").mkdir(parents=True)
        path = runs / name / "checkpoints" / f"{which}.pt"
        path.write_bytes(models["pt"].read_bytes())
        os.utime(path, (path.stat().st_atime - age,) * 2)
    assert find_model(runs_root=runs).path == runs / "new" / "checkpoints" / "last.pt"
    assert find_model(run=runs / "old", runs_root=runs).path == runs / "old" / "checkpoints" / "best.pt"
    assert find_model("bundled", runs_root=runs).path == models["safetensors"]
    assert find_model(models["pt"], runs_root=runs).source == "--checkpoint"
    with pytest.raises(ApolloError, match="no checkpoints/best.pt or checkpoints/last.pt"):
        (runs / "empty").mkdir()
        find_model(run=runs / "empty")
    with pytest.raises(ApolloError, match="nope.pt: no such checkpoint"):
        find_model(tmp_path / "nope.pt")


def test_default_model_from_the_command_line(models, tmp_path, monkeypatch, no_bundled):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["generate", "out.mid"])
    assert result.exit_code == 1 and "no model to generate with" in result.output
    monkeypatch.setattr(generate_module, "BUNDLED_MODEL", models["safetensors"])
    assert "(the bundled model: no run under runs/)" in run("--seed", 0, "a.mid")
    assert "(the bundled model)" in run("--checkpoint", "bundled", "--seed", 0, "b.mid")
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()


def test_export_model_for_bundling(models, tmp_path):
    out = tmp_path / "bundled" / "generator.safetensors"
    export_model(models["pt"], out, provenance={"command": "apollo train --steps 7", "seed": 0}, tempo=84)
    _, meta = load_generator(out)
    assert meta["tempo"] == 84 and meta["provenance"]["command"] == "apollo train --steps 7"
    assert meta["provenance"]["step"] == 7 and meta["dataset_config"] == DATASET_CONFIG
    assert '"source_checkpoint": "tiny.pt"' in out.with_suffix(".json").read_text()
    # Same weights: the export generates the checkpoint's music (at the tempo it records).
    run("--checkpoint", models["pt"], "--seed", 9, "--tempo", 84, tmp_path / "a.mid")
    run("--checkpoint", out, "--seed", 9, tmp_path / "b.mid")
    assert (tmp_path / "a.mid").read_bytes() == (tmp_path / "b.mid").read_bytes()
    # float16 halves the file and still loads (into float32).
    half = export_model(models["pt"], tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < 0.6 * out.stat().st_size
    assert next(load_generator(half)[0].parameters()).dtype == torch.float32


def test_a_models_own_decoding_is_the_default(models, tmp_path):
    own = Decoding(threshold=0.3, onset_threshold=0.9, min_length=1)
    calibrated = export_model(models["pt"], tmp_path / "calibrated.safetensors", decoding=own)
    result = generate(tmp_path / "a.mid", checkpoint=calibrated, seed=3)
    generator, _ = load_generator(calibrated)
    expected = PianoRoll.decode(sample_probabilities(generator, 256, 3), threshold=0.3, onset_threshold=0.9)
    assert result.decoding == own and result.pieces[0].n_notes == expected.n_notes
    assert expected.n_notes != PianoRoll.decode(sample_probabilities(generator, 256, 3), min_length=2).n_notes
    # A model without one decodes as the trainer evaluates; each option given replaces one setting.
    assert generate(tmp_path / "b.mid", checkpoint=models["pt"], seed=3).decoding == Decoding()
    mixed = generate(tmp_path / "c.mid", checkpoint=calibrated, seed=3, threshold=0.5, min_length=2)
    assert mixed.decoding == Decoding(0.5, 0.9, 2)
    assert "decoding: threshold 0.3, onset threshold 0.9, min length 1" in run("--checkpoint", calibrated, tmp_path / "d.mid")
    broken = tmp_path / "broken.safetensors"
    save_generator(broken, generator, {"dataset_config": DATASET_CONFIG, "decoding": {"threshold": 2}})
    result = CliRunner().invoke(cli, ["generate", "--checkpoint", str(broken), str(tmp_path / "e.mid")])
    assert result.exit_code == 1 and "saved decoding is not valid: threshold must lie" in result.output
    assert not (tmp_path / "e.mid").exists()


def test_fill_sounds_steps_the_threshold_left_silent(tmp_path):
    """The bundled model decoded sparsely (threshold 0.8), then with ``--fill``: the gaps close."""
    def sounding_steps(path):
        return int(PianoRoll.from_midi(path).cells.any(axis=0).sum())

    run("--seed", 3, "--threshold", 0.8, tmp_path / "sparse.mid")
    out = run("--seed", 3, "--threshold", 0.8, "--fill", 0.3, tmp_path / "filled.mid")
    assert "min length 2, fill 0.3" in out
    assert sounding_steps(tmp_path / "filled.mid") > sounding_steps(tmp_path / "sparse.mid") + 10


@pytest.mark.parametrize(
    "args, message",
    [
        (["--instrument", "violn"], "did you mean: Violin"),
        (["--fill", "1"], "--fill"),
        (["--threshold", "1.5"], "--threshold"),
        (["--n", "0"], "--n"),
        (["--min-length", "0"], "--min-length"),
        (["--onset-threshold", "0"], "--onset-threshold"),
        (["--checkpoint", "x.pt", "--run", "runs/x"], "not both"),
    ],
)
def test_bad_options(args, message, tmp_path):
    result = CliRunner().invoke(cli, ["generate", *args, str(tmp_path / "x.mid")])
    assert result.exit_code == 2 and message in result.output


def test_generate_stays_lean(models, tmp_path):
    """The start-up budget: no music21, TensorBoard, dataset or trainer code behind `apollo generate`."""
    code = f"""
import sys
from click.testing import CliRunner
from apollo.cli.main import cli
result = CliRunner().invoke(cli, ["generate", "--checkpoint", {str(models['pt'])!r}, {str(tmp_path / 'x.mid')!r}])
assert result.exit_code == 0, result.output
heavy = [m for m in ("music21", "tensorboard", "apollo.dataset", "apollo.train", "apollo.evaluate", "PIL") if m in sys.modules]
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_shipped_bundled_model_makes_a_violin_piece_with_no_run(tmp_path, monkeypatch):
    """Right after install: `apollo generate --instrument violin out.mid --wav`, no training."""
    assert generate_module.BUNDLED_MODEL.is_file(), "the package ships apollo/bundled/generator.safetensors"
    monkeypatch.chdir(tmp_path)  # no runs/ here
    output = run("--instrument", "violin", "--seed", 0, "--wav", "out.mid")
    assert "(the bundled model: no run under runs/)" in output
    assert program_and_tempo(tmp_path / "out.mid")[0] == [40]
    notes = sum(m.type == "note_on" and m.velocity > 0 for m in mido.MidiFile(tmp_path / "out.mid").tracks[0])
    assert notes > 20
    with wave.open(str(tmp_path / "out.wav")) as wav:
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    assert np.abs(frames).max() > 1000  # audible, not silence


def test_a_piece_ends_on_purpose_holding_its_last_bars_first_chord():
    # Bar 1: a scale; bar 2: a rest on beat 1, then C-E-G at step 20 and a run that would go on.
    notes = [(60 + i, i * 2, i * 2 + 2) for i in range(8)]
    notes += [(60, 20, 24), (64, 20, 22), (67, 20, 24), (72, 24, 26), (74, 26, 30), (71, 30, 32)]
    pitch, start, end = (np.array(x) for x in zip(*notes))
    roll = PianoRoll.from_notes(pitch, start, end, n_steps=32)
    held = generate_module.hold_last_chord(roll, 16)
    assert np.array_equal(held.cells[:, :20], roll.cells[:, :20])  # all before the chord is untouched
    got = {(int(p), int(s), int(e)) for p, s, e in zip(*held.notes())}
    assert {(60, 20, 32), (64, 20, 32), (67, 20, 32)} <= got and all(s < 20 or s == 20 for _, s, _ in got)
    assert generate_module.hold_last_chord(PianoRoll.from_notes(pitch[:8], start[:8], end[:8], n_steps=32), 16).n_notes == 8


def test_ending_none_keeps_the_models_music_and_hold_changes_only_the_last_bar(models, tmp_path):
    run("--checkpoint", models["pt"], "--seed", 4, "--ending", "none", tmp_path / "none.mid")
    run("--checkpoint", models["pt"], "--seed", 4, tmp_path / "hold.mid")
    none, hold = PianoRoll.from_midi(tmp_path / "none.mid"), PianoRoll.from_midi(tmp_path / "hold.mid")
    bar = 16
    n = min(none.n_steps, hold.n_steps)
    cut = n - bar if n % bar == 0 else n // bar * bar
    assert np.array_equal(none.cells[:, :cut], hold.cells[:, :cut])
