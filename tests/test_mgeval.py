"""MGEval features, distances, densities on a shared grid, overlapped area and KL."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apollo import mgeval
from apollo.roll import PianoRoll

C4, D4, E4, G4, B4 = 60, 62, 64, 67, 71


def roll(notes: list[tuple[int, int, int]], n_steps: int = 32) -> PianoRoll:
    pitch, start, end = (np.array(x) for x in zip(*notes))
    return PianoRoll.from_notes(pitch, start, end, n_steps=n_steps)


def melody(seed: int, low: int = 40, span: int = 5, length: int = 1) -> PianoRoll:
    """A one-voice line of equal notes with random pitches in [low, low + span)."""
    pitches = np.random.default_rng(seed).integers(low, low + span, size=64 // length)
    return roll([(int(p), i * length, (i + 1) * length) for i, p in enumerate(pitches)], n_steps=64)


def chorale_like(seed: int) -> PianoRoll:
    """Four voices of half and whole notes, high up: far from :func:`melody` in every feature."""
    rng = np.random.default_rng(seed)
    notes = []
    for voice in range(4):
        t = 0
        while t < 64:
            length = int(rng.choice([8, 16]))
            notes.append((70 + 5 * voice + int(rng.integers(0, 3)), t, min(t + length, 64)))
            t += length
    return roll(notes, n_steps=64)


# -- features ----------------------------------------------------------------------------------


def test_features_of_a_triad_and_a_melody():
    f = mgeval.features([roll([(C4, 0, 16), (E4, 0, 16), (G4, 0, 16)], 16)])
    assert f["pitch_count"][0, 0] == 3
    hist = f["pitch_class_histogram"][0]
    assert hist[[0, 4, 7]] == pytest.approx([1 / 3] * 3) and hist.sum() == pytest.approx(1)
    assert f["pitch_range"][0, 0] == 7
    assert math.isnan(f["inter_onset_interval"][0, 0])  # one onset time: no interval

    line = mgeval.features([roll([(C4, 0, 4), (E4, 4, 8), (D4, 8, 12)], 16)])
    assert line["pitch_interval"][0, 0] == 3  # |64 - 60| and |62 - 64|, averaged
    assert line["note_count"][0, 0] == 3
    assert line["inter_onset_interval"][0, 0] == 1.0  # onsets every 4 steps = one beat


def test_pitch_class_transitions_follow_notes_that_start_where_others_end():
    f = mgeval.features([roll([(C4, 0, 4), (D4, 4, 8)], 16)])
    m = f["pitch_class_transition"][0].reshape(12, 12)
    assert m[0, 2] == 1.0 and m.sum() == 1.0
    chords = mgeval.features([roll([(C4, 0, 4), (E4, 0, 4), (G4, 4, 8), (B4, 4, 8)], 16)])
    m = chords["pitch_class_transition"][0].reshape(12, 12)
    assert m[np.ix_([0, 4], [7, 11])] == pytest.approx(np.full((2, 2), 0.25))  # every voice pair


def test_inter_onset_interval_ignores_chord_notes():
    # MGEval's diff over all note onsets would give zeros within each chord (mean 4/5 beat here).
    chords = roll([(p, s, s + 4) for s in (0, 4) for p in (C4, E4, G4)], 16)
    assert mgeval.features([chords])["inter_onset_interval"][0, 0] == 1.0


def test_note_length_classes():
    lengths = [1, 2, 3, 4, 5, 6, 8, 12, 16, 40]  # steps at four per beat
    notes, t = [], 0
    for length in lengths:
        notes.append((C4, t, t + length))
        t += length
    hist = mgeval.features([roll(notes, t)])["note_length_histogram"][0] * len(lengths)
    # classes: 1/4, 1/2, 3/4, 1, 3/2, 2, 3, 4, 8+ beats; 5 steps (1 1/4 beats) falls in "1 beat"
    assert hist.round().astype(int).tolist() == [1, 1, 1, 2, 1, 1, 1, 1, 1]
    nltm = mgeval.features([roll(notes, t)])["note_length_transition"][0].reshape(9, 9)
    assert nltm[0, 1] == pytest.approx(1 / 9)  # the sixteenth is followed by the eighth


# -- distances and densities -------------------------------------------------------------------


def test_pairwise_distances_intra_and_inter_skip_undefined_rows():
    x = np.array([[0.0], [3.0], [4.0], [np.nan]])
    assert sorted(mgeval.pairwise_distances(x)) == pytest.approx([1.0, 3.0, 4.0])
    assert sorted(mgeval.pairwise_distances(x, np.array([[10.0]]))) == pytest.approx([6.0, 7.0, 10.0])
    v = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert mgeval.pairwise_distances(v) == pytest.approx([5.0])


def test_kde_integrates_to_one_even_for_identical_samples():
    for samples in (np.random.default_rng(0).normal(5, 1, 500), np.zeros(50)):
        grid, h = mgeval.shared_grid(samples)
        p = mgeval.kde(samples, grid, h)
        assert np.isfinite(p).all()
        assert p.sum() * (grid[1] - grid[0]) == pytest.approx(1.0)


def test_kde_matches_a_direct_gaussian_sum():
    samples = np.random.default_rng(1).gamma(2.0, 1.0, 300)
    grid, h = mgeval.shared_grid(samples)
    assert h == pytest.approx(samples.std(ddof=1) * 300 ** -0.2)  # Scott's rule, as scipy's default
    direct = np.exp(-0.5 * ((grid[:, None] - samples[None]) / h) ** 2).sum(1) / (len(samples) * h * np.sqrt(2 * np.pi))
    assert mgeval.kde(samples, grid, h) == pytest.approx(direct, abs=2e-3)


def test_overlapped_area_and_kl_on_a_shared_grid():
    rng = np.random.default_rng(2)
    a, b, far = rng.normal(0, 1, 2000), rng.normal(0, 1, 2000), rng.normal(20, 1, 2000)
    grid, h = mgeval.shared_grid(a, b, far)
    pa, pb, pfar = (mgeval.kde(s, grid, h) for s in (a, b, far))
    assert mgeval.overlapped_area(pa, pa, grid) == pytest.approx(1.0)
    assert mgeval.overlapped_area(pa, pb, grid) > 0.95
    assert mgeval.overlapped_area(pa, pfar, grid) < 0.01
    assert mgeval.kl_divergence(pa, pa, grid) == pytest.approx(0.0, abs=1e-9)
    assert mgeval.kl_divergence(pa, pb, grid) < 0.01
    # On one shared grid disjoint densities are far apart (evaluated on two separate grids,
    # as MGEval's kl_dist does, these two shapes would look identical: KL near 0).
    assert mgeval.kl_divergence(pa, pfar, grid) > 5


# -- set comparison ----------------------------------------------------------------------------


def test_identical_sets_overlap_almost_fully():
    rolls = [chorale_like(i) for i in range(40)]
    f = mgeval.features(rolls)
    result = mgeval.compare_features(f, f)
    assert np.mean([v["oa"] for v in result.values()]) > 0.9
    assert all(v["oa"] > 0.8 for v in result.values())


def test_sets_from_one_distribution_overlap_and_disjoint_sets_do_not():
    same = mgeval.compare_features(
        mgeval.features([chorale_like(i) for i in range(60)]),
        mgeval.features([chorale_like(i) for i in range(100, 180)]),
    )
    assert np.mean([v["oa"] for v in same.values()]) > 0.85
    disjoint = mgeval.compare_features(
        mgeval.features([melody(i) for i in range(40)]),
        mgeval.features([chorale_like(i) for i in range(40)]),
    )
    assert np.mean([v["oa"] for v in disjoint.values()]) < 0.1
    assert disjoint["note_count"]["oa"] < 0.01 and disjoint["note_count"]["kl"] > 5


def test_mode_collapse_lowers_overlap_and_does_not_crash():
    reference = mgeval.features([chorale_like(i) for i in range(60)])
    collapsed = mgeval.features([chorale_like(0)] * 30)  # every intra-set distance is 0
    result = mgeval.compare_features(collapsed, reference)
    assert all(np.isfinite(v["oa"]) and np.isfinite(v["kl"]) for v in result.values())
    assert np.mean([v["oa"] for v in result.values()]) < 0.5
    assert result["pitch_class_histogram"]["oa"] < 0.05


def test_undefined_feature_scores_zero():
    silentish = mgeval.features([roll([(C4, 0, 4)], 16)] * 3)  # one note: no interval, no IOI
    result = mgeval.compare_features(silentish, mgeval.features([chorale_like(i) for i in range(10)]))
    assert result["pitch_interval"] == {"oa": 0.0, "kl": math.inf, "oa_reference": 0.0, "kl_reference": math.inf}
