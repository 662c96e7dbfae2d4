"""Overlap, diversity, memorization, compare(), loading, the baselines and ``apollo evaluate``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from apollo.cli.main import cli
from click.testing import CliRunner

from apollo import evaluate
from apollo.errors import ApolloError
from apollo.markov import MarkovChain, random_rolls
from apollo.metrics import METRICS
from apollo.mgeval import FEATURES
from apollo.roll import HELD, ONSET, SILENT, Grid, PianoRoll


def piece(seed: int, n_steps: int = 64, low: int = 48) -> PianoRoll:
    """Three voices of eighth, quarter and half notes with random pitches: a chunk of "music"."""
    rng = np.random.default_rng(seed)
    notes = []
    for voice in range(3):
        t = 0
        while t < n_steps:
            length = int(rng.choice([2, 4, 4, 8]))
            notes.append((low + 8 * voice + int(rng.integers(0, 8)), t, min(t + length, n_steps)))
            t += length
    pitch, start, end = (np.array(x) for x in zip(*notes))
    return PianoRoll.from_notes(pitch, start, end, n_steps=n_steps)


def transposed(roll: PianoRoll, k: int) -> PianoRoll:
    return PianoRoll(np.roll(roll.cells, k, axis=0), roll.grid, roll.tempo)


# -- overlap ----------------------------------------------------------------------------------


def test_overlap_is_the_dice_coefficient_of_sounding_cells():
    a = np.zeros((64, 16), dtype=np.uint8)
    a[10, 0:4] = [ONSET, HELD, HELD, HELD]
    b = a.copy()
    b[10, 2:4] = [ONSET, HELD]  # re-struck: same sounding cells, overlap still 1
    c = np.zeros_like(a)
    c[10, 2:6] = [ONSET, HELD, HELD, HELD]  # two of four cells shared
    rolls = [PianoRoll(x) for x in (a, b, c)]
    o = evaluate.overlap_matrix(rolls, rolls + [PianoRoll(np.zeros_like(a))])
    assert o[0, 1] == 1.0 and o[0, 2] == 0.5 and o[0, 3] == 0.0
    silent = [PianoRoll(np.zeros_like(a))] * 2
    assert evaluate.overlap_matrix(silent, silent)[0, 1] == 1.0


def test_diversity_and_near_duplicates():
    a, b, c = piece(1), piece(2), piece(3)
    assert evaluate.diversity([a, a, a]) == 0.0
    assert evaluate.near_duplicate_rate([a, a, b]) == pytest.approx(2 / 3)
    assert evaluate.near_duplicate_rate([a, b, c]) == 0.0
    d = 1 - evaluate.overlap_matrix([a, b, c], [a, b, c])
    assert evaluate.diversity([a, b, c]) == pytest.approx((d[0, 1] + d[0, 2] + d[1, 2]) / 3)
    assert math.isnan(evaluate.diversity([a]))


def test_a_transposed_training_chunk_is_found_with_overlap_one():
    training = [piece(i) for i in range(30)]
    samples = [transposed(training[7], 3), transposed(training[12], -12), piece(99)]
    best = evaluate.best_overlap(samples, training)
    assert best[0] == pytest.approx(1.0) and best[1] == pytest.approx(1.0)
    assert best[2] < 0.5
    assert evaluate.best_overlap(samples[:1], training, shifts=[0])[0] < 0.5  # only found by transposing
    result = evaluate.memorization(samples, training)
    assert result["memorization_rate"] == pytest.approx(2 / 3)
    assert result["max_training_overlap"] == pytest.approx(1.0)


def test_memorization_blocks_give_the_same_answer(monkeypatch):
    training = [piece(i) for i in range(20)]
    samples = [transposed(training[i], i - 5) for i in range(10)] + [piece(50 + i) for i in range(5)]
    whole = evaluate.best_overlap(samples, training)
    monkeypatch.setattr(evaluate, "_BLOCK", 3)
    monkeypatch.setattr(evaluate, "_SAMPLE_FLOATS", 25 * 64 * 64 * 2)  # two samples per product
    assert evaluate.best_overlap(samples, training) == pytest.approx(whole)
    assert (whole[:10] == pytest.approx(1.0)) and (whole[10:] < 0.8).all()


def test_a_subset_keeps_order_and_repeats_with_its_seed():
    rolls = [PianoRoll(np.full((64, 16), i % 2, dtype=np.uint8)) for i in range(50)]
    assert evaluate.subset(rolls, None, np.random.default_rng(0)) is rolls
    assert evaluate.subset(rolls, 50, np.random.default_rng(0)) is rolls

    def positions(seed: int) -> list[int]:
        return [next(i for i, r in enumerate(rolls) if r is p) for p in evaluate.subset(rolls, 10, np.random.default_rng(seed))]

    assert len(positions(0)) == 10 and positions(0) == sorted(positions(0))
    assert positions(0) == positions(0) != positions(1)


def test_rolls_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="shape"):
        evaluate.diversity([piece(1, n_steps=64), piece(2, n_steps=32)])


# -- compare ----------------------------------------------------------------------------------


def test_compare_returns_every_promised_value():
    generated, reference, training = [piece(i) for i in range(12)], [piece(i) for i in range(100, 130)], [
        piece(i) for i in range(200, 240)
    ]
    values = evaluate.compare(generated, reference, training)
    assert all(isinstance(v, float) for v in values.values())
    for name in ("mean_oa", "diversity", "near_duplicate_rate", "memorization_rate", *METRICS):
        assert name in values and f"real/{name}" in values or name == "mean_oa"
    for name in FEATURES:
        assert 0 <= values[f"oa/{name}"] <= 1 and values[f"kl/{name}"] >= 0
    assert values["mean_oa"] == pytest.approx(np.mean([values[f"oa/{n}"] for n in FEATURES]))
    assert values["memorization_rate"] == 0.0 and values["real/memorization_rate"] == 0.0
    assert "memorization_rate" not in evaluate.compare(generated, reference)


def test_compare_sees_a_good_set_a_copying_set_and_noise():
    reference, training = [piece(i) for i in range(100, 160)], [piece(i) for i in range(200, 260)]
    good = evaluate.compare([piece(i) for i in range(40)], reference, training)
    copies = evaluate.compare([transposed(training[i], 2) for i in range(40)], reference, training)
    noise = evaluate.compare(random_rolls(40, training, seed=1), reference, training)
    assert good["mean_oa"] > 0.85
    assert copies["memorization_rate"] == 1.0 and good["memorization_rate"] == 0.0
    assert noise["mean_oa"] < 0.4 < good["mean_oa"]
    for name in ("polyphony", "pitch_range", "used_pitch_classes"):
        assert good[name] == pytest.approx(good[f"real/{name}"], rel=0.1)
    collapsed = evaluate.compare([piece(0)] * 40, reference)
    assert collapsed["diversity"] == 0.0 and collapsed["near_duplicate_rate"] == 1.0


def test_compare_caches_the_reference_side_by_content():
    reference = [piece(i) for i in range(100, 120)]
    first = evaluate.compare([piece(i) for i in range(8)], reference)
    copy = [PianoRoll(r.cells.copy(), r.grid, r.tempo) for r in reference]  # same content, new objects
    assert evaluate.compare([piece(i) for i in range(8)], copy) == first
    changed = copy[:-1] + [piece(7)]
    assert evaluate.compare([piece(i) for i in range(8)], changed)["real/note_density"] != first["real/note_density"]


def test_report_checks_within_tolerance_and_writes_null_for_undefined():
    reference = [piece(i) for i in range(100, 120)]
    silent = [PianoRoll(np.zeros((64, 64), dtype=np.uint8))] * 3
    rep = evaluate.report(silent, reference)
    assert rep["checks"]["polyphony"]["generated"] is None and rep["checks"]["polyphony"]["within_tolerance"] is False
    assert rep["checks"]["empty_bar_rate"]["generated"] == 1.0
    json.dumps(rep, allow_nan=False)  # strictly valid JSON
    same = evaluate.report(reference, reference)
    assert all(c["within_tolerance"] for c in same["checks"].values())
    assert "mean OA" in evaluate.format_report(same)


# -- loading ----------------------------------------------------------------------------------


def test_chunk_pads_short_pieces_and_cuts_long_ones():
    assert [c.n_steps for c in evaluate.chunk(piece(1, n_steps=40), 64)] == [64]
    assert len(evaluate.chunk(piece(1, n_steps=64 * 3 + 10), 64)) == 3  # 10-step overhang dropped
    chunks = evaluate.chunk(piece(1, n_steps=64 * 2 + 40), 64)
    assert len(chunks) == 3 and (chunks[2].cells[:, 40:] == SILENT).all()


def test_midi_folder_round_trip_keeps_trailing_silence(tmp_path):
    rolls = [piece(i, n_steps=128) for i in range(3)]
    rolls[0] = rolls[0].slice(0, 64).pad(256)  # three silent bars... at the end: MIDI forgets them
    for i, r in enumerate(rolls):
        r.pad(256).to_midi(tmp_path / f"{i}.mid")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.MID").write_bytes(b"MThd nonsense")
    loaded = evaluate.load_rolls(tmp_path, n_steps=256)
    assert len(loaded.rolls) == 3 and {r.n_steps for r in loaded.rolls} == {256}
    assert (loaded.rolls[0].cells == rolls[0].cells).all()
    assert METRICS["empty_bar_rate"](loaded.rolls[0]) == 0.75
    assert [s["file"] for s in loaded.source["skipped"]] == ["sub/broken.MID"]


def test_loading_bad_paths_raises_apollo_errors(tmp_path):
    with pytest.raises(ApolloError, match="no such file"):
        evaluate.load_rolls(tmp_path / "missing")
    with pytest.raises(ApolloError, match="no MIDI files"):
        evaluate.load_rolls(tmp_path)
    (tmp_path / "bad.mid").write_bytes(b"not midi")
    with pytest.raises(ApolloError, match="could be read"):
        evaluate.load_rolls(tmp_path)


# -- baselines --------------------------------------------------------------------------------


def test_markov_chain_follows_only_seen_transitions():
    rolls = [piece(i, n_steps=32) for i in range(4)]
    chain = MarkovChain.fit(rolls)
    columns = [[c.tobytes() for c in r.cells.T] for r in rolls]
    seen = {pair for col in columns for pair in zip(col[:-1], col[1:])}
    starts = {col[0] for col in columns}
    has_successor = {a for a, _ in seen}
    for s in chain.sample(6, 64, seed=0):
        assert s.cells.shape == (Grid().n_pitches, 64)
        col = [c.tobytes() for c in s.cells.T]
        assert col[0] in starts
        for a, b in zip(col[:-1], col[1:]):
            assert (a, b) in seen or (a not in has_successor and b in starts)  # a restart


def test_markov_chain_replays_a_roll_whose_columns_are_all_different():
    steps = np.arange(32)
    line = PianoRoll.from_notes(40 + steps, steps, steps + 1, n_steps=32)  # a rising run of sixteenths
    chain = MarkovChain.fit([line])
    assert chain.n_states == 32
    assert all((s.cells == line.cells).all() for s in chain.sample(3, 32, seed=1))


def test_markov_chain_restarts_at_dead_ends_and_is_reproducible():
    rolls = [piece(i, n_steps=32) for i in range(5)]
    chain = MarkovChain.fit(rolls)
    a, b = chain.sample(3, 100, seed=4), chain.sample(3, 100, seed=4)  # longer than any training roll
    assert all((x.cells == y.cells).all() for x, y in zip(a, b))
    assert all(x.n_steps == 100 and x.n_notes > 0 for x in a)
    assert chain.n_states <= sum(r.n_steps for r in rolls)


def test_random_rolls_match_each_rows_density():
    like = [piece(i) for i in range(20)]
    rolls = random_rolls(200, like, seed=0)
    target = np.mean([(r.cells > 0).mean(axis=1) for r in like], axis=0)
    got = np.mean([(r.cells > 0).mean(axis=1) for r in rolls], axis=0)
    assert np.abs(got - target).max() < 0.02
    assert ((got > 0) == (target > 0)).all()  # silent rows stay silent
    assert (random_rolls(2, like, seed=3)[1].cells == random_rolls(2, like, seed=3)[1].cells).all()


# -- the command line -------------------------------------------------------------------------


def write_midi(folder, rolls):
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rolls):
        r.to_midi(folder / f"{i:03d}.mid")
    return folder


def test_cli_evaluates_midi_folders_and_writes_json(tmp_path):
    generated = write_midi(tmp_path / "gen", [piece(i, n_steps=256) for i in range(6)])
    reference = write_midi(tmp_path / "ref", [piece(i, n_steps=512) for i in range(100, 106)])
    result = CliRunner().invoke(
        cli, ["evaluate", str(generated), "--reference", str(reference), "--json", str(tmp_path / "e.json")]
    )
    assert result.exit_code == 0, result.output
    assert "mean OA" in result.output and "not measured" in result.output
    rep = json.loads((tmp_path / "e.json").read_text())
    # Generated pieces are cut into chunks (one each here); real ones into every whole window, one per bar.
    assert rep["generated"]["n"] == 6 and rep["reference"]["n"] == 6 * (1 + (512 - 256) // 16)
    assert rep["endings"]["real_pieces_end_inside_window"] == 0.0
    assert 0 <= rep["values"]["mean_oa"] <= 1 and rep["training"] is None


def test_cli_bad_path_is_one_line(tmp_path):
    reference = write_midi(tmp_path / "ref", [piece(1)])
    for args in ([str(tmp_path / "nope"), "-r", str(reference)], [str(reference), "-r", str(tmp_path / "nope")]):
        result = CliRunner().invoke(cli, ["evaluate", *args])
        assert result.exit_code == 1
        assert result.output.strip().count("\n") == 0 and "nope: no such file" in result.output


def test_cli_on_real_chorales(chorale_dir, tmp_path):
    from apollo.evaluate import load_rolls

    real = load_rolls(chorale_dir).rolls
    chain = MarkovChain.fit(real[: len(real) // 2])
    generated = write_midi(tmp_path / "markov", chain.sample(8, 256, seed=0))
    result = CliRunner().invoke(cli, ["evaluate", str(generated), "-r", str(chorale_dir), "--limit", "16"])
    assert result.exit_code == 0, result.output
    assert "used_pitch_classes" in result.output


# -- against a dataset ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chorale_dataset(chorale_dir, tmp_path_factory):
    from apollo.preprocess import preprocess

    out = tmp_path_factory.mktemp("datasets") / "chorales"
    preprocess(chorale_dir, out, workers=1)
    return out


def test_ceiling_uses_the_training_split_and_skips_memorization(chorale_dataset):
    rep = evaluate.evaluate_paths(chorale_dataset, chorale_dataset, limit=20)
    assert rep["generated"]["split"] == "train" and rep["reference"]["split"] == "val"
    assert rep["training"] is None and "training split" in rep["training_note"]
    assert rep["values"]["mean_oa"] > 0.5


def test_copies_of_training_chunks_are_caught_through_the_cli(chorale_dataset, tmp_path):
    from apollo.dataset import RollDataset

    train = RollDataset(chorale_dataset, split="train").rolls()
    samples = MarkovChain.fit(train).sample(6, train[0].n_steps, seed=0)
    samples += [transposed(train[3], 2), transposed(train[5], -4)]  # two copies, transposed
    folder = write_midi(tmp_path / "samples", samples)
    result = CliRunner().invoke(
        cli, ["evaluate", str(folder), "-r", str(chorale_dataset), "--json", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 0, result.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["training"]["n"] == len(train)
    assert rep["values"]["max_training_overlap"] == pytest.approx(1.0)
    assert rep["values"]["memorization_rate"] >= 2 / 8
    assert "memorization rate" in result.output


def test_real_stretches_are_whole_windows_inside_the_piece():
    r = piece(0, n_steps=300)  # ends in bar 19 (steps 288-299)
    cut = evaluate.stretches(r, 256, 16)
    assert len(cut) == 4 and all(c.n_steps == 256 for c in cut)
    assert np.array_equal(cut[3].cells, r.slice(48, 304).pad(256).cells)
    assert evaluate.stretches(piece(0, n_steps=200), 256, 16) == []  # shorter than a window: none


def test_a_rate_near_zero_is_within_tolerance_when_close_in_absolute_terms():
    assert evaluate._within("parallel_rate", 0.015, 0.012, 0.1)  # 25 % off, but 0.003 apart
    assert not evaluate._within("parallel_rate", 0.05, 0.012, 0.1)
    assert not evaluate._within("voice_step", 2.3, 2.0, 0.1)  # not a rate: 15 % off
    assert evaluate._within("voice_step", 2.1, 2.0, 0.1)


def test_endings_count_silent_last_bars_and_real_pieces_shorter_than_a_window(tmp_path):
    generated = [piece(1, n_steps=256), piece(2, n_steps=200).pad(256)]  # the second stops in bar 13
    reference = write_midi(tmp_path / "ref", [piece(3, n_steps=512), piece(4, n_steps=128)])
    ref = evaluate.load_rolls(reference, real=True)
    assert ref.source["shorter_than_window"] == 1
    e = evaluate.endings(generated, ref)
    assert e == {"generated_silent_last_bar": 0.5, "real_pieces_end_inside_window": 0.5}


def test_the_test_split_is_a_reference_of_whole_stretches_and_endings_are_reported(chorale_dataset, tmp_path):
    from apollo.dataset import RollDataset, read_manifest

    train = RollDataset(chorale_dataset, split="train").rolls()
    folder = write_midi(tmp_path / "samples", MarkovChain.fit(train).sample(6, train[0].n_steps, seed=1))
    result = CliRunner().invoke(cli, ["evaluate", str(folder), "-r", str(chorale_dataset), "--split", "test",
                                      "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "silent last bar" in result.output and "real pieces ending inside a window" in result.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["reference"]["split"] == "test" and rep["reference"]["n"] == len(RollDataset(chorale_dataset, "test"))
    assert rep["values"]["real/empty_bar_rate"] == 0.0  # real stretches, never padding
    files = read_manifest(chorale_dataset)["files"]
    lengths = [n for n, split in zip(files["n_steps"], files["split"]) if split == "test"]
    assert rep["endings"]["real_pieces_end_inside_window"] == np.mean([n < 256 for n in lengths])
