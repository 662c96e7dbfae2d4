"""Decoding settings and their calibration on real chorales."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apollo.decoding import MIN_GAIN, Decoding, Trial, calibrate, candidates, ceiling, choose
from apollo.evaluate import chunk
from apollo.roll import HELD, ONSET, Grid, PianoRoll


def test_decoding_checks_and_round_trips():
    with pytest.raises(ValueError, match="onset_threshold"):
        Decoding(onset_threshold=1.0)
    with pytest.raises(ValueError, match="min_length"):
        Decoding(min_length=0)
    decoding = Decoding(0.45, 0.7, 3)
    assert Decoding.from_dict(decoding.to_dict()) == decoding
    assert Decoding.from_dict({"threshold": 0.4, "a_later_setting": 1}) == Decoding(threshold=0.4)
    assert Decoding.from_dict(None) == Decoding()
    assert Decoding().effective == Decoding(0.5, 0.5).effective == (0.5, 0.5, 2, None)
    assert str(Decoding()) == "threshold 0.5, onset threshold 0.5, min length 2"
    assert str(Decoding(fill=0.3)) == "threshold 0.5, onset threshold 0.5, min length 2, fill 0.3"
    assert Decoding.from_dict(Decoding(0.45, fill=0.3).to_dict()) == Decoding(0.45, fill=0.3)
    with pytest.raises(ValueError, match="fill"):
        Decoding(fill=0)
    assert Decoding(0.55, 0.5) not in candidates() and Decoding(0.5, 0.7) in candidates()


@pytest.fixture(scope="module")
def chorale_chunks(chorale_dir) -> list[PianoRoll]:
    grid = Grid()
    return [c for path in sorted(chorale_dir.glob("*.mid")) for c in chunk(PianoRoll.from_midi(path, grid), 128)]


def unsure_probabilities(roll: PianoRoll) -> np.ndarray:
    """What a generator unsure of its repeats would write for ``roll``: sure cells and onsets,
    plus an onset probability of 0.6 on every held cell of the second half of each beat."""
    planes = roll.encode("onset").astype(np.float32) * 0.8 + 0.1
    wavering = (roll.cells == HELD) & (np.arange(roll.n_steps) % 4 == 2)
    planes[1][wavering] = 0.6
    return planes


def test_calibration_chooses_the_decoding_that_gives_back_the_music(chorale_chunks):
    """Decoded at 0.7, the onsets are the chorales' own; at 0.5 every wavering cell splits a note,
    and at 0.95 no repeat survives. Calibration must pick 0.7, the only one that passes."""
    tried = [Decoding(0.5, 0.5), Decoding(0.5, 0.95), Decoding(0.5, 0.7)]
    probabilities = [unsure_probabilities(roll) for roll in chorale_chunks]
    choice, trials = calibrate(probabilities, chorale_chunks, encoding="onset", grid=Grid(), tempo=100,
                               decodings=tried)
    assert choice == Decoding(0.5, 0.7) and trials[0].decoding == choice
    assert Decoding().effective in [t.decoding.effective for t in trials]  # the default is always tried, once
    assert len(trials) == 3  # 0.5 / 0.5 decodes as the default does: not tried twice
    _, others = calibrate(probabilities, chorale_chunks, encoding="onset", grid=Grid(), tempo=100, decodings=tried[1:])
    assert len(others) == 3 and Decoding() in [t.decoding for t in others]
    assert trials[0].passes and trials[0].misses == () and trials[0].mean_oa > 0.95
    # A model judged with a fill in training: its judged decoding is the baseline, tried once.
    judged = Decoding(fill=0.3)
    _, with_fill = calibrate(probabilities, chorale_chunks, encoding="onset", grid=Grid(), tempo=100,
                             decodings=[Decoding(0.5, 0.7, fill=0.3)], judged=judged)
    assert [t.decoding for t in with_fill] == [Decoding(0.5, 0.7, fill=0.3), judged]
    assert all(d.fill == 0.3 for d in candidates(fill=0.3))
    split = next(t for t in trials if t.decoding == Decoding(0.5, 0.5))
    assert not split.passes and "note_density" in split.misses
    assert split.report["values"]["note_density"] > 1.1 * split.report["values"]["real/note_density"]
    merged = next(t for t in trials if t.decoding == Decoding(0.5, 0.95))
    assert merged.report["values"]["note_density"] < merged.report["values"]["real/note_density"]
    assert trials[0].mean_oa > max(split.mean_oa, merged.mean_oa)


def test_choice_never_trades_a_metric_that_was_right_for_overlap():
    def trial(threshold: float, mean_oa: float, *misses: str) -> Trial:
        return Trial(Decoding(threshold), mean_oa, misses, {})

    baseline = trial(0.5, 0.88, "empty_bar_rate", "note_density")
    thicker = trial(0.4, 0.93, "note_density", "polyphony")  # best overlap, but polyphony was right
    fuller = trial(0.45, 0.91, "note_density")  # misses only what the baseline missed
    exact = trial(0.55, 0.89)  # passes everything, less overlap
    assert [t.decoding.threshold for t in choose([baseline, thicker, fuller, exact], baseline)] == [0.45, 0.55, 0.5, 0.4]
    assert exact.passes and not fuller.passes and trial(0.5, 0.9, "empty_bar_rate").passes
    # When the baseline passes everything, so must the choice.
    assert choose([thicker, fuller, exact], exact)[0] is exact


def test_a_gain_within_the_samples_noise_keeps_the_default():
    """The default is what the discriminator judged: a candidate must gain more than ``min_gain``."""
    baseline = Trial(Decoding(), 0.600, (), {})
    close = Trial(Decoding(0.475), 0.600 + MIN_GAIN / 2, (), {})
    clear = Trial(Decoding(0.45), 0.600 + 2 * MIN_GAIN, (), {})
    assert choose([close, baseline], baseline)[0] is baseline
    assert [t.decoding.threshold for t in choose([close, baseline], baseline)] == [0.5, 0.475]
    assert choose([close, clear, baseline], baseline)[0] is clear
    assert choose([close, baseline], baseline, min_gain=0)[0] is close
    # Worse than the default on what it keeps: never chosen, however high its overlap.
    trading = Trial(Decoding(0.4), 0.700, ("polyphony",), {})
    assert choose([trading, close, baseline], baseline)[:2] == [baseline, close]


def test_calibration_moves_each_sample_before_measuring(chorale_chunks):
    """A model trained in one key is measured in the keys it writes: moved, the samples no longer
    match their unmoved selves, so the same decoding measures lower."""
    probabilities = [roll.encode("onset").astype(np.float32) for roll in chorale_chunks]
    kwargs = {"encoding": "onset", "grid": Grid(), "tempo": 100, "decodings": [Decoding()]}
    _, [same] = calibrate(probabilities, chorale_chunks, **kwargs)
    _, [moved] = calibrate(probabilities, chorale_chunks, moves=[6] * len(probabilities), **kwargs)
    assert same.mean_oa > 0.95 and moved.mean_oa < same.mean_oa
    with pytest.raises(ValueError, match="moves"):
        calibrate(probabilities, chorale_chunks, moves=[0], **kwargs)


def sixteenth_tunes(n: int) -> list[PianoRoll]:
    """Tunes of sixteenths (one step each), a line wandering by steps and skips."""
    rng = np.random.default_rng(0)
    tunes = []
    for _ in range(n):
        cells = np.zeros((64, 128), dtype=np.uint8)
        line = 30 + np.cumsum(rng.choice([-2, -1, 1, 2], size=128)).clip(-12, 12)
        cells[line, np.arange(128)] = ONSET
        tunes.append(PianoRoll(cells))
    return tunes


def test_calibration_can_choose_one_step_notes_for_fast_music():
    """The default shortest sound, 2 steps, deletes most of the sixteenths; asked to try 1,
    calibration keeps the music."""
    tunes = sixteenth_tunes(24)
    probabilities = [roll.encode("onset").astype(np.float32) * 0.8 + 0.1 for roll in tunes]
    assert {d.min_length for d in candidates(min_lengths=(1, 2))} == {1, 2}
    assert len(candidates(min_lengths=(1, 2))) == 2 * len(candidates())
    choice, trials = calibrate(probabilities, tunes, encoding="onset", grid=Grid(), tempo=100,
                               decodings=[Decoding(0.5, 0.5, 1)])
    assert choice == Decoding(0.5, 0.5, 1) and trials[0].mean_oa > 0.95
    deleted = trials[1]  # the default: only the notes where the line stuck at its edge survive
    assert deleted.decoding == Decoding() and deleted.mean_oa < trials[0].mean_oa - 0.2
    assert deleted.report["values"]["note_density"] < 0.5 * deleted.report["values"]["real/note_density"]


def test_the_ceiling_is_what_the_shortest_sound_deletes_from_real_music(chorale_chunks):
    real, reference = chorale_chunks[::2], chorale_chunks[1::2]
    cut, uncut = ceiling(real, reference, "onset", Decoding(min_length=1))
    assert cut == uncut > 0.7  # read back uncut, real music is itself
    cut, _ = ceiling(real, reference, "onset", Decoding())  # a chorale seldom holds a note one step
    assert abs(cut - uncut) < 0.02
    tunes = sixteenth_tunes(48)  # nearly every note lasts one step
    cut, uncut = ceiling(tunes[:24], tunes[24:], "onset", Decoding())
    assert cut < uncut - 0.3


@pytest.mark.parametrize("args, message", [
    (["--data", "no-such-dataset"], "error: no-such-dataset: no such dataset"),
    (["--data", "no-such-dataset", "--min-lengths", "0"], "--min-lengths must be at least 1"),
    (["--data", "no-such-dataset", "--min-gain", "-1"], "--min-gain must be at least 0"),
    (["--data", "no-such-dataset", "--reference", "1"], "--reference must be at least 2"),
])
def test_the_calibration_script_says_what_is_wrong_in_one_line(args, message):
    script = Path(__file__).resolve().parents[1] / "bench" / "calibrate_decoding.py"
    result = subprocess.run([sys.executable, str(script), "bundled", *args], capture_output=True, text=True)
    last = result.stderr.strip().splitlines()[-1]  # argparse prints its usage above the error
    assert result.returncode != 0 and message in last and "Traceback" not in result.stderr, result.stderr
