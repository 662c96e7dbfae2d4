"""Baselines that a trained model must beat: a first-order Markov chain and density-matched noise.

**Markov chain.** The state is one whole column of cells (which pitches are silent, held or struck
at that step), so chords, voice leading within one step and repeated notes are all part of a state.
:meth:`MarkovChain.fit` counts the transitions between consecutive columns inside each training roll,
and the first column of each roll as a start state. :meth:`MarkovChain.sample` starts from a start
state drawn by its frequency and draws each next column from the counted transitions of the current
one. A state never seen with a successor (the last column of a roll) restarts the chain from a
start state. The chain knows nothing of bars, keys or the step before last, which is what makes it a
baseline: locally plausible, globally aimless, and inclined to copy long runs of its training data
(memorization measures how much).

**Random rolls.** :func:`random_rolls` draws every cell independently: pitch row ``r`` sounds with the
probability it sounds in the given real rolls, and each run of sound is one note. Same density and
pitch profile as the real music, nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from apollo.roll import SILENT, Grid, PianoRoll

__all__ = ["MarkovChain", "random_rolls"]


def _same_grid(rolls: Sequence[PianoRoll]) -> Grid:
    if not rolls:
        raise ValueError("need at least one roll")
    grids = {r.grid for r in rolls}
    if len(grids) > 1:
        raise ValueError(f"rolls must share one grid, got {len(grids)}")
    return rolls[0].grid


@dataclass
class MarkovChain:
    """A first-order chain over columns of cells; see the module docstring."""

    states: np.ndarray  # uint8 [n_states, n_pitches]: each distinct column
    start_counts: np.ndarray  # [n_states]: how often each state begins a roll
    source: np.ndarray  # [n_transitions]: sorted state ids the transitions leave
    target: np.ndarray  # [n_transitions]: state ids they go to
    cumulative: np.ndarray  # [n_transitions]: running total of transition counts
    grid: Grid = Grid()
    tempo: float = 120.0

    @classmethod
    def fit(cls, rolls: Sequence[PianoRoll]) -> MarkovChain:
        """Count column-to-column transitions within each roll (never across two rolls)."""
        grid = _same_grid(rolls)
        columns = np.concatenate([r.cells.T for r in rolls])  # [total steps, n_pitches]
        keys = np.ascontiguousarray(columns).view(np.dtype((np.void, columns.shape[1]))).ravel()
        _, first, ids = np.unique(keys, return_index=True, return_inverse=True)
        ids = ids.ravel()
        states = columns[first]
        lengths = np.array([r.n_steps for r in rolls])
        ends = np.cumsum(lengths)
        follows = np.ones(max(len(ids) - 1, 0), dtype=bool)  # column t+1 follows t in the same roll
        follows[(ends - 1)[ends < len(ids)]] = False
        pairs = ids[:-1][follows] * len(states) + ids[1:][follows]
        codes, counts = np.unique(pairs, return_counts=True)  # sorted by source, then target
        start_counts = np.bincount(ids[(ends - lengths)[lengths > 0]], minlength=len(states))
        return cls(
            states=states,
            start_counts=start_counts,
            source=codes // len(states),
            target=codes % len(states),
            cumulative=np.cumsum(counts),
            grid=grid,
            tempo=float(np.median([r.tempo for r in rolls])),
        )

    @property
    def n_states(self) -> int:
        return len(self.states)

    def sample(self, n: int, n_steps: int, seed: int = 0) -> list[PianoRoll]:
        """``n`` rolls of ``n_steps`` steps, reproducible from ``seed``."""
        rng = np.random.default_rng(seed)
        # Transitions of state s are source == s: rows first[s]:last[s] of the sorted arrays.
        first = np.searchsorted(self.source, np.arange(self.n_states), side="left")
        last = np.searchsorted(self.source, np.arange(self.n_states), side="right")
        before = np.concatenate([[0], self.cumulative])  # running total before each transition
        start_p = self.start_counts / self.start_counts.sum()

        path = np.empty((n, n_steps), dtype=np.int64)
        path[:, 0] = rng.choice(self.n_states, size=n, p=start_p)
        for t in range(1, n_steps):
            s = path[:, t - 1]
            has_next = last[s] > first[s]
            # Draw uniformly within s's share of the running total, then find the transition.
            low, high = before[first[s]], before[last[s]]
            u = low + rng.random(n) * (high - low)
            idx = np.clip(np.searchsorted(self.cumulative, u, side="right"), 0, len(self.target) - 1)
            restart = rng.choice(self.n_states, size=n, p=start_p)
            path[:, t] = np.where(has_next, self.target[idx], restart)
        return [PianoRoll(self.states[p].T, self.grid, self.tempo) for p in path]


def random_rolls(n: int, like: Sequence[PianoRoll], n_steps: int | None = None, seed: int = 0) -> list[PianoRoll]:
    """``n`` rolls of independent random cells, each pitch row as dense as in the rolls ``like``.

    A cell of row ``r`` sounds with probability (sounding cells of row ``r``) / (steps) over ``like``;
    each run of sounding cells is one note. ``n_steps`` defaults to the first roll's length.
    """
    grid = _same_grid(like)
    n_steps = n_steps or like[0].n_steps
    sounding = sum((r.cells > SILENT).sum(axis=1) for r in like)
    density = sounding / sum(r.n_steps for r in like)  # [n_pitches]
    rng = np.random.default_rng(seed)
    tempo = float(np.median([r.tempo for r in like]))
    return [
        PianoRoll.decode(rng.random((grid.n_pitches, n_steps)) < density[:, None], "plain", grid, tempo)
        for _ in range(n)
    ]
