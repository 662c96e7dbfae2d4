"""Shared fixtures: real MIDI files, made once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tqdm

from apollo.roll import Grid, PianoRoll

N_CHORALES = 24

# tqdm starts a monitor thread with its first progress bar (the trainer's), and it outlives the
# bar. Tests of how workers start need a single-threaded process, whichever test ran before them.
tqdm.tqdm.monitor_interval = 0


@pytest.fixture(scope="session")
def chorale_dir(tmp_path_factory) -> Path:
    """A folder of real Bach chorales as MIDI files, exported from music21's offline corpus."""
    from apollo.corpus import export

    out = tmp_path_factory.mktemp("chorales")
    export("bach-chorales", out, limit=N_CHORALES)
    return out


@pytest.fixture
def tiny_preset(monkeypatch) -> None:
    """A `tiny` model preset for every family (DCGAN width 8): a training step takes milliseconds, and the loop still runs for real."""
    from apollo.model import PRESETS, ModelConfig
    from apollo.sequence import SEQUENCE_PRESETS

    monkeypatch.setitem(PRESETS, "tiny", ModelConfig(width=8))
    monkeypatch.setitem(SEQUENCE_PRESETS, "tiny", {"lstm": dict(width=16, n_layers=2), "gru": dict(width=16, n_layers=2),
                                                   "transformer": dict(width=16, n_layers=2, n_heads=2)})


@pytest.fixture(scope="session")
def chorale_dataset(chorale_dir, tmp_path_factory) -> Path:
    """Those chorales through `apollo preprocess` with the default config: a real dataset."""
    from apollo.dataset import DatasetConfig
    from apollo.preprocess import preprocess

    out = tmp_path_factory.mktemp("datasets") / "chorales"
    preprocess(chorale_dir, out, DatasetConfig(), workers=1)
    return out


@pytest.fixture
def c_major_roll() -> PianoRoll:
    """Two bars: a C-E-G triad held for a bar, then C4 struck four times (repeated notes)."""
    grid = Grid()
    pitch = np.array([60, 64, 67, 60, 60, 60, 60])
    start = np.array([0, 0, 0, 16, 20, 24, 28])
    end = np.array([16, 16, 16, 20, 24, 28, 32])
    return PianoRoll.from_notes(pitch, start, end, grid, tempo=100)
