"""Finding a piece in the generator: latent inversion with a mask, and completing a piece around
what is given.

A DCGAN has no encoder, but its generator is differentiable, so the noise that makes a given
piece can be searched for: start from random noise, compare the generator's output with the piece
on the cells that are *known*, and follow the gradient of that difference back to the noise. The
cells that are not known are left to the generator, which fills them in the way it would make
music around what it was shown. That one search serves every way of starting from a user's music
(:mod:`apollo.compose`):

- continue: the known cells are the piece so far, the free ones the bars after it;
- fill in: the known cells are everything outside the chosen bars;
- harmonize: the known cells are the melody and the silence above it, the free ones below it;
- vary: every cell is known; the noise found is then moved part of the way to fresh noise.

The search (:func:`invert`) runs several starts at once and keeps the one that matches best. The
loss is the binary cross-entropy on the known cells of every plane, plus a pull of the noise's
mean square towards 1, where Gaussian noise of this size lies: without it the search drifts to
noise the generator never saw in training, and what it makes in the free cells stops being music.
Only the noise is searched: searching a hidden layer as well reproduces the given music far more
closely (note F1 0.8 against 0.3) but fills the free cells with clouds of notes
(docs/notebook/2026-12-05-searching-the-noise.md), and the given notes are copied back exactly anyway.

A piece longer than the generator's window (16 bars) is completed window by window
(:func:`complete`): each window is placed over the first free cells with up to half a window of
already decided music before them, searched, decoded, and its free cells then count as known for
the windows after it. Only windows with free cells are searched, so continuing a long piece costs
the same as continuing a short one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from apollo.decoding import Decoding
from apollo.model import Generator
from apollo.roll import HELD, ONSET, SILENT, PianoRoll

__all__ = ["Search", "Inversion", "invert", "complete", "join_seams", "note_f1"]


@dataclass(frozen=True)
class Search:
    """How hard to search the noise: Adam steps, parallel starts, step size, the prior's weight and
    how much a known note counts against a known silent cell (about 1 cell in 20 sounds, so
    unweighted cross-entropy is won by matching silence)."""

    steps: int = 50  # twice as many gain 0.01 of note F1 and double the time (docs/compose.md)
    restarts: int = 8
    learning_rate: float = 0.1
    prior: float = 0.1  # weight of (mean square of the noise - 1)^2
    note_weight: float = 4.0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.restarts < 1:
            raise ValueError(f"a search needs steps >= 0 and restarts >= 1, got {self.steps} and {self.restarts}")


@dataclass
class Inversion:
    """The best noise found for one window, what the generator makes of it, and its loss on the known cells."""

    noise: torch.Tensor  # [C, H, W]
    probabilities: np.ndarray  # [planes, pitches, steps]
    loss: float


def invert(
    generator: Generator,
    planes: np.ndarray,
    known: np.ndarray,
    *,
    search: Search = Search(),
    seed: int = 0,
) -> Inversion:
    """Search the generator's noise for one window whose known cells match ``planes``.

    ``planes`` is the window encoded as the model sees it (``[planes, pitches, steps]``, bool or
    0/1) and ``known`` says which cells count, either per cell of every plane (same shape) or per
    (pitch, step) for all planes at once (``[pitches, steps]``). The window must be exactly the
    generator's size. The search is deterministic for a seed.
    """
    target = torch.as_tensor(np.asarray(planes), dtype=torch.float32)
    weight = torch.as_tensor(np.broadcast_to(np.asarray(known, dtype=bool), target.shape).copy(), dtype=torch.float32)
    expected = (generator.config.roll_channels, generator.config.n_pitches, generator.config.n_steps)
    if tuple(target.shape) != expected:
        raise ValueError(f"a window must have shape {expected}, got {tuple(target.shape)}")
    n_known = weight.sum().clamp(min=1.0)

    rng = torch.Generator().manual_seed(seed)
    noise = torch.randn(search.restarts, *generator.config.noise_shape, generator=rng).requires_grad_(True)
    optimizer = torch.optim.Adam([noise], lr=search.learning_rate)
    frozen = [p.requires_grad_(False) for p in generator.parameters()]
    try:
        for _ in range(search.steps):
            match = _match_loss(generator, noise, target, weight, n_known, search.note_weight)
            prior = (noise.pow(2).flatten(1).mean(1) - 1.0).pow(2)
            optimizer.zero_grad(set_to_none=True)
            (match + search.prior * prior).sum().backward()
            optimizer.step()
        with torch.no_grad():
            match = _match_loss(generator, noise, target, weight, n_known, search.note_weight)
            best = int(match.argmin())
            probabilities = generator(noise[best : best + 1])[0].numpy()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return Inversion(noise[best].detach().clone(), probabilities, float(match[best]))


def _match_loss(generator: Generator, noise: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                n_known: torch.Tensor, note_weight: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy on the known cells, one value per start."""
    logits = generator.logits(noise)
    cells = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none",
                                               pos_weight=torch.tensor(note_weight))
    return (cells * weight).flatten(1).sum(1) / n_known


def complete(
    generator: Generator,
    roll: PianoRoll,
    known: np.ndarray,
    *,
    encoding: str,
    decoding: Decoding,
    search: Search = Search(),
    seed: int = 0,
    bar_steps: int = 16,
) -> PianoRoll:
    """The roll with its free cells (``~known``, ``[pitches, steps]``) made by the generator.

    Known cells come back exactly as they were (see :func:`join_seams` for the cells at a seam);
    free cells are decoded with ``decoding`` from the generator's best match to the known ones,
    window by window (module doc). Windows start on bar lines. A roll shorter than one window is
    searched as one window with the rest free, then cut back.
    """
    window = generator.config.n_steps
    n_steps = roll.n_steps
    cells = np.pad(roll.cells, ((0, 0), (0, max(0, window - n_steps))))
    decided = np.pad(np.asarray(known, dtype=bool), ((0, 0), (0, max(0, window - n_steps))))
    given = decided.copy()
    context = window // 2
    last_start = cells.shape[1] - window
    k = 0
    while not decided.all():
        free_steps = np.flatnonzero(~decided.all(axis=0))
        first = int(free_steps[0])
        run = _free_run(free_steps)
        # A short gap sits in the middle of its window (music on both sides); a long one gets half
        # a window of what came before it.
        lead = (window - run) // 2 if run < window else context
        start = min(max(0, (first - lead) // bar_steps * bar_steps), last_start)
        span = slice(start, start + window)
        part = PianoRoll(cells[:, span], roll.grid, roll.tempo)
        found = invert(generator, part.encode(encoding), decided[:, span], search=search, seed=seed + k)
        made = decoding.decode(found.probabilities, encoding, roll.grid, roll.tempo).cells
        free = ~decided[:, span]
        cells[:, span][free] = made[free]
        decided[:, span] = True
        k += 1
    cells = join_seams(cells, given)
    return PianoRoll(cells[:, :n_steps], roll.grid, roll.tempo)


def _free_run(free_steps: np.ndarray) -> int:
    """Length of the first run of consecutive steps in a sorted array of step indices."""
    breaks = np.flatnonzero(np.diff(free_steps) != 1)
    return int(breaks[0] + 1) if len(breaks) else len(free_steps)


def join_seams(cells: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Cells where given and made music meet, set so that no note runs from one into the other.

    A made note held on from a given one would lengthen a given note, and a given note held on from
    a made one would become its tail; both are struck anew instead (HELD becomes ONSET). Every note
    that lies wholly in the given cells therefore comes back with its own start and end.
    """
    cells = cells.copy()
    before_given = np.pad(given, ((0, 0), (1, 0)), constant_values=True)[:, :-1]
    before_sounding = np.pad(cells > SILENT, ((0, 0), (1, 0)))[:, :-1]
    seam = (given != before_given) & before_sounding & (cells == HELD)
    cells[seam] = ONSET
    return cells


def note_f1(made: PianoRoll, real: PianoRoll) -> float:
    """F1 of the notes of ``made`` against ``real``: a note matches one with the same pitch and start.

    1.0 when both are silent. Onsets are what a listener hears as "the same notes"; a small error in
    a note's length does not count against it.
    """
    def onsets(roll: PianoRoll) -> set[tuple[int, int]]:
        pitch, start, _ = roll.notes()
        return set(zip(pitch.tolist(), start.tolist()))

    a, b = onsets(made), onsets(real)
    if not a and not b:
        return 1.0
    return 2 * len(a & b) / (len(a) + len(b))
