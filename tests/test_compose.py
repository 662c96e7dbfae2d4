"""Starting from your own music (apollo.compose, apollo.inversion, `apollo continue/vary/infill/harmonize`).

Real Bach chorales (music21's corpus, as MIDI), the real bundled generator and real files. Most
tests use a cheap search (10 steps, 2 starts): what they check (given notes back exactly, lengths,
seeds, seams, files) holds for any search; the inversion test and the command-line tests use the
default one.
"""

from __future__ import annotations

import math
from pathlib import Path

import mido
import numpy as np
import pytest
import torch
from apollo.cli.main import cli
from click.testing import CliRunner, Result

from apollo.compose import Composer, compose_file, parse_bars, read_piece, top_line
from apollo.errors import UsageError
from apollo.generate import numbered_paths
from apollo.inversion import Search, invert, join_seams, note_f1
from apollo.midi import read_notes, write_notes
from apollo.roll import HELD, ONSET, SILENT, Grid, PianoRoll

CHEAP = Search(steps=10, restarts=2)
BAR = 16  # steps in a bar of the bundled model's grid (4/4, 4 steps a beat)

# Chorales chosen for their shapes (read on the model's grid, bars counted from step 0):
SHORT = "bwv3.6.mid"  # 8 whole bars (128 steps), soprano never rests: one window
RAGGED = "bwv6.6.mid"  # 132 steps: 8 bars and one beat
TIED = "bwv11.6.mid"  # 360 steps (more than a window); notes tied over bar lines 1, 2, 4, 5, ...
LONG = "bwv17.7.mid"  # 540 steps, 34 bars


@pytest.fixture(scope="module")
def composer() -> Composer:
    return Composer.load("bundled", search=CHEAP)


@pytest.fixture(scope="module")
def rolls(chorale_dir, composer) -> dict[str, PianoRoll]:
    return {name: read_piece(chorale_dir / name, composer.spec.grid).roll for name in (SHORT, RAGGED, TIED, LONG)}


def triples(roll: PianoRoll) -> set[tuple[int, int, int]]:
    """A roll's notes as a set of (pitch, start, end)."""
    return set(zip(*(a.tolist() for a in roll.notes())))


def file_triples(path: Path) -> set[tuple[int, int, int]]:
    notes = read_notes(path, 4)
    return set(zip(notes.pitch.tolist(), notes.start.tolist(), notes.end.tolist()))


def n_bars(roll: PianoRoll) -> int:
    return math.ceil(roll.n_steps / BAR)


def bars_differing(a: PianoRoll, b: PianoRoll) -> int:
    """Bars whose cells differ (each bar read on its own, so a note struck anew at a bar line after a
    changed bar counts as the same note)."""
    n = max(n_bars(a), n_bars(b))
    a, b = a.pad(n * BAR), b.pad(n * BAR)
    return sum(not np.array_equal(a.slice(i * BAR, (i + 1) * BAR).cells, b.slice(i * BAR, (i + 1) * BAR).cells)
               for i in range(n))


# -- continue ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [SHORT, RAGGED, LONG])
def test_continue_keeps_every_note_and_adds_the_bars_asked_for(composer, rolls, name):
    roll = rolls[name]
    out = composer.continue_(roll, 4, seed=0)
    assert triples(roll) <= triples(out)  # 100 % of the given notes, each with its own start and end
    assert out.n_steps == (n_bars(roll) + 4) * BAR
    new = out.cells[:, n_bars(roll) * BAR :]
    assert (new == ONSET).sum() >= 4  # music in the new bars, not silence
    # Nothing of the input changed: the cells up to its end are the input's.
    assert np.array_equal(out.cells[:, : roll.n_steps], roll.cells)


def test_continue_is_deterministic_for_a_seed(composer, rolls):
    roll = rolls[SHORT]
    a, b, c = (composer.continue_(roll, 2, seed=s) for s in (5, 5, 6))
    assert np.array_equal(a.cells, b.cells)
    assert not np.array_equal(a.cells, c.cells)
    assert triples(roll) <= triples(c)


def test_continue_needs_a_bar(composer, rolls):
    with pytest.raises(UsageError, match="--bars"):
        composer.continue_(rolls[SHORT], 0)


# -- infill --------------------------------------------------------------------------------------


def test_infill_keeps_every_note_outside_the_bars(composer, rolls):
    roll = rolls[TIED]  # longer than a window, with notes tied across the edges of bars 2-4
    first, last = 2, 4
    lo, hi = (first - 1) * BAR, last * BAR
    out = composer.infill(roll, first, last, seed=0)
    assert out.n_steps == roll.n_steps and out.grid == roll.grid and out.tempo == roll.tempo
    outside = {n for n in triples(roll) if n[2] <= lo or n[1] >= hi}
    assert outside <= triples(out)
    # A note crossing into the bars is cut at their edge, and one crossing out begins there:
    # nothing made runs on from (or into) a given note.
    crossing_in = {(p, s, lo) for p, s, e in triples(roll) if s < lo < e}
    crossing_out = {(p, hi, e) for p, s, e in triples(roll) if s < hi < e}
    assert crossing_in and crossing_out
    assert crossing_in | crossing_out <= triples(out)
    # Outside the bars there is nothing else: all that is made lies inside them.
    assert {n for n in triples(out) if n[2] <= lo or n[1] >= hi} == outside | crossing_in | crossing_out
    assert (out.cells[:, lo:hi] == ONSET).sum() > 0
    assert not np.array_equal(out.cells[:, lo:hi], roll.cells[:, lo:hi])


def test_infill_of_bars_outside_the_piece_is_a_usage_error(composer, rolls):
    roll = rolls[SHORT]  # 8 bars
    for first, last in ((9, 9), (7, 9), (99, 100)):
        with pytest.raises(UsageError, match="outside the piece"):
            composer.infill(roll, first, last)
    out = composer.infill(roll, 8, 8)  # the last bar is inside
    assert out.n_steps == roll.n_steps
    assert {n for n in triples(roll) if n[2] <= 7 * BAR} <= triples(out)


def test_infill_of_a_last_bar_that_is_not_whole(composer, rolls):
    roll = rolls[RAGGED]  # 8 bars and a beat: the beat is bar 9
    out = composer.infill(roll, 9, 9, seed=0)
    assert out.n_steps == roll.n_steps == 8 * BAR + 4
    assert {n for n in triples(roll) if n[2] <= 8 * BAR} <= triples(out)
    with pytest.raises(UsageError):
        composer.infill(roll, 10, 10)


@pytest.mark.parametrize("text, bars", [("5-8", (5, 8)), ("5", (5, 5)), (" 2 - 3 ", (2, 3)), ("1-1", (1, 1))])
def test_parse_bars(text, bars):
    assert parse_bars(text) == bars


@pytest.mark.parametrize("text", ["8-5", "0-2", "x", "", "-3", "1-2-3", "2-x", "1.5"])
def test_parse_bars_refuses(text):
    with pytest.raises(UsageError, match="--bars"):
        parse_bars(text)


# -- harmonize -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, n_steps", [(SHORT, 128), (LONG, 512)])
def test_harmonize_keeps_the_melody_as_the_top_voice(composer, rolls, name, n_steps):
    melody = top_line(rolls[name].slice(0, n_steps))  # whole bars
    assert (melody.cells > SILENT).any(axis=0).all()  # a soprano that never rests
    assert (melody.cells > SILENT).sum(axis=0).max() == 1  # one line
    out = composer.harmonize(melody, seed=0)
    assert out.n_steps == melody.n_steps
    assert triples(top_line(out)) == triples(melody)
    # Nothing sounds above the melody, and there are voices below it.
    height = melody.n_pitches - 1 - np.argmax((melody.cells > SILENT)[::-1], axis=0)
    rows = np.arange(out.n_pitches)[:, None]
    assert not ((out.cells > SILENT) & (rows > height[None, :])).any()
    below = triples(out) - triples(melody)
    assert len(below) >= len(triples(melody))
    assert all(p < melody.grid.lowest_pitch + height[s] for p, s, _ in below)


def test_harmonizing_a_piece_with_chords_uses_its_top_line(composer, rolls):
    chorale = rolls[SHORT]
    assert np.array_equal(composer.harmonize(chorale, seed=3).cells, composer.harmonize(top_line(chorale), seed=3).cells)


def test_harmonize_adds_nothing_after_the_melody_ends(composer, rolls):
    melody = top_line(rolls[RAGGED])  # ends one beat into bar 9: harmonize pads it to 9 whole bars
    out = composer.harmonize(melody, seed=0)
    assert not {n for n in triples(out) if n[1] >= melody.n_steps}  # nothing struck after the tune has ended
    assert triples(top_line(out)) == triples(melody)


# -- vary ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [SHORT, LONG])
def test_a_small_variation_changes_a_few_bars_and_keeps_the_rest(composer, rolls, name):
    roll = rolls[name]
    amount = 0.1
    out = composer.vary(roll, amount, seed=0)
    assert out.n_steps == n_bars(roll) * BAR
    changed = bars_differing(roll, out)
    assert 1 <= changed <= max(1, round(amount * n_bars(roll)))


def test_a_free_variation_differs_in_most_bars(composer, rolls):
    roll = rolls[SHORT]
    out = composer.vary(roll, 1.0, seed=0)
    assert bars_differing(roll, out) >= 0.75 * n_bars(roll)


def test_vary_refuses_an_amount_outside_0_1(composer, rolls):
    for amount in (0, -0.5, 1.5):
        with pytest.raises(UsageError, match="--amount"):
            composer.vary(rolls[SHORT], amount)


# -- the seam and the score ----------------------------------------------------------------------


def test_join_seams_strikes_a_note_anew_where_given_and_made_music_meet():
    S, H, O = SILENT, HELD, ONSET
    given = np.zeros((4, 8), dtype=bool)
    given[:, :4] = True  # steps 0-3 given, 4-5 made, 6-7 given
    given[:, 6:] = True
    cells = np.array([
        [S, S, O, H, H, H, S, S],  # a given note held on into made cells: the made part is struck anew
        [S, S, S, S, O, H, H, H],  # a made note held on into given cells: the given part is struck anew
        [O, H, H, S, O, H, S, S],  # notes inside their regions: untouched
        [O, H, H, H, O, H, O, H],  # already struck at each seam: untouched
    ], dtype=np.uint8)
    before = cells.copy()
    joined = join_seams(cells, given)
    expected = cells.copy()
    expected[0, 4] = ONSET
    expected[1, 6] = ONSET
    assert np.array_equal(joined, expected)
    assert np.array_equal(cells, before)  # the input is not changed

    grid = Grid()
    roll = PianoRoll(np.pad(joined, ((0, grid.n_pitches - 4), (0, 0))), grid)
    low = grid.lowest_pitch
    assert {(low, 2, 4), (low, 4, 6), (low + 1, 4, 6), (low + 1, 6, 8)} <= triples(roll)


def test_join_seams_per_pitch():
    """Given cells may differ from pitch to pitch (harmonize): a seam is where a row's own mask changes."""
    given = np.array([[True, True, True, True], [False, False, True, True]])
    cells = np.array([[ONSET, HELD, HELD, HELD], [ONSET, HELD, HELD, HELD]], dtype=np.uint8)
    joined = join_seams(cells, given)
    assert joined.tolist() == [[ONSET, HELD, HELD, HELD], [ONSET, HELD, ONSET, HELD]]


def test_note_f1():
    grid = Grid()

    def roll(*notes):
        pitch, start, end = (np.array(x, dtype=int) for x in zip(*notes)) if notes else (np.array([], dtype=int),) * 3
        return PianoRoll.from_notes(pitch, start, end, grid, 100, n_steps=32)

    a = roll((60, 0, 4), (64, 4, 8), (67, 8, 16))
    assert note_f1(a, a) == 1.0
    assert note_f1(a, roll((61, 0, 4), (64, 5, 8))) == 0.0
    assert note_f1(roll(), roll()) == 1.0
    assert note_f1(a, roll()) == 0.0 and note_f1(roll(), a) == 0.0
    assert note_f1(a, roll((60, 0, 2), (64, 4, 8))) == pytest.approx(2 * 2 / 5)  # a length does not count


# -- inversion -----------------------------------------------------------------------------------


def test_invert_finds_a_piece_the_generator_made(composer):
    """The default search finds a generated piece again far better than chance: the note F1 of what it
    finds against the target is well above the F1 of other pieces the generator makes."""
    generator, spec = composer.generator, composer.spec

    def made(seed):
        noise = torch.randn(1, *generator.config.noise_shape, generator=torch.Generator().manual_seed(seed))
        with torch.inference_mode():
            probabilities = generator(noise)[0].numpy()
        return spec.decoding.decode(probabilities, spec.encoding, spec.grid, spec.tempo)

    target = made(1000)
    known = np.ones((spec.grid.n_pitches, generator.config.n_steps), dtype=bool)
    found = invert(generator, target.encode(spec.encoding), known, seed=0)
    assert found.noise.shape == generator.config.noise_shape
    again = spec.decoding.decode(found.probabilities, spec.encoding, spec.grid, spec.tempo)
    chance = max(note_f1(made(2000 + k), target) for k in range(3))
    f1 = note_f1(again, target)
    assert f1 >= 0.6 and f1 >= chance + 0.4, (f1, chance)


def test_invert_refuses_a_window_of_the_wrong_size(composer):
    generator = composer.generator
    planes = np.zeros((generator.config.roll_channels, generator.config.n_pitches, 128))
    with pytest.raises(ValueError, match="window"):
        invert(generator, planes, np.ones(planes.shape[1:], dtype=bool), search=CHEAP)


# -- reading a piece and writing it back ---------------------------------------------------------


@pytest.mark.parametrize("octaves", [2, -2])
def test_a_piece_outside_the_models_range_is_moved_by_octaves_and_back(chorale_dir, composer, tmp_path, octaves):
    chorale = read_piece(chorale_dir / SHORT, composer.spec.grid)
    assert chorale.shift == 0
    up = 12 * octaves
    high = tmp_path / "high.mid"
    pitch, start, end = chorale.roll.notes()
    write_notes(high, pitch + up, start, end, tempo=90)
    given = {(p + up, s, e) for p, s, e in triples(chorale.roll)}
    grid = composer.spec.grid
    outside = [p for p, _, _ in given if not grid.lowest_pitch <= p <= grid.highest_pitch]
    assert len(outside) >= 10

    piece = read_piece(high, composer.spec.grid)
    assert piece.shift != 0 and piece.shift % 12 == 0 and piece.folded == 0
    assert np.sign(piece.shift) == -np.sign(up) and abs(piece.shift) <= abs(up)  # whole octaves, no further than needed
    assert triples(piece.roll) == {(p + piece.shift, s, e) for p, s, e in given}
    assert any("moved" in note for note in piece.notes)

    out = tmp_path / "out.mid"
    result = compose_file("continue", high, out, bars=2, checkpoint="bundled", search=CHEAP)
    assert result.input.shift == piece.shift
    assert read_notes(out, 4).tempo == pytest.approx(90, abs=0.01)  # the input's tempo, not the model's
    written = file_triples(out)
    assert given <= written  # where the input sounded, not where the model worked
    assert any(not grid.lowest_pitch <= p <= grid.highest_pitch for p, _, _ in written)


# -- from file to file ---------------------------------------------------------------------------


def test_compose_file_harmonizes_the_top_line_of_chords_and_says_so(chorale_dir, tmp_path):
    out = tmp_path / "harmonized.mid"
    source = chorale_dir / SHORT
    result = compose_file("harmonize", source, out, checkpoint="bundled", search=CHEAP)
    assert any("has chords" in note and str(source) in note for note in result.notes)
    melody = top_line(PianoRoll.from_midi(source))
    written = PianoRoll.from_midi(out)
    assert triples(top_line(written)) == triples(melody)
    assert written.n_notes > 2 * melody.n_notes

    # A melody that is one line is harmonized without a word about chords.
    tune = tmp_path / "tune.mid"
    melody.to_midi(tune)
    result = compose_file("harmonize", tune, tmp_path / "again.mid", checkpoint="bundled", search=CHEAP)
    assert not any("chords" in note for note in result.notes)


def test_compose_file_writes_numbered_variations(chorale_dir, tmp_path):
    out = tmp_path / "var.mid"
    result = compose_file("vary", chorale_dir / SHORT, out, n=3, amount=0.25, seed=4, checkpoint="bundled", search=CHEAP)
    paths = [tmp_path / f"var-0{i}.mid" for i in (1, 2, 3)]
    assert [piece.midi for piece in result.pieces] == paths == numbered_paths(out, 3)
    assert sorted(tmp_path.iterdir()) == paths  # and no var.mid
    assert [piece.seed for piece in result.pieces] == [4, 5, 6]
    assert len({path.read_bytes() for path in paths}) == 3


def test_compose_file_infill_of_bars_outside_the_piece_names_the_file_and_writes_nothing(chorale_dir, tmp_path):
    source, out = chorale_dir / SHORT, tmp_path / "x.mid"
    with pytest.raises(UsageError) as error:
        compose_file("infill", source, out, bars="9-10", checkpoint="bundled", search=CHEAP)
    assert str(source) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UsageError, match="--n"):
        compose_file("continue", source, out, n=2, checkpoint="bundled", search=CHEAP)
    with pytest.raises(UsageError, match="infill needs --bars"):
        compose_file("infill", source, out, checkpoint="bundled", search=CHEAP)
    assert not out.exists()


# -- the command line (default search) -----------------------------------------------------------


def invoke(*args) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_continue_for_a_string_quartet(chorale_dir, tmp_path):
    out = tmp_path / "quartet.mid"
    result = invoke("continue", chorale_dir / SHORT, out, "--bars", 2, "--checkpoint", "bundled",
                    "--ensemble", "string quartet")
    assert result.exit_code == 0, result.output
    assert f"Wrote {out}: 10 bars" in result.output
    midi = mido.MidiFile(out)
    assert len(midi.tracks) == 4
    programs = [[m.program for m in track if m.type == "program_change"] for track in midi.tracks]
    assert programs == [[40], [40], [41], [42]]
    for track in midi.tracks:
        assert sum(m.type == "note_on" and m.velocity > 0 for m in track) > 10


def test_cli_harmonize_for_a_violin(chorale_dir, tmp_path):
    out = tmp_path / "violin.mid"
    result = invoke("harmonize", chorale_dir / SHORT, out, "--checkpoint", "bundled", "--instrument", "violin")
    assert result.exit_code == 0, result.output
    assert "harmonizing its top line" in result.output and "Violin" in result.output
    notes = read_notes(out, 4)
    assert len(notes.pitch) > 10
    order = np.argsort(notes.start, kind="stable")
    assert not (notes.start[order][1:] < notes.end[order][:-1]).any()  # a violin plays one line
    programs = [m.program for track in mido.MidiFile(out).tracks for m in track if m.type == "program_change"]
    assert programs == [40]


def test_cli_vary_writes_numbered_files(chorale_dir, tmp_path):
    out = tmp_path / "out.mid"
    result = invoke("vary", chorale_dir / SHORT, out, "--n", 2, "--checkpoint", "bundled")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-01.mid", "out-02.mid"]
    for path in tmp_path.iterdir():
        assert f"Wrote {path}: 8 bars" in result.output


def test_cli_infill_of_bars_outside_the_piece(chorale_dir, tmp_path):
    source, out = chorale_dir / SHORT, tmp_path / "x.mid"
    result = invoke("infill", source, out, "--bars", "99-100", "--checkpoint", "bundled")
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and str(source) in result.output and "99-100" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def bad_file(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.mid"
    if kind == "drums":
        write_notes(path, np.array([36, 38, 42, 36]), np.array([0, 4, 8, 12]), np.array([2, 6, 10, 14]), is_drum=True)
    elif kind == "text":
        path.write_text("This is not a MIDI file, only text with a .mid name.\n")
    elif kind == "silent":
        write_notes(path, np.array([], dtype=int), np.array([], dtype=int), np.array([], dtype=int), n_steps=32)
    return path


@pytest.mark.parametrize("command", ["continue", "harmonize"])
@pytest.mark.parametrize("kind", ["drums", "text", "silent"])
def test_cli_bad_input_is_one_line_naming_the_file(tmp_path, kind, command):
    source, out = bad_file(kind, tmp_path), tmp_path / "out.mid"
    result = invoke(command, source, out, "--checkpoint", "bundled")
    assert result.exit_code != 0
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ") and str(source) in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not out.exists()
