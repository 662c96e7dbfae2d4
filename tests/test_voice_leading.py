"""Voice leading: each note's successor in its voice, voice steps and parallel fifths and octaves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apollo import metrics, mgeval
from apollo.metrics import METRICS, Facts
from apollo.mgeval import FEATURES
from apollo.roll import Grid, PianoRoll

C3, D3 = 48, 50
G3, A3, B3 = 55, 57, 59
C4, D4, E4, F4, G4, A4, B4, C5, D5 = 60, 62, 64, 65, 67, 69, 71, 72, 74


def roll(notes: list[tuple[int, int, int]], n_steps: int = 32) -> PianoRoll:
    """A roll from (pitch, start, end) triples."""
    pitch, start, end = (np.array(x) for x in zip(*notes))
    return PianoRoll.from_notes(pitch, start, end, n_steps=n_steps)


def successor_pitches(r: PianoRoll) -> dict[tuple[int, int], int | None]:
    """(pitch, start) of each note -> pitch of its successor, or None."""
    f = Facts.of(r)
    return {(int(p), int(s)): (int(f.pitch[n]) if n >= 0 else None)
            for p, s, n in zip(f.pitch, f.start, metrics.successors(f))}


# -- successors -------------------------------------------------------------------------------


def test_a_scale_steps_by_one_and_two_semitones():
    scale = [C4, D4, E4, F4, G4, A4, B4, C5]
    r = roll([(p, 2 * i, 2 * i + 2) for i, p in enumerate(scale)], 16)
    assert metrics.successors(r).tolist() == [1, 2, 3, 4, 5, 6, 7, -1]  # the last note ends the roll
    assert metrics.voice_step(r) == pytest.approx(12 / 7)  # 2 2 1 2 2 2 1


def test_a_note_followed_by_a_rest_has_no_successor():
    r = roll([(C4, 0, 4), (E4, 6, 8), (G4, 8, 12)], 16)  # a rest between C and E, then E to G
    assert successor_pitches(r) == {(C4, 0): None, (E4, 6): G4, (G4, 8): None}
    assert metrics.voice_step(r) == 3.0
    assert math.isnan(metrics.voice_step(roll([(C4, 0, 4), (E4, 6, 8)], 16)))  # no pair at all


def test_the_nearest_pitch_wins_and_a_tie_goes_to_the_lower():
    nearest = roll([(C4, 0, 4), (A3, 4, 8), (D4, 4, 8)], 16)  # 3 below against 2 above
    assert successor_pitches(nearest)[(C4, 0)] == D4
    tie = roll([(C4, 0, 4), (B3, 4, 8), (C4 + 1, 4, 8)], 16)  # a semitone either way
    assert successor_pitches(tie)[(C4, 0)] == B3


def test_only_notes_starting_exactly_at_the_end_are_candidates():
    # C4's end is step 4; the D4 a step later and the E4 held across step 4 are not its successors.
    r = roll([(C4, 0, 4), (E4, 2, 8), (B3 - 12, 4, 8), (D4, 5, 8)], 16)
    assert successor_pitches(r)[(C4, 0)] == B3 - 12


def test_two_notes_may_share_a_successor():
    r = roll([(C4, 0, 4), (E4, 0, 4), (D4, 4, 8)], 16)  # two voices meet on one pitch
    assert successor_pitches(r) == {(C4, 0): D4, (E4, 0): D4, (D4, 4): None}
    assert metrics.voice_step(r) == 2.0


def test_successors_do_not_depend_on_the_order_of_the_notes():
    r = roll([(C3, 0, 4), (G3, 0, 4), (E4, 0, 4), (D3, 4, 8), (A3, 4, 8), (F4, 4, 8), (C4, 8, 12)], 16)
    f = Facts.of(r)
    perm = np.random.default_rng(0).permutation(len(f.pitch))
    shuffled = Facts(f.sounding, f.pitch[perm], f.start[perm], f.end[perm], f.grid)
    expected = metrics.successors(f)
    got = metrics.successors(shuffled)
    assert all(expected[p] == (perm[got[i]] if got[i] >= 0 else -1) for i, p in enumerate(perm))
    assert metrics.parallel_rate(shuffled) == metrics.parallel_rate(f)


# -- parallel fifths and octaves ------------------------------------------------------------------


def test_c_g_moving_to_d_a_is_one_parallel_fifth_of_one_moving_pair():
    assert metrics.parallel_rate(roll([(C4, 0, 4), (G4, 0, 4), (D4, 4, 8), (A4, 4, 8)], 16)) == 1.0


def test_parallel_octaves_and_compound_intervals_count():
    assert metrics.parallel_rate(roll([(C4, 0, 4), (C5, 0, 4), (D4, 4, 8), (D5, 4, 8)], 16)) == 1.0
    two_octaves = roll([(C3, 0, 4), (C5, 0, 4), (D3, 4, 8), (D5, 4, 8)], 16)
    assert metrics.parallel_rate(two_octaves) == 1.0
    twelfth = roll([(C3, 0, 4), (G4, 0, 4), (D3, 4, 8), (A4, 4, 8)], 16)  # a fifth plus an octave
    assert metrics.parallel_rate(twelfth) == 1.0


def test_a_fifth_or_an_octave_moving_to_another_interval_is_not_a_parallel():
    to_a_sixth = roll([(C4, 0, 4), (G4, 0, 4), (D4, 4, 8), (B4, 4, 8)], 16)
    assert metrics.parallel_rate(to_a_sixth) == 0.0
    to_a_twelfth = roll([(C4, 0, 4), (C5, 0, 4), (D4, 4, 8), (A4 + 12, 4, 8)], 16)  # both classes, but not the same
    assert metrics.parallel_rate(to_a_twelfth) == 0.0


def test_contrary_and_oblique_motion_are_not_moving_pairs():
    contrary = roll([(C4, 0, 4), (G4, 0, 4), (B3, 4, 8), (A4, 4, 8)], 16)
    assert math.isnan(metrics.parallel_rate(contrary))
    oblique = roll([(C4, 0, 4), (G4, 0, 4), (C4, 4, 8), (A4, 4, 8)], 16)  # C4 struck again
    assert math.isnan(metrics.parallel_rate(oblique))
    # Contrary motion, then thirds moving up together: one moving pair, no parallel.
    r = roll([(C4, 0, 4), (G4, 0, 4), (B3, 4, 8), (A4, 4, 8), (C4, 8, 12), (B4, 8, 12)], 16)
    assert metrics.parallel_rate(r) == 0.0


def test_successors_must_start_together():
    # G4 moves to A4 four steps after C4 moves to D4: the two voices do not move as a pair.
    r = roll([(C4, 0, 4), (G4, 0, 8), (D4, 4, 12), (A4, 8, 12)], 16)
    assert math.isnan(metrics.parallel_rate(r))


def test_one_parallel_fifth_among_three_moving_pairs():
    # C3 G3 E4 -> D3 A3 F4, all up: C3-G3 is a parallel fifth, the pairs with E4 are not.
    r = roll([(C3, 0, 4), (G3, 0, 4), (E4, 0, 4), (D3, 4, 8), (A3, 4, 8), (F4, 4, 8)], 16)
    assert metrics.parallel_rate(r) == pytest.approx(1 / 3)


# -- the histogram feature and the tables ---------------------------------------------------------


def test_voice_step_histogram_has_one_bin_per_semitone_to_an_octave_and_one_beyond():
    pitches = [C4, C4, C4 + 1, C4 + 3, C4 + 15, C4 + 2, C4 + 22]  # steps 0, 1, 2, 12, 13, 20
    r = roll([(p, 2 * i, 2 * i + 2) for i, p in enumerate(pitches)], 16)
    hist = mgeval.features([r])["voice_step"][0]
    expected = np.zeros(14)
    expected[[0, 1, 2, 12]] = 1 / 6
    expected[13] = 2 / 6
    assert hist == pytest.approx(expected)
    assert (mgeval.features([roll([(C4, 0, 4)], 16)])["voice_step"][0] == 0).all()  # no pair: all zeros


def test_new_entries_come_last_so_older_tables_keep_their_order():
    assert list(METRICS)[-4:] == ["voice_step", "parallel_rate", "top_pitch_share", "count_change_rate"]
    assert len(METRICS) == 14
    assert list(FEATURES)[-1] == "voice_step" and len(FEATURES) == 10


# -- real music --------------------------------------------------------------------------------------


def test_bach_moves_by_small_steps_and_seldom_in_parallel(chorale_dir):
    """Bach chorales: voice steps of about 2 semitones, and few parallel fifths or octaves.

    Voices are inferred (nearest pitch), not read from the score, so a few voices are crossed: the
    chorales here measure about 0.03 (median), where their real parts have about 0.001.
    """
    facts = [Facts.of(PianoRoll.from_midi(path, Grid())) for path in sorted(chorale_dir.glob("*.mid"))]
    steps = [metrics.voice_step(f) for f in facts]
    assert all(1.5 < s < 4 for s in steps)
    assert np.median([metrics.parallel_rate(f) for f in facts]) < 0.05


def test_voices_followed_for_parallels_never_share_a_note_or_cross():
    # C4 and D4 both lie nearest C#4, which the nearest-pitch rule gives to both; one to one, in
    # pitch order, C4 continues to C#4 and D4 to A4.
    r = roll([(C4, 0, 4), (D4, 0, 4), (61, 4, 8), (A4, 4, 8)], 16)
    f = Facts.of(r)
    nearest, matched = metrics.successors(f), metrics.matched_successors(f)
    assert f.pitch[nearest[:2]].tolist() == [61, 61]
    assert f.pitch[matched[:2]].tolist() == [61, A4]
    # Three voices end, one starts: the nearest one (G4, 3 semitones) continues, the others end there.
    r = roll([(C3, 0, 4), (C4, 0, 4), (G4, 0, 4), (E4, 4, 8)], 16)
    f = Facts.of(r)
    assert metrics.matched_successors(f).tolist() == [-1, -1, 3, -1]


def test_real_chorales_have_few_parallels_when_voices_are_followed_one_to_one(chorale_dir):
    rates = [metrics.parallel_rate(PianoRoll.from_midi(path)) for path in sorted(chorale_dir.glob("*.mid"))]
    assert np.nanmedian(rates) == 0.0 and np.nanmean(rates) < 0.03
