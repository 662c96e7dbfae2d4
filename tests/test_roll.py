import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apollo.roll import HELD, ONSET, SILENT, Grid, PianoRoll, drop_short_runs, fold_pitches


def test_from_notes_marks_onsets_and_held_cells(c_major_roll):
    cells = c_major_roll.cells
    assert cells.shape == (64, 32)
    row = 60 - 30
    assert cells[row, 0] == ONSET and (cells[row, 1:16] == HELD).all()
    assert [cells[row, s] for s in (16, 20, 24, 28)] == [ONSET] * 4
    assert (cells[:row] == SILENT).all()


def test_notes_round_trip(c_major_roll):
    pitch, start, end = c_major_roll.notes()
    assert list(zip(pitch, start, end)) == [
        (60, 0, 16), (64, 0, 16), (67, 0, 16), (60, 16, 20), (60, 20, 24), (60, 24, 28), (60, 28, 32)
    ]


@pytest.mark.parametrize("encoding, notes", [("onset", 7), ("rest", 7), ("plain", 3)])
def test_encodings_keep_or_merge_repeated_notes(c_major_roll, encoding, notes):
    planes = c_major_roll.encode(encoding)
    assert planes.dtype == bool and planes.shape[1:] == (64, 32)
    assert PianoRoll.decode(planes, encoding).n_notes == notes


def test_decode_min_length_drops_short_sounding_runs_only():
    sounding, onset = np.zeros((2, 64, 16))
    sounding[0, 3] = 0.55  # a lone cell just above the threshold
    sounding[1, 5:7] = 0.9  # an eighth note
    sounding[2, 0:8] = 0.9  # a sixteenth then a dotted quarter: repeated within one sounding run
    onset[2, [0, 1]] = 0.9
    planes = np.stack([sounding, onset])
    notes = lambda roll: list(zip(*roll.notes()))  # noqa: E731
    assert notes(PianoRoll.decode(planes)) == [(32, 0, 1), (32, 1, 8), (30, 3, 4), (31, 5, 7)]
    assert notes(PianoRoll.decode(planes, min_length=2)) == [(32, 0, 1), (32, 1, 8), (31, 5, 7)]
    assert notes(PianoRoll.decode(planes, min_length=3)) == [(32, 0, 1), (32, 1, 8)]
    with pytest.raises(ValueError, match="min_length"):
        PianoRoll.decode(planes, min_length=0)


def test_onset_threshold_keeps_unsure_repeats_whole():
    sounding, onset = np.zeros((2, 64, 16))
    sounding[0, 0:8] = 0.9  # one held half note...
    onset[0, 4] = 0.6  # ...whose onset plane wavers halfway: struck again, or not?
    sounding[2, 2:6] = 0.9  # two eighths, the second struck for sure
    onset[2, 4] = 0.95
    sounding[4, 8:12] = 0.9  # after silence a note starts whatever its onset cell says
    planes = np.stack([sounding, onset])
    notes = lambda roll: list(zip(*roll.notes()))  # noqa: E731
    assert notes(PianoRoll.decode(planes)) == [(30, 0, 4), (32, 2, 4), (30, 4, 8), (32, 4, 6), (34, 8, 12)]
    assert notes(PianoRoll.decode(planes, onset_threshold=0.7)) == [(30, 0, 8), (32, 2, 4), (32, 4, 6), (34, 8, 12)]
    # Below the sounding threshold, the onset threshold makes weak repeats count too.
    onset[0, 2] = 0.4
    assert len(PianoRoll.decode(np.stack([sounding, onset]), onset_threshold=0.3).notes()[0]) == 6


def test_fill_sounds_the_most_probable_pitch_of_a_silent_step_only():
    sounding, onset = np.zeros((2, 64, 16))
    sounding[10, 0:4] = 0.9  # a sure note
    sounding[[10, 12, 14], 4:8] = [[0.45], [0.40], [0.30]]  # unsure which note: every pitch under 0.5
    sounding[10, 8:12] = 0.9
    sounding[[20, 22], 8:12] = 0.45  # a step that already sounds gets nothing more
    sounding[:, 12:16] = 0.02  # a rest the model means
    onset[10, [0, 8]] = 0.9
    planes = np.stack([sounding, onset])
    notes = lambda roll: list(zip(*roll.notes()))  # noqa: E731
    assert notes(PianoRoll.decode(planes)) == [(40, 0, 4), (40, 8, 12)]
    # The filled steps join the held note: no onset there, so one note of 8 steps, then one struck again.
    assert notes(PianoRoll.decode(planes, fill=0.4)) == [(40, 0, 8), (40, 8, 12)]
    assert notes(PianoRoll.decode(planes, fill=0.45)) == [(40, 0, 4), (40, 8, 12)]  # 0.45 does not pass 0.45
    # A filled run shorter than min_length is dropped like any other.
    sounding[10, 4:8] = 0.2
    sounding[12, 5] = 0.46
    assert notes(PianoRoll.decode(np.stack([sounding, onset]), fill=0.4, min_length=2)) == [(40, 0, 4), (40, 8, 12)]
    assert notes(PianoRoll.decode(planes, fill=0.6)) == [(40, 0, 4), (40, 8, 12)]  # above the threshold: nothing
    with pytest.raises(ValueError, match="fill"):
        PianoRoll.decode(planes, fill=1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(1, 6))
def test_drop_short_runs_keeps_exactly_the_long_runs(cells, min_length):
    mask = np.array(cells)
    expected = mask.copy()
    start = 0
    for step in range(len(cells) + 1):  # walk the runs one by one
        if step == len(cells) or not cells[step]:
            if step - start < min_length:
                expected[start:step] = False
            start = step + 1
    assert np.array_equal(drop_short_runs(mask[None], min_length)[0], expected)


def test_fold_keeps_pitch_class_and_drop_removes():
    grid = Grid(lowest_pitch=30, n_pitches=64)
    folded, keep = fold_pitches(np.array([10, 29, 30, 93, 94, 127]), grid)
    assert keep.all()
    assert ((folded >= 30) & (folded <= 93)).all()
    assert (folded % 12 == np.array([10, 29, 30, 93, 94, 127]) % 12).all()
    kept, mask = fold_pitches(np.array([10, 30, 93, 94]), grid, "drop")
    assert kept.tolist() == [30, 93] and mask.tolist() == [False, True, True, False]


def test_midi_round_trip_keeps_program_tempo_and_notes(tmp_path, c_major_roll):
    import mido

    path = tmp_path / "x.mid"
    c_major_roll.to_midi(path, program=40)
    back = PianoRoll.from_midi(path)
    assert back.tempo == pytest.approx(100, abs=0.01)
    assert np.array_equal(back.cells, c_major_roll.cells)
    programs = [m.program for m in mido.MidiFile(path).tracks[0] if m.type == "program_change"]
    assert programs == [40]


def test_transpose_moves_notes_and_folds_what_leaves_the_grid(c_major_roll):
    up = c_major_roll.transpose(5)
    assert np.array_equal(up.cells[5:], c_major_roll.cells[:-5]) and up.tempo == c_major_roll.tempo
    assert np.array_equal(up.transpose(-5).cells, c_major_roll.cells)
    top = PianoRoll.from_notes(np.array([92, 92]), np.array([0, 4]), np.array([4, 8]))  # repeated, row 62
    folded, dropped = top.transpose(3), top.transpose(3, out_of_range="drop")
    assert folded.n_notes == 2 and folded.notes()[0].tolist() == [83, 83]  # 95 is one octave down
    assert dropped.n_notes == 0 and dropped.n_steps == top.n_steps


def test_slice_starts_cut_notes():
    roll = PianoRoll.from_notes(np.array([60]), np.array([0]), np.array([8]))
    part = roll.slice(4, 8)
    assert part.cells[30, 0] == ONSET and part.n_notes == 1


def test_bad_cells_are_refused():
    with pytest.raises(ValueError, match="pitch rows"):
        PianoRoll(np.zeros((10, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="SILENT"):
        PianoRoll(np.full((64, 4), 3, dtype=np.uint8))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(30, 93), st.integers(0, 60), st.integers(1, 8)), max_size=30))
def test_onset_encoding_round_trips_any_roll(notes):
    if notes:
        pitch, start, length = map(np.array, zip(*notes))
    else:
        pitch = start = length = np.zeros(0, dtype=int)
    roll = PianoRoll.from_notes(pitch, start, start + length, n_steps=70)
    assert np.array_equal(PianoRoll.decode(roll.encode("onset"), "onset").cells, roll.cells)
    assert np.array_equal(PianoRoll.from_notes(*roll.notes(), n_steps=70).cells, roll.cells)
