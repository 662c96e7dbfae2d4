"""Per-sample metrics on hand-made rolls whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apollo import metrics
from apollo.metrics import METRICS, Facts, sample_metrics
from apollo.roll import Grid, PianoRoll

C4, D4, E4, F4, G4, A4, B4 = 60, 62, 64, 65, 67, 69, 71


def roll(notes: list[tuple[int, int, int]], n_steps: int = 32, grid: Grid = Grid()) -> PianoRoll:
    """A roll from (pitch, start, end) triples; bars are 16 steps on the default grid."""
    pitch, start, end = (np.array(x) for x in zip(*notes)) if notes else ([], [], [])
    return PianoRoll.from_notes(np.array(pitch), np.array(start), np.array(end), grid, n_steps=n_steps)


def triad_bar() -> list[tuple[int, int, int]]:
    return [(C4, 0, 16), (E4, 0, 16), (G4, 0, 16)]


# -- bars and silence --------------------------------------------------------------------------


def test_trailing_silence_counts_as_empty_bars():
    r = roll(triad_bar(), n_steps=64)  # one sounding bar, then three silent ones
    assert metrics.empty_bar_rate(r) == 0.75
    assert metrics.note_density(r) == 3 / 4  # three notes over four bars


def test_partial_last_bar_is_a_bar_of_its_own():
    r = roll(triad_bar() + [(C4, 33, 36)], n_steps=40)  # bars: 0-15, 16-31 (empty), 32-39
    assert metrics.empty_bar_rate(r) == pytest.approx(1 / 3)


def test_silent_roll_is_all_empty_and_undefined_elsewhere():
    values = sample_metrics(roll([], n_steps=32))
    assert values["empty_bar_rate"] == 1.0
    assert values["note_density"] == 0.0
    for name in ("used_pitch_classes", "qualified_note_rate", "polyphony", "polyphony_rate",
                 "pitch_class_entropy", "scale_consistency", "pitch_range", "voice_step", "parallel_rate",
                 "top_pitch_share", "count_change_rate"):
        assert math.isnan(values[name]), name
    assert values["groove_consistency"] == 1.0  # two bars with the same (empty) onset pattern


# -- pitch classes -----------------------------------------------------------------------------


def test_c_e_g_triad_uses_three_pitch_classes():
    assert metrics.used_pitch_classes(roll(triad_bar(), n_steps=16)) == 3


def test_pitch_classes_are_true_pitch_classes_not_blocks_of_rows():
    # Adjacent semitones are two pitch classes (block-summing code calls them one) ...
    assert metrics.used_pitch_classes(roll([(C4, 0, 4), (C4 + 1, 4, 8)], n_steps=16)) == 2
    # ... and octaves are one, also on a grid whose lowest row is not a C.
    for lowest in (30, 31, 36, 41):
        grid = Grid(lowest_pitch=lowest)
        assert metrics.used_pitch_classes(roll([(48, 0, 4), (60, 4, 8), (72, 8, 12)], 16, grid)) == 1
        assert metrics.pitch_classes(roll([], 16, grid))[60 - lowest] == 0  # the row of C4 is class C


def test_used_pitch_classes_average_over_sounding_bars(c_major_roll):
    assert metrics.used_pitch_classes(c_major_roll) == 2.0  # bar 1: C E G, bar 2: C
    r = roll(triad_bar(), n_steps=48)  # empty bars do not pull the mean down
    assert metrics.used_pitch_classes(r) == 3.0


# -- notes and texture -----------------------------------------------------------------------


def test_qualified_notes_last_at_least_three_steps():
    r = roll([(C4, 0, 1), (D4, 1, 3), (E4, 3, 6), (F4, 6, 10)], n_steps=16)
    assert metrics.qualified_note_rate(r) == 0.5
    assert metrics.qualified_note_rate(r, min_steps=4) == 0.25


def test_repeated_notes_count_separately(c_major_roll):
    # C4 struck four times in bar 2: four notes of four steps, all qualified.
    assert metrics.note_density(c_major_roll) == 7 / 2
    assert metrics.qualified_note_rate(c_major_roll) == 1.0


def test_polyphony_counts_only_sounding_steps():
    r = roll(triad_bar() + [(C4, 32, 48)], n_steps=64)  # triad, silent bar, single note, silent bar
    assert metrics.polyphony(r) == 2.0  # (3 * 16 + 1 * 16) / 32
    assert metrics.polyphony_rate(r) == 0.5
    assert metrics.polyphony_rate(r, min_pitches=4) == 0.0


def test_pitch_class_entropy_in_bits():
    assert metrics.pitch_class_entropy(roll([(C4, 0, 4), (C4 + 12, 4, 8)], 16)) == 0.0
    four = roll([(C4, 0, 4), (D4, 4, 8), (E4, 8, 12), (F4, 12, 16)], 16)
    assert metrics.pitch_class_entropy(four) == pytest.approx(2.0)
    chromatic = roll([(C4 + i, i, i + 1) for i in range(12)], 16)
    assert metrics.pitch_class_entropy(chromatic) == pytest.approx(math.log2(12))


def test_scale_consistency_best_of_major_and_harmonic_minor():
    c_major = roll([(p, i * 2, i * 2 + 2) for i, p in enumerate([C4, D4, E4, F4, G4, A4, B4])], 16)
    assert metrics.scale_consistency(c_major) == 1.0
    a_harmonic_minor = [A4, B4, C4, D4, E4, F4, G4 + 1]  # G#: in no major scale with the rest
    assert metrics.scale_consistency(roll([(p, 2 * i, 2 * i + 2) for i, p in enumerate(a_harmonic_minor)], 16)) == 1.0
    chromatic = roll([(C4 + i, i, i + 1) for i in range(12)], 16)
    assert metrics.scale_consistency(chromatic) == pytest.approx(7 / 12)


def test_natural_minor_is_not_counted_as_a_separate_scale():
    assert metrics.SCALES.shape == (24, 12)
    assert len({tuple(s) for s in metrics.SCALES}) == 24  # all different sets
    assert (metrics.SCALES.sum(axis=1) == 7).all()


def test_two_identical_bars_have_groove_consistency_one():
    bar = [(C4, 0, 4), (E4, 4, 6), (G4, 6, 8), (C4, 8, 16)]
    r = roll(bar + [(p, s + 16, e + 16) for p, s, e in bar], n_steps=32)
    assert metrics.groove_consistency(r) == 1.0


def test_groove_consistency_counts_differing_onset_positions():
    bar1 = [(C4, s, s + 4) for s in (0, 4, 8, 12)]
    bar2 = [(C4, 16, 24), (C4, 24, 32)]  # onsets at 0 and 8 of the bar: 2 of 16 positions differ
    assert metrics.groove_consistency(roll(bar1 + bar2, n_steps=32)) == pytest.approx(1 - 2 / 16)
    assert math.isnan(metrics.groove_consistency(roll(bar1, n_steps=16)))  # one bar: nothing to compare


def test_pitch_range_in_semitones():
    assert metrics.pitch_range(roll([(C4, 0, 4), (G4 + 12, 8, 12)], 16)) == 19


def test_sample_metrics_equal_the_functions_and_accept_facts(c_major_roll):
    values = sample_metrics(c_major_roll)
    assert list(values) == list(METRICS)
    facts = Facts.of(c_major_roll)
    for name, fn in METRICS.items():
        assert fn(c_major_roll) == pytest.approx(values[name], nan_ok=True)
        assert fn(facts) == pytest.approx(values[name], nan_ok=True)


def test_other_steps_per_beat_scale_the_bar():
    grid = Grid(steps_per_beat=2)  # a bar is 8 steps
    r = roll([(C4, 0, 8)], n_steps=32, grid=grid)
    assert metrics.empty_bar_rate(r) == 0.75
    assert metrics.bars(r).shape == (4, 64, 8)


# -- a pitch held through the piece ------------------------------------------------------------


def test_count_change_rate_counts_the_steps_where_the_number_of_sounding_pitches_changes():
    chorale = [(p, start, start + 4) for start in range(0, 32, 4) for p in (C4 - 12, C4, E4, G4)]
    assert metrics.count_change_rate(roll(chorale)) == 0.0  # four voices moving together
    dropout = [note for note in chorale if note != (E4, 8, 12)] + [(E4, 8, 10)]  # alto rests at steps 10-11
    assert metrics.count_change_rate(roll(dropout)) == pytest.approx(2 / 31)  # 4 -> 3 at 10, 3 -> 4 at 12
    # Silent steps are left out; the first step after a rest counts.
    line = [(C4, 0, 6), (E4, 8, 14)]
    assert metrics.count_change_rate(roll(line, n_steps=16)) == pytest.approx(1 / 11)  # 0 -> 1 at step 8
    assert np.isnan(metrics.count_change_rate(roll([(C4, 0, 1)], n_steps=16)))  # nothing after step 0


def test_top_pitch_share_is_the_share_of_sounding_steps_of_the_busiest_pitch():
    # A C held under a moving line sounds at every sounding step: 1, whatever moves above it.
    pedal = roll([(C4, 0, 32)] + [(C4 + 7 + i % 3, 2 * i, 2 * i + 2) for i in range(16)], n_steps=32)
    assert metrics.top_pitch_share(pedal) == 1.0
    # Struck again every step, it is still there at every step.
    struck = roll([(C4, i, i + 1) for i in range(16)] + [(C4 + 4, 0, 4)], n_steps=32)
    assert metrics.top_pitch_share(struck) == 1.0
    # Up and down a scale, 2 steps a pitch: D and E sound 4 of the 12 steps each.
    line = [C4, C4 + 2, C4 + 4, C4 + 5, C4 + 4, C4 + 2]
    scale = roll([(p, 2 * i, 2 * i + 2) for i, p in enumerate(line)], n_steps=16)
    assert metrics.top_pitch_share(scale) == pytest.approx(4 / 12)
    # Silent steps do not count: the same line with a rest of 4 steps after it.
    assert metrics.top_pitch_share(roll([(p, 2 * i, 2 * i + 2) for i, p in enumerate(line)], n_steps=32)) == pytest.approx(4 / 12)
