"""Training the DCGAN: one plain loop, one directory per run, exact resume.

:func:`train` reads top to bottom: settle the settings (fresh or resumed), load the packed dataset,
build the two networks, then loop: update the discriminator on a real batch against fresh fakes,
update the generator against the updated discriminator, and every so often log, write samples,
evaluate and save a checkpoint. There is no Trainer class and no callback: to change what happens
in a step, change the loop.

Run layout (``apollo generate`` and the docs rely on it)::

    runs/<name>/config.json                 TrainConfig + ModelConfig + DatasetConfig + data path
    runs/<name>/metrics.jsonl               append-only JSON lines: losses, D(real), D(fake), quality
    runs/<name>/tensorboard/                the same, plus sample images, for TensorBoard
    runs/<name>/checkpoints/last.pt         written atomically every few minutes and at the end
    runs/<name>/checkpoints/best.pt         the checkpoint with the best mean OA so far (no collapse)
    runs/<name>/samples/step-000500/        sample-00.mid ... and rolls.png, from fixed noise

A new run never reuses an existing directory; ``resume`` appends to the run it continues.

Exactness: the batch order is a pure function of the seed and the step (each epoch is a
permutation drawn from a ``torch.Generator`` seeded with (seed, epoch)), the noise generator is
reseeded from (seed, rank, step) at every step, and training only ever stops between two steps, so
on CPU N steps + resume + N steps gives bit for bit the weights of 2N steps in one go.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from apollo import distributed
from apollo.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from apollo.dataset import RollDataset, find_latest_dataset, unpack_bits
from apollo.errors import ApolloError
from apollo.decoding import MIN_LENGTH, Decoding
from apollo.image import roll_image, save_png
from apollo.io import append_jsonl, write_json
from apollo.key import move_histogram
from apollo.metrics import BEATS_PER_BAR, QUALIFIED_STEPS
from apollo.mgeval import LENGTH_CLASSES
from apollo.model import PRESETS, Discriminator, Generator, ModelConfig
from apollo.roll import ENCODINGS, PianoRoll

__all__ = ["TrainConfig", "LOSSES", "train", "saved_train_config", "latest_checkpoint", "resolve_device"]

LOSSES = ("bce", "wgan-gp", "hinge")
R1_EVERY = 4  # steps between R1 penalties (lazy regularization, as in StyleGAN2: a third of the cost)
DEFAULT_MINUTES = 20.0  # how long `apollo train` runs when given neither steps nor minutes
SAMPLE_TEMPO = 100.0  # beats per minute of the sample MIDI files
CLOSE_OVERLAP = 0.5  # pairs of fakes overlapping more than this pay the closeness term (real pairs: about 0.14)
# Settings added after runs were already saved without them: such a run goes on as it trained.
OFF_IN_OLDER_RUNS = {"augment_shift": 0, "r1": 0.0, "ema": 0.0, "shift_in_beats": False, "diversity": 0.0,
                     "chroma": False, "rhythm": False, "refine": False, "confidence": 0.0, "style": 0,
                     "pitch_bias": False, "best_max_duplicates": 1.0, "closeness": 0.0,
                     "character": 0.0, "texture": 0.0, "ending": 0.0, "lengths": 0.0,
                     "length_mix": 0.0, "silence": 0.0}
# Settings that shape the networks: a fine-tuned run keeps its checkpoint's.
MODEL_SHAPING = ("preset", "loss", "chroma", "rhythm", "refine", "style", "pitch_bias")
CHECKPOINT_KEYS = ("generator", "discriminator", "g_optimizer", "d_optimizer", "model_config",
                   "train_config", "dataset_config", "step")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Saved in config.json and every checkpoint; ``None`` means "choose for the device"."""

    preset: str = "auto"  # model size: "apollo", "small", or "auto" (small on CPU, apollo on CUDA)
    loss: str = "bce"  # "bce" (non-saturating), "wgan-gp" or "hinge"
    steps: int | None = None  # generator updates in all (kept on resume); neither this nor minutes: 20 min
    minutes: float | None = None  # wall-clock budget of this session; with steps, whichever ends first
    batch_size: int = 64  # real examples per discriminator update, per process
    # A fast generator against a slow, R1-regularized discriminator: with equal rates and no R1 the
    # discriminator wins within 100-300 steps at any rate tried (5e-5 to 2e-4; docs/results.md).
    lr: float = 4e-4  # generator learning rate
    d_lr: float = 1e-4  # discriminator learning rate
    betas: tuple[float, float] = (0.5, 0.999)  # Adam, as in DCGAN
    n_critic: int | None = None  # discriminator updates per generator update (None: 5 for wgan-gp, else 1)
    gp_weight: float = 10.0  # wgan-gp only
    label_smoothing: float = 0.0  # bce only: real examples are labelled 1 - label_smoothing
    instance_noise: float = 0.0  # std of the Gaussian noise added to everything the discriminator sees
    binarize: bool = True  # D sees fakes thresholded at 0.5 (straight-through gradients), as real rolls are binary
    augment_transpose: int = 0  # D sees real and fake rolls moved by random -N..N semitones (0: off)
    augment_shift: int = 16  # D sees real and fake rolls moved by random -N..N steps in time (0: off)
    # ... in whole beats, so that D still sees where the beats fall: moved by any number of steps,
    # real notes that start on the beat look no more real than the generator's off-beat ones.
    shift_in_beats: bool = True
    r1: float = 10.0  # bce and hinge: weight of the R1 penalty, |grad of D at real rolls|^2 / 2 (0: off)
    ema: float = 0.999  # decay of the moving average of G's weights that samples and is saved (0: off)
    # Without it, samples grew alike within a few hundred steps (docs/results.md).
    diversity: float = 1.0  # weight of the term that makes G pay when its rolls differ less than real ones (0: off)
    closeness: float = 0.0  # weight of G's penalty for pairs of pieces nearly alike (0: off; docs/results.md)
    character: float = 0.0  # weight of the term that makes G pay when its pieces' rhythm varies less or more than real pieces' (0: off)
    texture: float = 0.0  # weight of the term that makes G pay when its pieces' texture (fullness, voices, chord size, note density) drifts from real pieces' on average (0: off)
    lengths: float = 0.0  # weight of the term that makes G pay when its share of short notes differs from real pieces' (0: off)
    length_mix: float = 0.0  # weight of the term that makes G pay when its pieces' mix of note lengths differs from real pieces', on average or in spread (0: off)
    ending: float = 0.0  # weight of the term that makes G pay when its pieces fall silent bar by bar less or more often than real pieces (0: off)
    silence: float = 0.0  # weight of the term that makes G pay when its bars are silent less or more often than real bars, bar by bar (0: off)
    chroma: bool = True  # the model's pitch-class paths (ModelConfig.chroma; docs/model.md)
    rhythm: bool = True  # the discriminator's rhythm path (ModelConfig.rhythm; docs/model.md)
    refine: bool = False  # the generator's last stride-1 layer (ModelConfig.refine; docs/model.md)
    style: int = 0  # the generator's style numbers, shared by the whole piece (ModelConfig.style; 0: off)
    pitch_bias: bool = True  # the generator's learned bias per pitch row (ModelConfig.pitch_bias; docs/model.md)
    confidence: float = 0.0  # weight of G's penalty for probabilities near 0.5 (0: off; docs/results.md)
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "mps"
    bf16: bool | None = None  # bfloat16 autocast (None: on for CUDA and CPU, where it is about 2x faster)
    channels_last: bool | None = None  # NHWC memory layout (None: on for CUDA and CPU)
    log_every: int = 25  # steps between metric lines
    sample_every: int = 500  # steps between sample MIDI files + PNG (0: never)
    eval_every: int = 500  # steps between quality evaluations (0: never)
    checkpoint_minutes: float = 5.0  # minutes between saves of last.pt (also saved at the end)
    n_samples: int = 8  # pieces written per sample set
    n_eval: int = 64  # pieces generated per evaluation
    n_reference: int = 256  # validation chunks they are compared with
    # A generator partly collapsed onto a few pieces can still score a high mean OA; such a
    # checkpoint is never "best" (docs/training.md).
    best_max_duplicates: float = 0.05  # most share of evaluated pieces with a near-duplicate among them

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.preset not in (*PRESETS, "auto"):
            raise ValueError(f"preset must be one of {', '.join(PRESETS)} or auto, got {self.preset!r}")
        if self.device not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"device must be auto, cpu, cuda or mps, got {self.device!r}")
        for name in ("batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.steps is not None and self.steps < 0 or self.minutes is not None and self.minutes < 0:
            raise ValueError("steps and minutes must not be negative")


# -- devices ---------------------------------------------------------------------------------


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; asking for a missing device is an error."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(kind for kind, ok in available.items() if ok)
    if not available.get(name, False):
        raise ApolloError(f"device {name!r} is not available here (try --device cpu)")
    return torch.device(name)


def settle(config: TrainConfig, device: torch.device) -> TrainConfig:
    """Replace every "choose for the device" setting by its choice, so the saved config says what ran."""
    fast = device.type in ("cuda", "cpu")  # bf16 and NHWC pay off there (bench/train.py); MPS: untested
    return dataclasses.replace(
        config,
        preset=("apollo" if device.type == "cuda" else "small") if config.preset == "auto" else config.preset,
        n_critic=(5 if config.loss == "wgan-gp" else 1) if config.n_critic is None else config.n_critic,
        bf16=fast if config.bf16 is None else config.bf16,
        channels_last=fast if config.channels_last is None else config.channels_last,
    )


def model_config_for(config: TrainConfig, dataset: RollDataset) -> ModelConfig:
    """The preset, shaped for the dataset's rolls, with a discriminator norm that suits the loss."""
    # WGAN-GP penalizes the critic's gradient per example, so its critic must not use batch norm,
    # and spectral norm would fight the penalty; it gets layer norm, as in the WGAN-GP paper.
    norm = "layer" if config.loss == "wgan-gp" else PRESETS[config.preset].discriminator_norm
    # Minibatch-std groups must divide the batch, so that no group mixes real and fake rolls.
    group = PRESETS[config.preset].minibatch_std and math.gcd(PRESETS[config.preset].minibatch_std, config.batch_size)
    return dataclasses.replace(
        PRESETS[config.preset],
        minibatch_std=group if group > 1 else 0,
        n_pitches=dataset.config.grid.n_pitches,
        n_steps=dataset.config.n_steps,
        roll_channels=ENCODINGS[dataset.config.encoding],
        discriminator_norm=norm,
        chroma=config.chroma,
        rhythm=config.rhythm,
        refine=config.refine,
        style=config.style,
        pitch_bias=config.pitch_bias,
    )


# -- data ------------------------------------------------------------------------------------


class Batches:
    """Batches of real rolls in a fixed, seeded order, unpacked from bits on the training device.

    The whole packed split moves to the GPU when it fits there, so a batch is one gather and one
    unpack on the device, with no loader process and no stall. On the CPU the rows are gathered from
    the memory-mapped file. Batch ``b`` is a pure function of (seed, b): epoch ``e`` is
    ``randperm(n)`` from a ``torch.Generator`` seeded with (seed, e), and global batch ``b`` holds
    ``batch_size * world.size`` of its indices, of which each process takes every ``world.size``-th.
    """

    def __init__(self, dataset: RollDataset, batch_size: int, seed: int, world: distributed.World) -> None:
        self.shape = dataset.config.shape
        self.n, self.batch_size, self.seed, self.world = len(dataset), batch_size, seed, world
        self.device = world.device
        if self.n == 0:
            raise ApolloError(f"{dataset.path}: the training split is empty")
        packed = np.asarray(dataset.packed)
        if self.device.type == "cuda" and packed.nbytes < 0.25 * torch.cuda.mem_get_info(self.device)[0]:
            self.packed: torch.Tensor | np.ndarray = torch.from_numpy(np.ascontiguousarray(packed)).to(self.device)
        else:
            self.packed = packed
        self.global_batch = batch_size * world.size
        self.per_epoch = max(1, self.n // self.global_batch)  # a batch never straddles two epochs
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def indices(self, b: int) -> torch.Tensor:
        """This process's dataset indices for global batch ``b``."""
        epoch, i = divmod(b, self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.n, generator=generator)
            if self.n < self.global_batch:  # tiny data: repeat the permutation to fill a batch
                order = order.repeat(math.ceil(self.global_batch / self.n))
            self._epoch, self._order = epoch, order
        chunk = self._order[i * self.global_batch : (i + 1) * self.global_batch]
        return chunk[self.world.rank :: self.world.size]

    def __call__(self, b: int) -> torch.Tensor:
        """Real rolls [batch_size, C, pitches, steps] as float32 zeros and ones, on the device."""
        index = self.indices(b)
        if isinstance(self.packed, torch.Tensor):
            rows = self.packed[index.to(self.device, non_blocking=True)]
        else:
            rows = torch.from_numpy(self.packed[index.numpy()])
            if self.device.type != "cpu":
                rows = rows.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" \
                    else rows.to(self.device)
        return unpack_bits(rows, self.shape, dtype=torch.float32)


# -- losses ----------------------------------------------------------------------------------


def discriminator_loss(kind: str, real: torch.Tensor, fake: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """The discriminator's loss from its logits on real and generated rolls (WGAN-GP: without penalty)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(real, torch.full_like(real, 1.0 - smoothing)) + \
            F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    return fake.mean() - real.mean()  # wgan-gp: the critic widens the gap between the two


def generator_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's loss from the discriminator's logits on its rolls."""
    if kind == "bce":  # the non-saturating form: -log D(G(z)), which keeps gradients when D wins
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    return -fake.mean()


def gradient_penalty(scores: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: (|grad of the critic at points between real and fake| - 1) squared, averaged."""
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grad.float().flatten(1).norm(dim=1) - 1.0) ** 2).mean()


def shift_randomly(rolls: torch.Tensor, max_shift: int, dim: int, rng: torch.Generator, unit: int = 1) -> torch.Tensor:
    """Each roll moved along ``dim`` (2: pitch, 3: time) by its own random -N..N cells, in multiples
    of ``unit``, silence filling in.

    Augmentation for the discriminator only, applied alike to real and generated rolls (as in
    DiffAugment): on a few hundred chunks a discriminator otherwise learns the training set by
    heart. It is a permutation of cells, so the generator's gradients pass through it.
    """
    n, size = rolls.shape[0], rolls.shape[dim]
    shift = unit * torch.randint(-(max_shift // unit), max_shift // unit + 1, (n, 1), device=rolls.device, generator=rng)
    source = torch.arange(size, device=rolls.device) - shift  # [n, size]: the cell that lands here
    view = [n, 1, 1, 1]
    view[dim] = size
    inside = ((source >= 0) & (source < size)).to(rolls.dtype).reshape(view)
    index = source.clamp(0, size - 1).reshape(view).expand_as(rolls)
    return torch.gather(rolls, dim, index) * inside


def as_judged(probs: torch.Tensor, binarize: bool, encoding: str) -> torch.Tensor:
    """Generated probabilities as the discriminator judges them: with ``binarize``, 0/1 cells like
    the real rolls (forward: thresholded at 0.5; backward: the identity, straight-through), and,
    for the onset encoding, read as the decoder reads them (:func:`as_decoded`)."""
    if binarize:
        probs = probs + ((probs > 0.5).to(probs.dtype) - probs).detach()
    return as_decoded(probs) if encoding == "onset" else probs


def begins_to_sound(sounding: torch.Tensor) -> torch.Tensor:
    """Cells [..., T] where a pitch sounds and did not one step earlier: where a note must start."""
    return sounding * (1 - F.pad(sounding, (1, 0))[..., :-1])


def as_decoded(planes: torch.Tensor) -> torch.Tensor:
    """Generated onset-encoded planes [B, 2, P, T] as :meth:`PianoRoll.decode` reads them.

    Decoding keeps an onset only where the pitch sounds, and starts a note wherever a pitch begins
    to sound after silence. Real rolls obey both rules cell for cell, so without this a discriminator
    wins by spotting one stray onset in a generated roll, long before it learns anything musical.
    The expression is exact on 0/1 cells (and the identity on real rolls) and smooth in between,
    so the generator's gradients pass through it.
    """
    sounding, onset = planes[:, :1], planes[:, 1:]
    starts = begins_to_sound(sounding)
    onset = sounding * (onset + starts - onset * starts)  # sounding and (onset or start)
    return torch.cat([sounding, onset], dim=1)


def diversity_shortfall(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """A mode-seeking term (after MSGAN, Mao et al. 2019), for G to minimize: how far the rolls of
    the fake batch are, pair by pair, from differing as much as the real batch's rolls differ.

    0 once fakes differ as much as real rolls do, 1 for a collapsed generator (the same roll from
    any noise). Measured against real pairs rather than unbounded, so it asks for real music's
    variety, not for noise.
    """
    return torch.relu(1 - pair_spread(fake) / pair_spread(real).clamp_min(1e-6))


def closeness(fake: torch.Tensor) -> torch.Tensor:
    """A near-duplicate term for G to minimize: over all pairs of fakes, how far each pair's overlap
    (Dice of the cells, as in :func:`apollo.evaluate.overlap_matrix`) exceeds :data:`CLOSE_OVERLAP`,
    scaled to 0..1.

    :func:`diversity_shortfall` averages over pairs, so a generator can meet it while writing
    clusters of near-identical pieces; this term looks at every pair. 0 when no two fakes overlap
    by more than half (real pairs almost never do), 1 when all are identical. Measured as overlap
    rather than as a distance, so that more notes do not make two pieces further apart (a distance
    made one run flood its rolls with notes; docs/results.md).
    """
    flat = fake.flatten(1)
    sizes = flat.sum(dim=1)
    overlap = 2 * flat @ flat.T / (sizes[:, None] + sizes[None, :]).clamp_min(1.0)
    rows, cols = torch.triu_indices(len(fake), len(fake), offset=1, device=fake.device)
    return (torch.relu(overlap[rows, cols] - CLOSE_OVERLAP) / (1 - CLOSE_OVERLAP)).mean()


def sounding_and_onsets(rolls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rolls [B, planes, P, T] as the decoder reads them -> sounding and onset cells, each [B, P, T].
    Plane 0 is "sounding" in every encoding; plane 1, where there is one, holds the onsets, else a
    note starts where a pitch begins to sound."""
    sounding = rolls[:, 0]
    return sounding, rolls[:, 1] if rolls.shape[1] > 1 else begins_to_sound(sounding)


def rhythm_character(rolls: torch.Tensor, steps_per_beat: int) -> torch.Tensor:
    """Rolls [B, planes, P, T] as the decoder reads them -> [B, 3]: per piece, how many of its
    sounding cells are onsets (1 / the mean note length in steps), how many of its onsets fall
    between beats, and how many of its cells sound. What sets a chorale of running eighths apart
    from one of half notes, or from one that ends halfway. Smooth in the cells.

    Counted per note. Counted per step (does any note start here?), the generator emptied its
    pieces, or the discriminator won, within 450 steps (docs/results.md, "Sixth round").
    """
    sounding, onset = sounding_and_onsets(rolls)
    n_sounding, n_onsets = sounding.sum(dim=(1, 2)), onset.sum(dim=(1, 2))
    between_beats = onset[..., torch.arange(rolls.shape[-1], device=rolls.device) % steps_per_beat != 0].sum(dim=(1, 2))
    return torch.stack([n_onsets / n_sounding.clamp_min(1.0), between_beats / n_onsets.clamp_min(1.0),
                        n_sounding / sounding[0].numel()], dim=1)


def character_gap(fake: torch.Tensor, real: torch.Tensor, steps_per_beat: int) -> torch.Tensor:
    """A term for G to minimize: how far its pieces are from varying in rhythm
    (:func:`rhythm_character`) as much as the real batch's pieces do, relative to the real spread
    and averaged over the three numbers.

    The discriminator judges one piece at a time, so a generator whose every piece has the same
    mix of note lengths passes it, while real chorales range from running eighths to half notes
    (docs/results.md, "Fifth round"). 0 when the fakes' standard deviations equal the real ones,
    1 when every fake is alike. Varying more than real pieces do costs as much as varying less:
    with a one-sided term two runs overshot to 1.6-1.8 times the real spread (docs/results.md,
    "Sixth round").
    """
    spread_fake = rhythm_character(fake, steps_per_beat).std(dim=0)
    spread_real = rhythm_character(real, steps_per_beat).std(dim=0)
    return (1 - spread_fake / spread_real.clamp_min(1e-6)).abs().mean()


def texture(rolls: torch.Tensor) -> torch.Tensor:
    """Rolls [B, planes, P, T] as the decoder reads them -> [B, 4]: per piece, how many of its cells
    sound, how many pitches sound together where any sounds (polyphony), how many notes start
    together where any starts (chord size), and how many of its cells start a note (note density).
    Smooth in the cells; exact on 0/1 cells.
    """
    sounding, onset = sounding_and_onsets(rolls)
    # A step sounds where any pitch does: 1 - prod(1 - cell), exact on 0/1 cells.
    sounding_steps = (1 - (1 - sounding).prod(dim=1)).sum(dim=1)
    onset_steps = (1 - (1 - onset).prod(dim=1)).sum(dim=1)
    n_sounding, n_onsets = sounding.sum(dim=(1, 2)), onset.sum(dim=(1, 2))
    return torch.stack([n_sounding / sounding[0].numel(), n_sounding / sounding_steps.clamp_min(1.0),
                        n_onsets / onset_steps.clamp_min(1.0), n_onsets / sounding[0].numel()], dim=1)


def texture_gap(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """A term for G to minimize: how far its pieces' texture (:func:`texture`) is from the real
    batch's on average, relative to the real mean and averaged over the four numbers.

    The rhythm terms move a piece's note lengths, and the cheapest way to do that is to change how
    many voices sound: with the character term, runs thinned to 3.4 voices (real 4.0) or
    flooded to 11 (docs/results.md, "Sixth round"). This term holds the texture where it is while
    the rhythm moves. 0 when the batch means are equal; |1 - ratio| otherwise.
    """
    mean_fake = texture(fake).mean(dim=0)
    mean_real = texture(real).mean(dim=0)
    return (1 - mean_fake / mean_real.clamp_min(1e-6)).abs().mean()


def lasting_notes(rolls: torch.Tensor, longest: int) -> list[torch.Tensor]:
    """Rolls [B, planes, P, T] as the decoder reads them -> ``longest`` cell maps [B, P, T]; map k:
    a note starts in this cell and lasts more than k steps. Smooth in the cells; exact on 0/1 cells."""
    sounding, onset = sounding_and_onsets(rolls)
    held_on = sounding * (1 - onset)  # the note of the step before goes on
    lasting = [onset]
    for k in range(1, longest):
        lasting.append(lasting[-1] * F.pad(held_on[..., k:], (0, k)))
    return lasting


def short_notes(rolls: torch.Tensor, min_steps: int = QUALIFIED_STEPS,
                shortest: int = MIN_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Rolls [B, planes, P, T] as the decoder reads them -> (notes shorter than ``min_steps``,
    all notes), each counted over the batch. Like the decoder, notes shorter than ``shortest``
    are not notes. Smooth in the cells; exact on 0/1 cells."""
    lasting = lasting_notes(rolls, min_steps)
    notes = lasting[shortest - 1]
    return (notes - lasting[min_steps - 1]).sum(), notes.sum()


def length_gap(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """A term for G to minimize: how far the share of its notes shorter than the qualified length
    (``apollo.metrics.QUALIFIED_STEPS``) is from the real batch's, relative to the real share.

    Fine-tuned with the ending term, the generator wrote 28 % short notes where chorales have 37 %
    (qualified-note rate +14 %; docs/results.md, "Ninth round"): the texture and character terms
    hold the mean note length and its spread between pieces, not the mix within a piece.
    """
    fake_short, fake_notes = short_notes(fake)
    real_short, real_notes = short_notes(real)
    real_share = real_short / real_notes.clamp_min(1.0)
    return (1 - fake_short / fake_notes.clamp_min(1.0) / real_share.clamp_min(1e-6)).abs()


def length_mix(rolls: torch.Tensor, steps_per_beat: int) -> torch.Tensor:
    """Rolls [B, planes, P, T] -> [B, classes]: per piece, the share of its notes in each
    note-length class of MGEval's histogram (``apollo.mgeval.LENGTH_CLASSES``, from a sixteenth),
    the last class holding every note of a bar or longer. 0 for a piece without notes. Smooth in
    the cells; exact on 0/1 cells."""
    # Notes of a bar or longer share the last class: 1 % of chorale notes, and each longer class
    # would cost G a product of cell maps per step of length.
    bounds = [b for b in (int(length * steps_per_beat) for length in LENGTH_CLASSES)
              if b <= BEATS_PER_BAR * steps_per_beat]
    lasting = lasting_notes(rolls, bounds[-1])
    # Notes lasting at least b steps, per piece; a class holds those from its bound to the next.
    at_least = torch.stack([lasting[b - 1].sum(dim=(1, 2)) for b in bounds], dim=1)
    in_class = at_least - F.pad(at_least[:, 1:], (0, 1))
    return in_class / at_least[:, :1].clamp_min(1.0)


def length_mix_gap(fake: torch.Tensor, real: torch.Tensor, steps_per_beat: int) -> torch.Tensor:
    """A term for G to minimize: how far its pieces' note-length mix (:func:`length_mix`) is from
    the real batch's, class by class in mean and in spread over the batch: the summed absolute
    differences (not relative ones: chorales have nearly no notes in some classes).

    Fine-tuned for endings, the generator kept its mean note length and its spread between
    pieces (the character term) while its pieces grew alike in their mix: the standard deviation
    of the share of quarter notes fell from 0.12 to 0.08 (chorales: 0.14 .. 0.16), and a twentieth
    of its notes lasted three steps (chorales: under a hundredth). MGEval's note-length OAs fell
    from 0.85 to 0.75 (docs/results.md, "Tenth round").
    """
    fake_mix, real_mix = length_mix(fake, steps_per_beat), length_mix(real, steps_per_beat)
    return ((fake_mix.mean(dim=0) - real_mix.mean(dim=0)).abs().sum()
            + (fake_mix.std(dim=0) - real_mix.std(dim=0)).abs().sum())


def bar_fullness(rolls: torch.Tensor, steps_per_bar: int) -> torch.Tensor:
    """Rolls [B, planes, P, T] -> [B, T // steps_per_bar]: per piece, the share of each bar's
    cells that sound. 0 for a silent bar; smooth in the cells."""
    sounding, _ = sounding_and_onsets(rolls)
    sounding = sounding[..., : rolls.shape[-1] // steps_per_bar * steps_per_bar]
    return sounding.unflatten(-1, (-1, steps_per_bar)).mean(dim=(1, 3))


def ending_gap(fake: torch.Tensor, real: torch.Tensor, steps_per_bar: int) -> torch.Tensor:
    """A term for G to minimize: how far its pieces' fullness bar by bar (:func:`bar_fullness`)
    is from the real batch's, in mean and in spread at each bar, relative to the real values and
    averaged over both and every bar.

    A chunk of a short chorale ends in silence: bars 9 to 16 of the training chunks are silent in
    16 % to 60 % of them. The discriminator judges one piece at a time and a piece that sounds to
    its end is as real as one that stops, so the generator wrote endings in a fifth of its pieces
    at most (docs/results.md, "Ninth round"). Where some pieces fall silent and others do not, a
    bar's fullness spreads; thinning every piece lowers the mean without the spread, and costs.
    """
    fake_bars, real_bars = bar_fullness(fake, steps_per_bar), bar_fullness(real, steps_per_bar)
    fake_stats = torch.cat([fake_bars.mean(dim=0), fake_bars.std(dim=0)])
    real_stats = torch.cat([real_bars.mean(dim=0), real_bars.std(dim=0)])
    # |1 - fake / real|, and 0 where both are 0 (a bar every real piece fills alike).
    return ((fake_stats - real_stats).abs() / real_stats.clamp_min(1e-6)).mean()


# A bar with this many sounding cells counts as 1/e silent: a lone half note is 0.37, a full
# four-voice bar (64 cells) nothing.
SILENCE_CELLS = 8.0


def bar_silence(rolls: torch.Tensor, steps_per_bar: int) -> torch.Tensor:
    """Rolls [B, planes, P, T] as the decoder reads them -> [B, T // steps_per_bar]: per piece, how
    silent each bar is, ``exp(-sounding cells / SILENCE_CELLS)``: 1 for a silent bar, near 0 for a
    full one, and in between for a bar that holds a note or two. Smooth in the cells."""
    cells_per_bar = rolls.shape[2] * steps_per_bar
    return torch.exp(-bar_fullness(rolls, steps_per_bar) * cells_per_bar / SILENCE_CELLS)


def silence_gap(fake: torch.Tensor, real: torch.Tensor, steps_per_bar: int) -> torch.Tensor:
    """A term for G to minimize: how far the share of its pieces silent in each bar
    (:func:`bar_silence`) is from the real batch's, summed over the bars, relative to the real sum.

    The ending term reads how full each bar is, and a bar holding one lingering note is nearly as
    empty as a silent one: the generator's endings faded out, 8 % of its bars 9 to 16 holding a
    note or two where chorale chunks have under 1 % (they end on a full chord, then silence), and
    the empty-bar rate stayed short (docs/results.md, "Tenth round"). Here such a bar counts as
    barely silent, and its notes pay until they go.
    """
    fake_silent = bar_silence(fake, steps_per_bar).mean(dim=0)
    real_silent = bar_silence(real, steps_per_bar).mean(dim=0)
    return (fake_silent - real_silent).abs().sum() / real_silent.sum().clamp_min(1e-6)


def pair_spread(rolls: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per cell between the first and the second half of a batch."""
    half = len(rolls) // 2
    return (rolls[:half] - rolls[half : 2 * half]).abs().mean()


def uncertainty(probs: torch.Tensor) -> torch.Tensor:
    """How far the generator's probabilities are from 0 or 1, averaged: 1 - |2p - 1|.

    Thresholded, a cell at 0.52 sounds as surely as one at 0.99, so the discriminator's gradient
    (passed straight through the threshold) never asks for sure cells; this term does.
    """
    return (1 - (2 * probs - 1).abs()).mean()


def r1_penalty(scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): the squared gradient of D at real rolls, averaged; it keeps D
    from sharpening its boundary around the training set, which is what lets it run away from G."""
    (grad,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
    return grad.float().flatten(1).square().sum(dim=1).mean()


@torch.no_grad()
def update_ema(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, for weights; buffers are copied."""
    torch._foreach_lerp_(list(average.parameters()), list(model.parameters()), 1.0 - decay)
    for mine, theirs in zip(average.buffers(), model.buffers()):
        mine.copy_(theirs)


def grad_norm(module: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


# -- samples and quality ---------------------------------------------------------------------


@torch.no_grad()
def generate_rolls(generator: Generator, noise: torch.Tensor, dataset_config, batch: int = 64) -> list[PianoRoll]:
    """Rolls from the generator in eval mode, in float32, decoded as ``apollo generate`` decodes a
    model without a decoding of its own (:class:`~apollo.decoding.Decoding`'s defaults)."""
    was_training = generator.training
    generator.eval()
    try:
        probs = torch.cat([generator(z).float().cpu() for z in noise.split(batch)])
    finally:
        generator.train(was_training)
    decoding = Decoding()
    return [decoding.decode(p.numpy(), dataset_config.encoding, dataset_config.grid, SAMPLE_TEMPO) for p in probs]


def write_samples(rolls: list[PianoRoll], folder: Path) -> np.ndarray:
    """sample-NN.mid for each roll and rolls.png of them all; returns the picture for TensorBoard."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, roll in enumerate(rolls):
        roll.to_midi(folder / f"sample-{i:02d}.mid")
    save_png(rolls, folder / "rolls.png")
    return np.concatenate([roll_image(roll, scale=1) for roll in rolls])


def evaluate(generated: list[PianoRoll], reference: list[PianoRoll]) -> dict[str, float | None]:
    """Quality of generated rolls against validation rolls (:func:`apollo.evaluate.compare`).

    "mean_oa" (higher is better) chooses best.pt, among evaluations with few near-duplicates
    (``TrainConfig.best_max_duplicates``). Values that are undefined for these samples
    (nan: e.g. polyphony of silent rolls) become None, so that metrics.jsonl stays valid JSON.
    """
    from apollo.evaluate import compare

    return {key: value if math.isfinite(value) else None for key, value in compare(generated, reference).items()}


# -- run directories and checkpoints ---------------------------------------------------------


def new_run_dir(run: str | Path | None, root: str | Path = "runs") -> Path:
    """Claim a fresh run directory: ``run`` if given (it must not exist), else ``root/<date-time>``."""
    if run is not None:
        path = Path(run)
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise ApolloError(f"{path} already exists: pick a new --run name, or --resume {path}") from None
        return path
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = Path(root) / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)  # mkdir is atomic: two runs started together get different names
            return path
        except FileExistsError:
            continue
    raise ApolloError(f"could not find a free run name under {root}")


def find_run(run: str | Path, root: str | Path = "runs") -> Path:
    """The run to resume: a path, or a name under ``root``; it must hold checkpoints/last.pt."""
    for path in (Path(run), Path(root) / run):
        if (path / "checkpoints" / "last.pt").is_file():
            return path
    raise ApolloError(f"no run to resume at {run} (no checkpoints/last.pt there or under {root}/)")


def saved_train_config(checkpoint: str | Path) -> TrainConfig:
    """The settings a training checkpoint was trained with, to change for fine-tuning
    (``train(dataclasses.replace(saved_train_config(path), texture=2.0), start_from=path)``)."""
    return config_of(read_training_checkpoint(Path(checkpoint)), checkpoint)


def config_of(state: dict, where: str | Path) -> TrainConfig:
    """The TrainConfig a training checkpoint holds; settings it predates are off."""
    try:
        return TrainConfig(**{**OFF_IN_OLDER_RUNS, **state["train_config"],
                              "betas": tuple(state["train_config"]["betas"])})
    except (TypeError, ValueError) as error:
        raise ApolloError(f"{where}: the checkpoint's train_config is not usable ({error})") from None


def read_training_checkpoint(path: Path) -> dict:
    """A training checkpoint, checked for the keys resuming needs (loading never runs its code)."""
    state = load_checkpoint(path)
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise ApolloError(f"{path}: not an Apollo training checkpoint (missing {', '.join(missing)})")
    return state


@contextlib.contextmanager
def stop_on_signal() -> Iterator[dict]:
    """Turn the first Ctrl-C (or SIGTERM) into a request to stop after the current step.

    Stopping between steps keeps the saved state exact for resume. A second Ctrl-C interrupts at
    once. Only the main thread can receive signals; elsewhere this does nothing.
    """
    request = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame) -> None:
        request["stop"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next Ctrl-C is immediate

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def say(message: str) -> None:
    """A line for the person at the terminal, printed cleanly under the progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


# -- the training loop -----------------------------------------------------------------------


def train(
    config: TrainConfig | None = None,
    *,
    data: str | Path | None = None,
    run: str | Path | None = None,
    resume: str | Path | None = None,
    start_from: str | Path | None = None,
    runs_root: str | Path = "runs",
    progress: bool = True,
) -> Path:
    """Train the DCGAN and return the run directory.

    Parameters
    ----------
    config
        How to train (defaults: :class:`TrainConfig`). When resuming, everything comes from the
        checkpoint except how long to go on (``steps``, ``minutes``) and the ``device``.
    data
        A preprocessed dataset folder; default: the most recent one under ``datasets/``.
    run
        The new run's directory; default: ``<runs_root>/<date-time>``. It must not exist yet.
    resume
        A run directory (or name under ``runs_root``) to continue from its ``last.pt``.
    start_from
        A training checkpoint (``last.pt`` or ``best.pt``) to fine-tune: a new run that goes on from
        its weights, optimizers, moving average and step with ``config``'s settings (start from
        :func:`saved_train_config` and change what should differ). The model's shape is the checkpoint's;
        ``data`` defaults to its dataset. The checkpoint's own run is left as it is.
    progress
        Show a progress bar.

    Raises
    ------
    ApolloError
        No dataset, no run to resume, an unreadable or tampered checkpoint, a missing device, a
        fine-tuning config that would change the model's shape.
    """
    # 1. Settings: the resumed run's own, or fresh ones.
    state = None
    if resume is not None and start_from is not None:
        raise ApolloError("resume a run or start from a checkpoint, not both")
    if start_from is not None:
        state = read_training_checkpoint(Path(start_from))
        saved = config_of(state, start_from)
        config = config or saved
        if config.preset == "auto":
            config = dataclasses.replace(config, preset=saved.preset)
        shaped = [name for name in MODEL_SHAPING if getattr(config, name) != getattr(saved, name)]
        if shaped:
            raise ApolloError(f"{start_from}: fine-tuning keeps the model as it is; "
                              f"{', '.join(shaped)} cannot change")
        state = {**state, "best_metric": None}  # the new run keeps its own best
        data = data if data is not None else Path(state["data"])
    if resume is not None:
        run_dir = find_run(resume, runs_root)
        state = read_training_checkpoint(run_dir / "checkpoints" / "last.pt")
        saved = config_of(state, run_dir)
        if config is not None:  # how long and where may change; None keeps the run's own
            saved = dataclasses.replace(
                saved,
                steps=saved.steps if config.steps is None else config.steps,
                minutes=saved.minutes if config.minutes is None else config.minutes,
                device=config.device,
            )
        config = saved
        data = Path(state["data"])
    config = config or TrainConfig()
    data = Path(data) if data is not None else find_latest_dataset()

    device = resolve_device(config.device)
    world = distributed.init(device)
    device = world.device
    config = settle(config, device)
    if config.steps is None and config.minutes is None:
        config = dataclasses.replace(config, minutes=DEFAULT_MINUTES)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # 2. Data: the training split as packed bits, a fixed slice of validation rolls to compare with.
    train_set = RollDataset(data, split="train")
    dataset_config = dataclasses.asdict(train_set.config)
    # A model trained in one key writes in it; generate moves each piece to one of the corpus's keys.
    key_moves = move_histogram(train_set.provenance["transpose"]) if train_set.config.normalize_key else None
    if state is not None and state["dataset_config"] != dataset_config:
        raise ApolloError(f"{data} is not the dataset this run was trained on (its config differs)")
    batches = Batches(train_set, config.batch_size, config.seed, world)

    # 3. The two networks and their optimizers, from the same seed on every process.
    model_config = ModelConfig(**state["model_config"]) if state else model_config_for(config, train_set)
    torch.manual_seed(config.seed)
    G, D = Generator(model_config).to(device), Discriminator(model_config).to(device)
    g_opt = torch.optim.Adam(G.parameters(), lr=config.lr, betas=config.betas)
    d_opt = torch.optim.Adam(D.parameters(), lr=config.d_lr, betas=config.betas)
    # Noise (latent vectors, instance noise, penalty mixing) comes from a generator reseeded from
    # (seed, rank, step) at every step, so it is the same after a resume and differs per process.
    noise_rng = torch.Generator(device)
    step, best = 0, None
    if state is not None:
        try:
            G.load_state_dict(state["generator"])
            D.load_state_dict(state["discriminator"])
            g_opt.load_state_dict(state["g_optimizer"])
            d_opt.load_state_dict(state["d_optimizer"])
            # Loading brings back the saved rates; a fine-tune may have asked for others.
            for optimizer, lr in ((g_opt, config.lr), (d_opt, config.d_lr)):
                for group in optimizer.param_groups:
                    group.update(lr=lr, betas=config.betas)
        except (RuntimeError, ValueError, KeyError) as error:
            raise ApolloError(f"{run_dir}: the checkpoint does not fit its model config ({str(error)[:200]})") from None
        step, best = state["step"], state.get("best_metric")
        if isinstance(state.get("torch_rng"), torch.Tensor):
            torch.set_rng_state(state["torch_rng"])
    # The moving average of G's weights is what samples, is evaluated and is exported: it smooths
    # the weights' wandering from step to step without slowing training down.
    G_ema = copy.deepcopy(G).requires_grad_(False) if config.ema else None
    if G_ema is not None and state is not None and "generator_ema" in state:
        G_ema.load_state_dict(state["generator_ema"])
    if config.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_plain, D_plain = G, D  # the modules themselves, for sampling and for D inside the G step
    G_sampling = G_ema if G_ema is not None else G_plain
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        G = nn.parallel.DistributedDataParallel(G, device_ids=ids)
        D = nn.parallel.DistributedDataParallel(D, device_ids=ids)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(config.bf16) and device.type != "mps")
    layout = torch.channels_last if config.channels_last else torch.contiguous_format

    # 4. The run directory (main process only): config, logs, and what stays fixed across resumes.
    fixed_noise = G_plain.sample_noise(max(config.n_samples, config.n_eval),
                                       torch.Generator().manual_seed(config.seed + 1)).to(device)
    if world.main:
        from torch.utils.tensorboard import SummaryWriter

        if resume is None:
            run_dir = new_run_dir(run, runs_root)
            write_json(run_dir / "config.json", {
                "train_config": dataclasses.asdict(config), "model_config": dataclasses.asdict(model_config),
                "dataset_config": dataset_config, "data": str(data), "device": str(device),
                "world_size": world.size, **({"start_from": str(start_from)} if start_from is not None else {}),
            })
        # purge_step drops TensorBoard events past the checkpoint, which a resumed run redoes.
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step if resume is not None else None)
        metrics = run_dir / "metrics.jsonl"
        append_jsonl(metrics, {"event": "resume" if resume is not None else "start", "step": step, "steps": config.steps,
                               "minutes": config.minutes, "device": str(device), "world_size": world.size})
        reference: list[PianoRoll] = []
        if config.eval_every:
            val_set = RollDataset(data, split="val")
            val_set = val_set if len(val_set) else train_set
            pick = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(config.seed))
            reference = val_set.rolls(sorted(pick[: config.n_reference].tolist()))
    elif resume is None:
        run_dir = Path(run or runs_root)  # the other processes write nothing

    def checkpoint(name: str) -> None:
        save_checkpoint(run_dir / "checkpoints" / f"{name}.pt", {
            "generator": G_plain.state_dict(), "discriminator": D_plain.state_dict(),
            **({"generator_ema": G_ema.state_dict()} if G_ema is not None else {}),
            "g_optimizer": g_opt.state_dict(), "d_optimizer": d_opt.state_dict(),
            "model_config": dataclasses.asdict(model_config), "train_config": dataclasses.asdict(config),
            "dataset_config": dataset_config, "data": str(data), "step": step, "best_metric": best,
            **({"key_moves": key_moves} if key_moves is not None else {}), "torch_rng": torch.get_rng_state(),
        })

    def write_sample_set() -> None:
        rolls = generate_rolls(G_sampling, fixed_noise[: config.n_samples], train_set.config)
        picture = write_samples(rolls, run_dir / "samples" / f"step-{step:06d}")
        writer.add_image("samples", picture, step, dataformats="HWC")

    def evaluate_and_keep_best() -> None:
        nonlocal best
        quality = evaluate(generate_rolls(G_sampling, fixed_noise[: config.n_eval], train_set.config), reference)
        append_jsonl(metrics, {"step": step, **{f"eval/{key}": value for key, value in quality.items()}})
        for key, value in quality.items():
            if value is not None:
                writer.add_scalar(f"eval/{key}", value, step)
        duplicates = quality["near_duplicate_rate"] or 0.0  # None: fewer than two pieces
        if quality["mean_oa"] is not None and duplicates <= config.best_max_duplicates and \
                (best is None or quality["mean_oa"] > best):
            best = quality["mean_oa"]
            checkpoint("best")

    beat = train_set.config.grid.steps_per_beat
    steps_per_bar = BEATS_PER_BAR * beat

    # G's terms beside the adversarial loss: the name it is logged under, its weight, and the term
    # of (fake, real, probabilities). Only weighted ones are computed. New terms go last: the order
    # of the others is the order in which their gradients add up, and keeps older runs bit-exact.
    g_terms = [(name, weight, term) for name, weight, term in (
        ("diversity_shortfall", config.diversity, lambda fake, real, probs: diversity_shortfall(fake, real)),
        ("character_gap", config.character, lambda fake, real, probs: character_gap(fake, real, beat)),
        ("texture_gap", config.texture, lambda fake, real, probs: texture_gap(fake, real)),
        ("length_gap", config.lengths, lambda fake, real, probs: length_gap(fake, real)),
        ("ending_gap", config.ending, lambda fake, real, probs: ending_gap(fake, real, steps_per_bar)),
        ("uncertainty", config.confidence, lambda fake, real, probs: uncertainty(probs.float())),
        ("closeness", config.closeness, lambda fake, real, probs: closeness(fake)),
        ("length_mix_gap", config.length_mix, lambda fake, real, probs: length_mix_gap(fake, real, beat)),
        ("silence_gap", config.silence, lambda fake, real, probs: silence_gap(fake, real, steps_per_bar)),
    ) if weight]

    def seen_by_d(rolls: torch.Tensor) -> torch.Tensor:
        """What the discriminator is shown: real or fake rolls alike, moved at random in pitch
        and in time and blurred by instance noise, as far as the config asks for it."""
        if config.augment_transpose:
            rolls = shift_randomly(rolls, config.augment_transpose, 2, noise_rng)
        if config.augment_shift:
            rolls = shift_randomly(rolls, config.augment_shift, 3, noise_rng, beat if config.shift_in_beats else 1)
        if config.instance_noise:
            rolls = rolls + config.instance_noise * torch.randn(rolls.shape, device=device, generator=noise_rng)
        return rolls

    # 5. The loop.
    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=step, unit="step", dynamic_ncols=True,
               disable=not (progress and world.main))
    kind, n_critic = config.loss, config.n_critic
    as_prob = torch.sigmoid if kind == "bce" else torch.as_tensor  # D(x) as a probability where it is one
    stats = torch.zeros(5 + len(g_terms), device=device)  # running sums of the numbers logged below
    n_stats, interval_start = 0, time.perf_counter()
    started = last_save = time.monotonic()
    reason = "done"
    G.train()
    D.train()
    with stop_on_signal() as request:
        while True:
            # Stop between steps only, so that a checkpoint always holds a whole step.
            if config.steps is not None and step >= config.steps:
                break
            out_of_time = config.minutes is not None and time.monotonic() - started >= 60 * config.minutes
            if (step % config.log_every == 0 or not world.distributed) and \
                    distributed.agree(world, request["stop"] or out_of_time):
                reason = "interrupted" if request["stop"] else "time"
                break
            log_now = (step + 1) % config.log_every == 0
            noise_rng.manual_seed(((config.seed * 1_000_003 + world.rank) * 1_000_000_007 + step) % 2**63)

            # Discriminator: n_critic updates, each on a fresh real batch against fresh fakes.
            for k in range(n_critic):
                real = batches(step * n_critic + k).contiguous(memory_format=layout)
                noise = torch.randn(real.shape[0], *model_config.noise_shape, device=device, generator=noise_rng)
                last = k == n_critic - 1
                with autocast, torch.set_grad_enabled(last):  # the last fakes also train G below
                    probs = G(noise.contiguous(memory_format=layout))
                    fake = as_judged(probs, config.binarize, train_set.config.encoding)
                with autocast:
                    seen_real, seen_fake = seen_by_d(real), seen_by_d(fake.detach())
                    lazy_r1 = config.r1 and kind != "wgan-gp" and step % R1_EVERY == 0
                    if lazy_r1:
                        seen_real = seen_real.detach().requires_grad_(True)
                    inputs = [seen_real, seen_fake]
                    if kind == "wgan-gp":
                        alpha = torch.rand(real.shape[0], 1, 1, 1, device=device, generator=noise_rng)
                        mixed = (alpha * seen_real + (1 - alpha) * seen_fake).detach().requires_grad_(True)
                        inputs.append(mixed)
                    # One pass over real and fake together: one forward per backward, as DDP wants.
                    scores = D(torch.cat(inputs).contiguous(memory_format=layout)).float()
                    real_scores, fake_scores = scores[: len(real)], scores[len(real) : 2 * len(real)]
                    d_loss = discriminator_loss(kind, real_scores, fake_scores, config.label_smoothing)
                    penalty = torch.zeros((), device=device)
                    if kind == "wgan-gp":
                        penalty = gradient_penalty(scores[2 * len(real) :], mixed)
                        d_loss = d_loss + config.gp_weight * penalty
                    elif lazy_r1:  # every R1_EVERY steps, as much as it would weigh in all of them
                        penalty = r1_penalty(real_scores, seen_real)
                        d_loss = d_loss + config.r1 / 2 * R1_EVERY * penalty
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                if log_now and last:
                    d_norm = grad_norm(D_plain)
                d_opt.step()

            # Generator: fool the updated discriminator. D_plain (not the DDP wrapper) with its
            # weights frozen: only G's gradients are wanted, and only G's need averaging.
            D_plain.requires_grad_(False)
            with autocast:
                g_loss = generator_loss(kind, D_plain(seen_by_d(fake).contiguous(memory_format=layout)).float())
                fake_cells, real_cells = fake.float(), real.float()
                terms = [term(fake_cells, real_cells, probs) for _, _, term in g_terms]
                for (_, weight, _), value in zip(g_terms, terms):
                    g_loss = g_loss + weight * value
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            if log_now:
                g_norm = grad_norm(G_plain)
            g_opt.step()
            D_plain.requires_grad_(True)
            step += 1
            if G_ema is not None:
                update_ema(G_ema, G_plain, min(config.ema, step / (step + 10)))

            # Bookkeeping, without a device sync on most steps: sums stay on the device.
            stats += torch.stack([d_loss.detach(), g_loss.detach(), as_prob(real_scores.detach()).mean(),
                                  as_prob(fake_scores.detach()).mean(), penalty.detach(),
                                  *(value.detach() for value in terms)])
            n_stats += 1
            bar.update(1)
            if log_now and world.main:
                d_loss_, g_loss_, d_real, d_fake, pen, *term_means = (stats / n_stats).tolist()
                now = time.perf_counter()
                speed = n_stats * n_critic * config.batch_size * world.size / (now - interval_start)
                record = {"step": step, "time": round(time.monotonic() - started, 2), "d_loss": d_loss_,
                          "g_loss": g_loss_, "d_real": d_real, "d_fake": d_fake,
                          "d_grad_norm": d_norm.item(), "g_grad_norm": g_norm.item(), "samples_per_s": speed}
                if kind == "wgan-gp" or config.r1:
                    record["penalty"] = pen
                record.update((name, value) for (name, _, _), value in zip(g_terms, term_means))
                append_jsonl(metrics, record)
                for key, value in record.items():
                    if key not in ("step", "time"):
                        writer.add_scalar(key, value, step)
                bar.set_postfix(d=f"{d_loss_:.3f}", g=f"{g_loss_:.3f}", real=f"{d_real:.2f}",
                                fake=f"{d_fake:.2f}", sps=f"{speed:.0f}")
            if log_now:
                stats.zero_()
                n_stats, interval_start = 0, time.perf_counter()

            if world.main and config.sample_every and step % config.sample_every == 0:
                write_sample_set()
            if world.main and config.eval_every and step % config.eval_every == 0:
                evaluate_and_keep_best()
            if world.main and time.monotonic() - last_save >= 60 * config.checkpoint_minutes:
                checkpoint("last")
                last_save = time.monotonic()

    # 6. Save where we stopped, and say how to go on.
    bar.close()
    if world.distributed:
        # Batch-norm running statistics drift apart between DDP's broadcasts: end identical.
        for buffer in G_plain.buffers():
            torch.distributed.broadcast(buffer, 0)
    if world.main:
        if reason != "interrupted":  # a last look at where training ended (Ctrl-C wants out fast)
            if config.sample_every and step % config.sample_every:
                write_sample_set()
            if config.eval_every and step % config.eval_every:
                evaluate_and_keep_best()
        checkpoint("last")
        append_jsonl(metrics, {"event": "stop", "step": step, "reason": reason,
                               "time": round(time.monotonic() - started, 2)})
        writer.close()
        last = run_dir / "checkpoints" / "last.pt"
        if reason == "done":
            say(f"Trained {step} steps; saved {last}")
        else:
            say(f"Stopped at step {step} ({'Ctrl-C' if reason == 'interrupted' else 'time is up'}); "
                f"saved {last}. Continue with: apollo train --resume {run_dir}")
    distributed.shutdown(world)
    return run_dir
