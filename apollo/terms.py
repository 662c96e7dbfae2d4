"""The generator's optional terms: named, weighted penalties added to its adversarial loss.

The discriminator judges one piece at a time, so what only shows across a batch (variety between
pieces, how often pieces fall silent bar by bar, the mix of note lengths) is invisible to it. Each
term here compares a statistic of the generated batch with the same statistic of the real batch
it is trained against, and is 0 when they agree. Every term reads rolls as the decoder reads them
(plane 0 sounding, plane 1 onsets) and is smooth in the cells, so gradients reach the generator.

Terms live in :data:`TERMS`, in the order in which their gradients are added (which keeps older
runs bit-exact). Each has a name (``apollo train --term NAME=WEIGHT``), a one-line meaning, and a
version that grows whenever its definition changes, so that a checkpoint trained with an older
definition says so (:func:`outdated`).

Several terms are differentiable copies of statistics that ``apollo evaluate`` reports. Numbers a
run was trained to match are not evidence of quality: docs/metrics.md lists which term copies which.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from apollo.decoding import MIN_LENGTH
from apollo.errors import ApolloError
from apollo.losses import begins_to_sound
from apollo.metrics import BEATS_PER_BAR, QUALIFIED_STEPS
from apollo.model import pair_overlap
from apollo.mgeval import LENGTH_CLASSES

__all__ = ["Term", "Batch", "TERMS", "check_terms", "outdated", "RETIRED"]

CLOSE_OVERLAP = 0.5  # pairs of fakes overlapping more than this pay the closeness term (real pairs: about 0.14)
# A bar with this many sounding cells counts as 1/e silent: a lone half note is 0.37, a full
# four-voice bar (64 cells) nothing.
SILENCE_CELLS = 8.0


@dataclass(frozen=True)
class Batch:
    """What a term sees: generated rolls as judged, the real batch, G's raw probabilities, the grid."""

    fake: torch.Tensor  # [B, planes, P, T], float32
    real: torch.Tensor  # [B, planes, P, T], float32, 0/1
    probs: torch.Tensor  # G's output, in the step's precision
    steps_per_beat: int

    @property
    def steps_per_bar(self) -> int:
        return BEATS_PER_BAR * self.steps_per_beat


@dataclass(frozen=True)
class Term:
    name: str
    version: int
    meaning: str  # one line: what the generator pays for
    compute: Callable[[Batch], torch.Tensor]


# -- statistics of a batch of rolls ----------------------------------------------------------


def pair_spread(rolls: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per cell between the first and the second half of a batch."""
    half = len(rolls) // 2
    return (rolls[:half] - rolls[half : 2 * half]).abs().mean()


def sounding_and_onsets(rolls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rolls [B, planes, P, T] as the decoder reads them -> sounding and onset cells, each [B, P, T].
    Plane 0 is "sounding" in every encoding; plane 1, where there is one, holds the onsets, else a
    note starts where a pitch begins to sound."""
    sounding = rolls[:, 0]
    return sounding, rolls[:, 1] if rolls.shape[1] > 1 else begins_to_sound(sounding)


def rhythm_character(rolls: torch.Tensor, steps_per_beat: int) -> torch.Tensor:
    """Rolls -> [B, 3]: per piece, how many of its sounding cells are onsets (1 / the mean note
    length in steps), how many of its onsets fall between beats, and how many of its cells sound.
    Counted per note, not per step."""
    sounding, onset = sounding_and_onsets(rolls)
    n_sounding, n_onsets = sounding.sum(dim=(1, 2)), onset.sum(dim=(1, 2))
    between_beats = onset[..., torch.arange(rolls.shape[-1], device=rolls.device) % steps_per_beat != 0].sum(dim=(1, 2))
    return torch.stack([n_onsets / n_sounding.clamp_min(1.0), between_beats / n_onsets.clamp_min(1.0),
                        n_sounding / sounding[0].numel()], dim=1)


def texture(rolls: torch.Tensor) -> torch.Tensor:
    """Rolls -> [B, 4]: per piece, how many of its cells sound, how many pitches sound together
    where any sounds (polyphony), how many notes start together where any starts (chord size), and
    how many of its cells start a note (note density). Exact on 0/1 cells."""
    sounding, onset = sounding_and_onsets(rolls)
    # A step sounds where any pitch does: 1 - prod(1 - cell), exact on 0/1 cells.
    sounding_steps = (1 - (1 - sounding).prod(dim=1)).sum(dim=1)
    onset_steps = (1 - (1 - onset).prod(dim=1)).sum(dim=1)
    n_sounding, n_onsets = sounding.sum(dim=(1, 2)), onset.sum(dim=(1, 2))
    return torch.stack([n_sounding / sounding[0].numel(), n_sounding / sounding_steps.clamp_min(1.0),
                        n_onsets / onset_steps.clamp_min(1.0), n_onsets / sounding[0].numel()], dim=1)


def lasting_notes(rolls: torch.Tensor, longest: int) -> list[torch.Tensor]:
    """Rolls -> ``longest`` cell maps [B, P, T]; map k: a note starts in this cell and lasts more
    than k steps. Exact on 0/1 cells."""
    sounding, onset = sounding_and_onsets(rolls)
    held_on = sounding * (1 - onset)  # the note of the step before goes on
    lasting = [onset]
    for k in range(1, longest):
        lasting.append(lasting[-1] * F.pad(held_on[..., k:], (0, k)))
    return lasting


def short_notes(rolls: torch.Tensor, min_steps: int = QUALIFIED_STEPS,
                shortest: int = MIN_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Rolls -> (notes shorter than ``min_steps``, all notes), each counted over the batch. Like
    the decoder, notes shorter than ``shortest`` are not notes."""
    lasting = lasting_notes(rolls, min_steps)
    notes = lasting[shortest - 1]
    return (notes - lasting[min_steps - 1]).sum(), notes.sum()


def length_mix(rolls: torch.Tensor, steps_per_beat: int) -> torch.Tensor:
    """Rolls -> [B, classes]: per piece, the share of its notes in each note-length class of
    MGEval's histogram (``apollo.mgeval.LENGTH_CLASSES``, from a sixteenth), the last class holding
    every note of a bar or longer. 0 for a piece without notes."""
    # Longer classes share the last one: they hold about 1 % of chorale notes, and each class
    # would cost a product of cell maps per step of length.
    bounds = [b for b in (int(length * steps_per_beat) for length in LENGTH_CLASSES)
              if b <= BEATS_PER_BAR * steps_per_beat]
    lasting = lasting_notes(rolls, bounds[-1])
    # Notes lasting at least b steps, per piece; a class holds those from its bound to the next.
    at_least = torch.stack([lasting[b - 1].sum(dim=(1, 2)) for b in bounds], dim=1)
    in_class = at_least - F.pad(at_least[:, 1:], (0, 1))
    return in_class / at_least[:, :1].clamp_min(1.0)


def bar_fullness(rolls: torch.Tensor, steps_per_bar: int) -> torch.Tensor:
    """Rolls -> [B, T // steps_per_bar]: per piece, the share of each bar's cells that sound."""
    sounding, _ = sounding_and_onsets(rolls)
    sounding = sounding[..., : rolls.shape[-1] // steps_per_bar * steps_per_bar]
    return sounding.unflatten(-1, (-1, steps_per_bar)).mean(dim=(1, 3))


def bar_silence(rolls: torch.Tensor, steps_per_bar: int) -> torch.Tensor:
    """Rolls -> [B, T // steps_per_bar]: per piece, how silent each bar is,
    ``exp(-sounding cells / SILENCE_CELLS)``: 1 for a silent bar, near 0 for a full one, and in
    between for a bar that holds a note or two."""
    cells_per_bar = rolls.shape[2] * steps_per_bar
    return torch.exp(-bar_fullness(rolls, steps_per_bar) * cells_per_bar / SILENCE_CELLS)


# -- the terms -------------------------------------------------------------------------------


def diversity_shortfall(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Mode seeking (after MSGAN, Mao et al. 2019): how far fake pairs are from differing as much as
    real pairs do. 0 at real music's variety, 1 for a collapsed generator; bounded by the real
    spread, so it asks for variety, not noise."""
    return torch.relu(1 - pair_spread(fake) / pair_spread(real).clamp_min(1e-6))


def closeness(fake: torch.Tensor) -> torch.Tensor:
    """Over every pair of fakes, how far its overlap (Dice of the cells) exceeds
    :data:`CLOSE_OVERLAP`, scaled to 0..1. The diversity term averages over pairs and so misses a
    few clusters of near-identical pieces; this looks at each pair. Overlap rather than distance,
    so that adding notes does not buy distance."""
    overlap = pair_overlap(fake)
    rows, cols = torch.triu_indices(len(fake), len(fake), offset=1, device=fake.device)
    return (torch.relu(overlap[rows, cols] - CLOSE_OVERLAP) / (1 - CLOSE_OVERLAP)).mean()


def character_gap(fake: torch.Tensor, real: torch.Tensor, steps_per_beat: int) -> torch.Tensor:
    """How far the fakes' spread of :func:`rhythm_character` is from the real spread, relative to
    it and averaged over the three numbers: 0 when the standard deviations agree, 1 when every fake
    is alike. Varying more than real pieces costs as much as varying less."""
    spread_fake = rhythm_character(fake, steps_per_beat).std(dim=0)
    spread_real = rhythm_character(real, steps_per_beat).std(dim=0)
    return (1 - spread_fake / spread_real.clamp_min(1e-6)).abs().mean()


def texture_gap(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """How far the fakes' mean :func:`texture` is from the real mean: |1 - ratio|, averaged over
    the four numbers. Holds the number of voices while other terms move the rhythm."""
    mean_fake = texture(fake).mean(dim=0)
    mean_real = texture(real).mean(dim=0)
    return (1 - mean_fake / mean_real.clamp_min(1e-6)).abs().mean()


def length_gap(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """How far the share of fake notes shorter than the qualified length
    (``apollo.metrics.QUALIFIED_STEPS``) is from the real share, relative to it."""
    fake_short, fake_notes = short_notes(fake)
    real_short, real_notes = short_notes(real)
    real_share = real_short / real_notes.clamp_min(1.0)
    return (1 - fake_short / fake_notes.clamp_min(1.0) / real_share.clamp_min(1e-6)).abs()


def length_mix_gap(fake: torch.Tensor, real: torch.Tensor, steps_per_beat: int) -> torch.Tensor:
    """How far the fakes' :func:`length_mix` is from the real batch's, class by class in mean and
    in spread over the batch: summed absolute differences (some classes are nearly empty in real
    music, so relative ones would explode)."""
    fake_mix, real_mix = length_mix(fake, steps_per_beat), length_mix(real, steps_per_beat)
    return ((fake_mix.mean(dim=0) - real_mix.mean(dim=0)).abs().sum()
            + (fake_mix.std(dim=0) - real_mix.std(dim=0)).abs().sum())


def ending_gap(fake: torch.Tensor, real: torch.Tensor, steps_per_bar: int) -> torch.Tensor:
    """How far the fakes' :func:`bar_fullness` is from the real batch's, in mean and in spread at
    each bar, relative to the real values and averaged. Where some pieces fall silent and others do
    not, a bar's fullness spreads; thinning every piece alike lowers the mean without the spread."""
    fake_bars, real_bars = bar_fullness(fake, steps_per_bar), bar_fullness(real, steps_per_bar)
    fake_stats = torch.cat([fake_bars.mean(dim=0), fake_bars.std(dim=0)])
    real_stats = torch.cat([real_bars.mean(dim=0), real_bars.std(dim=0)])
    # |1 - fake / real|, and 0 where both are 0 (a bar every real piece fills alike).
    return ((fake_stats - real_stats).abs() / real_stats.clamp_min(1e-6)).mean()


def silence_gap(fake: torch.Tensor, real: torch.Tensor, steps_per_bar: int) -> torch.Tensor:
    """How far the fakes' share of silent pieces in each bar (:func:`bar_silence`) is from the real
    batch's, summed over the bars, relative to the real sum. A bar holding one lingering note
    counts as barely silent, so its notes pay until they go."""
    fake_silent = bar_silence(fake, steps_per_bar).mean(dim=0)
    real_silent = bar_silence(real, steps_per_bar).mean(dim=0)
    return (fake_silent - real_silent).abs().sum() / real_silent.sum().clamp_min(1e-6)


# The registry, in the order the terms' gradients add up: new terms go last.
TERMS: dict[str, Term] = {term.name: term for term in (
    Term("diversity", 1, "fake rolls differ from each other less than real ones do",
         lambda b: diversity_shortfall(b.fake, b.real)),
    Term("character", 1, "pieces vary in rhythm (note length, off-beat onsets, fullness) less or more than real ones",
         lambda b: character_gap(b.fake, b.real, b.steps_per_beat)),
    Term("texture", 1, "the average texture (fullness, voices, chord size, note density) differs from real pieces'",
         lambda b: texture_gap(b.fake, b.real)),
    Term("lengths", 1, "the share of notes under three steps differs from real pieces'",
         lambda b: length_gap(b.fake, b.real)),
    Term("ending", 1, "bars fall silent from bar to bar less or more often than real pieces' (fullness per bar)",
         lambda b: ending_gap(b.fake, b.real, b.steps_per_bar)),
    Term("closeness", 1, "pairs of pieces overlap by more than half",
         lambda b: closeness(b.fake)),
    Term("length_mix", 1, "the mix of note lengths (MGEval's classes) differs from real pieces', in mean or spread",
         lambda b: length_mix_gap(b.fake, b.real, b.steps_per_beat)),
    Term("silence", 1, "bars are silent less or more often than real bars, a lingering note counting as barely silent",
         lambda b: silence_gap(b.fake, b.real, b.steps_per_bar)),
)}

# Terms that measured no gain and were removed; a run that used one cannot go on with it.
RETIRED = {"confidence": "a penalty on probabilities near 0.5 (it measured no gain; docs/training.md)"}


def check_terms(weights: Mapping[str, float]) -> dict[str, float]:
    """``weights`` in registry order, checked: known names, weights that are numbers >= 0.
    Weight 0 turns a term off and is dropped."""
    for name, weight in weights.items():
        if name not in TERMS:
            if name in RETIRED:
                raise ApolloError(f"the term {name!r} was retired: {RETIRED[name]}")
            near = difflib.get_close_matches(name, TERMS, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise ApolloError(f"no generator term named {name!r}{hint} (terms: {', '.join(TERMS)})")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight >= 0:
            raise ApolloError(f"the weight of term {name!r} must be a number >= 0, got {weight!r}")
    return {name: float(weights[name]) for name in TERMS if weights.get(name)}


def versions(weights: Mapping[str, float]) -> dict[str, int]:
    """The registry's version of each weighted term, saved with a checkpoint."""
    return {name: TERMS[name].version for name in weights}


def outdated(saved_versions: Mapping[str, int], weights: Mapping[str, float]) -> list[str]:
    """One line for each weighted term whose definition changed since the checkpoint was saved.
    Checkpoints from before terms had versions count as version 1."""
    return [f"term {name!r} was trained with version {saved_versions.get(name, 1)} of its definition; "
            f"this Apollo has version {TERMS[name].version} ({TERMS[name].meaning})"
            for name in weights if saved_versions.get(name, 1) != TERMS[name].version]
