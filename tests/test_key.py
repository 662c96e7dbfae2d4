"""Keys: estimating a roll's key and moving it to C, on hand-made scales and real chorales."""

from __future__ import annotations

import numpy as np
import pytest

from apollo.key import MOVES, draw_move, estimate_key, key_name, move_histogram, move_to_c, pitch_class_weights
from apollo.metrics import scale_consistency
from apollo.roll import Grid, PianoRoll


def scale_roll(tonic: int, steps: tuple[int, ...], lowest: int = 30) -> PianoRoll:
    """Each note of a scale from MIDI ``60 + tonic`` as a quarter note, tonic held at the end."""
    pitch = np.array([60 + tonic + s for s in steps] + [60 + tonic])
    start = np.arange(len(pitch)) * 4
    end = start + 4
    end[-1] += 12
    return PianoRoll.from_notes(pitch, start, end, Grid(lowest_pitch=lowest))


MAJOR, HARMONIC_MINOR = (0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 11)


def test_pitch_class_weights_count_sounding_steps_by_true_pitch_class(c_major_roll):
    weights = pitch_class_weights(c_major_roll)
    # C held a bar (16 steps) then struck four times (16 steps); E and G held a bar.
    assert weights[0] == 32 and weights[4] == 16 and weights[7] == 16 and weights.sum() == 64
    # The grid's lowest pitch does not change which class a note is.
    moved_grid = PianoRoll.from_notes(np.array([61]), np.array([0]), np.array([4]), Grid(lowest_pitch=37))
    assert pitch_class_weights(moved_grid)[1] == 4


@pytest.mark.parametrize("tonic", range(12))
def test_every_major_and_minor_scale_is_found_and_moved_to_c_or_a(tonic):
    major, minor = scale_roll(tonic, MAJOR), scale_roll(tonic, HARMONIC_MINOR)
    assert estimate_key(major) == (tonic, "major")
    assert estimate_key(minor) == (tonic, "minor")
    for roll, home in ((major, (0, "major")), (minor, (9, "minor"))):
        move = move_to_c(roll)
        assert move in MOVES
        assert estimate_key(roll.transpose(move)) == home


def test_moves_take_the_shorter_way_and_names_read_well():
    assert move_to_c(scale_roll(2, MAJOR)) == -2  # D major: down a tone
    assert move_to_c(scale_roll(10, MAJOR)) == 2  # Bb major: up a tone
    assert move_to_c(scale_roll(6, MAJOR)) == -6  # F# major: either way is 6; down
    assert move_to_c(scale_roll(4, HARMONIC_MINOR)) == 5  # E minor to A minor
    assert key_name(*estimate_key(scale_roll(7, HARMONIC_MINOR))) == "G minor"
    assert estimate_key(PianoRoll(np.zeros((64, 16), np.uint8), Grid())) == (0, "major")  # silence


def test_real_chorales_move_to_the_white_keys(chorale_dir):
    from apollo.midi import read_notes

    for path in sorted(chorale_dir.glob("*.mid"))[:6]:
        notes = read_notes(path)
        roll = PianoRoll.from_notes(notes.pitch, notes.start, notes.end, Grid())
        moved = roll.transpose(move_to_c(roll))
        weights = pitch_class_weights(moved)
        black = weights[[1, 3, 6, 10]].sum() / weights.sum()  # C#, Eb, F#, Bb (G# leads to A minor)
        assert black < 0.1 and scale_consistency(moved) == pytest.approx(scale_consistency(roll))


def test_moves_are_drawn_from_the_corpus_histogram():
    histogram = move_histogram(np.array([-2, -2, -2, 3]))
    assert len(histogram) == 12 and histogram[-2 - MOVES.start] == 3 and histogram[3 - MOVES.start] == 1
    rng = np.random.default_rng(0)
    drawn = [draw_move(histogram, rng) for _ in range(400)]
    # A piece written in C goes back to a corpus key: moved by +2 (D) three times as often as by -3.
    assert set(drawn) == {2, -3} and 0.65 < drawn.count(2) / len(drawn) < 0.85
    assert draw_move([0] * 12, rng) == 0 and draw_move([1, 2], rng) == 0  # nothing to draw from
