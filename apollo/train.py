"""Training a model of any family: one plain loop, one folder per run, exact resume.

:func:`train` reads top to bottom: settle the settings (fresh, fine-tuned or resumed), load the
packed dataset, build the networks, then loop over the family's step (the DCGAN's
:class:`~apollo.step.TrainingStep`: the discriminator's update, then the generator's; a sequence
model's :class:`~apollo.step.SequenceStep`) and every so often log, write samples, evaluate and
save a checkpoint. There is no Trainer class and no callback: to change what happens in a step,
change the step. The run folder's layout is in :mod:`apollo.runs`.

Exactness: the batch order is a pure function of the seed and the step, the step's randomness is
reseeded from (seed, rank, step), and training only ever stops between two steps, so on CPU N steps
+ resume + N steps gives bit for bit the weights of 2N steps in one go.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from apollo import distributed
from apollo.checkpoint import latest_checkpoint, read_model_config, save_checkpoint
from apollo.dataset import Batches, DatasetConfig, RollDataset, find_latest_dataset
from apollo.decoding import judged_decoding
from apollo.device import DEVICES, PRECISIONS, choose_precision, resolve_device, use_fast_kernels
from apollo.errors import ApolloError
from apollo.io import write_json
from apollo.key import move_histogram
from apollo.losses import BINARIZE, LOSSES
from apollo.model import PRESETS, Discriminator, Generator, ModelConfig
from apollo.negatives import NEGATIVES
from apollo.roll import ENCODINGS
from apollo.runs import (RunLog, evaluate, find_run, generate_rolls, migrate_train_config, new_run_dir,
                         read_training_checkpoint, source_commit, write_samples)
from apollo.sequence import FAMILIES, SEQUENCE_PRESETS, SequenceConfig, SequenceModel
from apollo.step import Networks, SequenceNetworks, SequenceStep, TrainingStep
from apollo.terms import check_terms, outdated, versions

__all__ = ["TrainConfig", "LOSSES", "train", "saved_train_config", "latest_checkpoint", "resolve_device"]

DEFAULT_MINUTES = 20.0  # how long `apollo train` runs when given neither steps nor minutes
# Settings that shape the networks: a fine-tuned run keeps its checkpoint's.
MODEL_SHAPING = ("model", "preset", "loss", "chroma", "rhythm", "motion", "refine", "refine_residual", "style", "pitch_bias", "nearest",
                 "rhythm_group", "voices", "scaled_biases", "key_contrast")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Saved in config.json and every checkpoint; "auto" and ``None`` mean "choose for
    the device", and the saved config holds the choice."""

    model: str = "dcgan"  # the model family: "dcgan", "lstm", "gru" or "transformer" (apollo.sequence)
    preset: str = "auto"  # model size: "apollo", "small", or "auto" (small on CPU, apollo on CUDA)
    # A sequence family learns by likelihood: of the settings below it uses batch_size, lr, betas,
    # lr_decay_*, lr_floor, ema, seed and those after pitch_bias; the others shape the DCGAN's game.
    loss: str = "bce"  # "bce" (non-saturating), "wgan-gp" or "hinge"
    steps: int | None = None  # generator updates in all (kept on resume); neither this nor minutes: 20 min
    minutes: float | None = None  # wall-clock budget of this session; with steps, whichever ends first
    batch_size: int = 64  # real examples per discriminator update, per process
    # A fast generator against a slow, R1-regularized discriminator: with equal rates and no R1 the
    # discriminator wins within 100-300 steps at any rate tried (docs/training.md).
    lr: float = 4e-4  # generator learning rate
    d_lr: float = 1e-4  # discriminator learning rate
    betas: tuple[float, float] = (0.5, 0.999)  # Adam, as in DCGAN
    # Both rates hold until step lr_decay_start, fall along half a cosine to lr_floor of themselves
    # by step lr_decay_steps and stay there (0: constant rates). Steps count from the run's first,
    # also when resuming or fine-tuning.
    lr_decay_steps: int = 0
    lr_decay_start: int = 0
    lr_floor: float = 0.1
    n_critic: int | None = None  # discriminator updates per generator update (None: 5 for wgan-gp, else 1)
    gp_weight: float = 10.0  # wgan-gp only
    label_smoothing: float = 0.0  # bce only: real examples are labelled 1 - label_smoothing
    instance_noise: float = 0.0  # std of the Gaussian noise added to everything the discriminator sees
    # D sees 0/1 fakes, as real rolls are: "threshold" (at 0.5), "sample" (above a threshold drawn
    # per cell from 0.5 ± binarize_width) or "piece" (one such threshold per roll), straight-through;
    # or "none", the probabilities (apollo.losses.as_judged).
    binarize: str = "threshold"
    binarize_width: float = 0.2  # "sample" and "piece"; 0.5 with "sample": each cell sounds with its probability
    # D sees a silent step's most probable pitch sound above this, as a decoding with `fill` writes
    # it (binarized fakes only; None: off).
    binarize_fill: float | None = None
    # D sees real and generated rolls alike without the sounds shorter than this many steps, as a
    # decoding with this min_length writes them (binarized fakes only; 1: every cell).
    judged_min_length: int = 1
    # A share of the discriminator's fakes replaced by real rolls broken as real music never is
    # (bars that change key, notes twice as long: apollo.negatives), so that it keeps looking at the
    # key and the rhythm after the generator's pieces first get them right (0: off).
    negatives: float = 0.0
    negative_breaks: str = "off_key_bars,half_speed"  # which, comma-separated (apollo.negatives.NEGATIVES)
    augment_transpose: int = 0  # D sees real and fake rolls moved by random -N..N semitones (0: off)
    augment_shift: int = 16  # D sees real and fake rolls moved by random -N..N steps in time (0: off)
    # ... in whole beats, so that D still sees where the beats fall: moved by any number of steps,
    # real notes on the beat look no more real than the generator's off-beat ones.
    shift_in_beats: bool = True
    r1: float = 10.0  # bce and hinge: weight of the R1 penalty, |grad of D at real rolls|^2 / 2 (0: off)
    ema: float = 0.999  # decay of the moving average of G's weights that samples and is saved (0: off)
    # The generator's optional terms and their weights (apollo.terms.TERMS; `apollo train --term`).
    terms: dict[str, float] = field(default_factory=lambda: {"diversity": 1.0})
    chroma: bool = True  # the model's pitch-class paths (ModelConfig.chroma; docs/model.md)
    rhythm: bool = True  # the discriminator's rhythm path (ModelConfig.rhythm; docs/model.md)
    motion: bool = False  # the discriminator's voice-motion path (ModelConfig.motion; docs/model.md)
    nearest: bool = False  # D also sees each roll's overlap with its nearest neighbour in the batch (ModelConfig.nearest)
    rhythm_group: int = 0  # D also sees the rhythm path's features averaged over groups of this many rolls (0: off)
    refine: bool = False  # the generator's last stride-1 layer (ModelConfig.refine; docs/model.md)
    refine_residual: bool = False  # the same view as a residual that starts at zero (ModelConfig.refine_residual)
    style: int = 0  # the generator's style numbers, shared by the whole piece (ModelConfig.style; 0: off)
    pitch_bias: bool = True  # the generator's learned bias per pitch row (ModelConfig.pitch_bias; docs/model.md)
    voices: int = 0  # the generator writes each step as this many voices, one pitch or a rest each (ModelConfig.voices; 0: off)
    scaled_biases: bool = False  # with voices: the pitch and key biases grow with the voices' maps (ModelConfig.scaled_biases)
    key_contrast: float = 0.0  # the generator's key biases standardized to this standard deviation (ModelConfig.key_contrast; 0: off)
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda" or "mps"
    precision: str = "auto"  # "fp32", "bf16" (autocast), or "auto": bf16 only where the hardware has it
    channels_last: bool | None = None  # NHWC memory layout (None: on for CUDA and CPU, where it is faster)
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
    # ... nor one whose bars fall silent more often than real bars do (by more than this share):
    # the mean OA can rise while a generator still leaves holes in its pieces (docs/results.md).
    best_max_silence: float = 0.01

    @property
    def break_names(self) -> tuple[str, ...]:
        """``negative_breaks`` as names of :data:`apollo.negatives.NEGATIVES`."""
        return tuple(self.negative_breaks.split(","))

    def __post_init__(self) -> None:
        if self.model not in FAMILIES:
            raise ValueError(f"model must be one of {', '.join(FAMILIES)}, got {self.model!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.preset not in (*PRESETS, "auto"):
            raise ValueError(f"preset must be one of {', '.join(PRESETS)} or auto, got {self.preset!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        # Runs and commands from before "sample" said true or false.
        if self.binarize in (True, "true", False, "false"):
            object.__setattr__(self, "binarize", "threshold" if self.binarize in (True, "true") else "none")
        if self.binarize not in BINARIZE:
            raise ValueError(f"binarize must be one of {', '.join(BINARIZE)}, got {self.binarize!r}")
        if not 0 < self.binarize_width <= 0.5:
            raise ValueError(f"binarize_width must be in (0, 0.5], got {self.binarize_width}")
        if self.binarize_fill is not None and not 0 < self.binarize_fill < 1:
            raise ValueError(f"binarize_fill must lie strictly between 0 and 1, got {self.binarize_fill}")
        if self.judged_min_length < 1 or (self.judged_min_length > 1 and self.binarize == "none"):
            raise ValueError(f"judged_min_length must be at least 1 step and needs binarized fakes (binarize other "
                             f"than 'none'), got {self.judged_min_length} with binarize {self.binarize!r}")
        if not 0 <= self.negatives < 1:
            raise ValueError(f"negatives must be in [0, 1) (0: off), got {self.negatives}")
        breaks = self.break_names
        if any(name not in NEGATIVES for name in breaks) or len(set(breaks)) < len(breaks):
            raise ValueError(f"negative_breaks must name some of {', '.join(NEGATIVES)} once each, "
                             f"comma-separated, got {self.negative_breaks!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("style", "voices"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0 (0: off), got {getattr(self, name)}")
        if self.scaled_biases and not self.voices:
            raise ValueError("scaled_biases scales the voices' biases and needs voices (--set voices=N)")
        if self.key_contrast < 0 or (self.key_contrast and not self.chroma):
            raise ValueError("key_contrast must be at least 0 (0: off) and needs the chroma paths (chroma = true)")
        if self.rhythm_group < 0 or (self.rhythm_group and not self.rhythm):
            raise ValueError("rhythm_group must be a group size (0: off) and needs the rhythm path (rhythm = true)")
        if self.steps is not None and self.steps < 0 or self.minutes is not None and self.minutes < 0:
            raise ValueError("steps and minutes must not be negative")
        if self.lr_decay_steps < 0 or not 0 <= self.lr_floor <= 1:
            raise ValueError(f"lr_decay_steps must be at least 0 and lr_floor in [0, 1], got "
                             f"{self.lr_decay_steps} and {self.lr_floor}")
        if self.lr_decay_steps and not 0 <= self.lr_decay_start < self.lr_decay_steps:
            raise ValueError(f"lr_decay_start must be in [0, lr_decay_steps), got {self.lr_decay_start}")
        if not 0 <= self.ema < 1:  # a decay of 1 or more never follows the generator; below 0 it diverges
            raise ValueError(f"ema must be in [0, 1) (0: off), got {self.ema}")
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        try:
            object.__setattr__(self, "terms", check_terms(self.terms))  # known names, in registry order
        except ApolloError as error:
            raise ValueError(str(error)) from None


def settle(config: TrainConfig, device: torch.device) -> tuple[TrainConfig, str]:
    """Replace every "choose for the device" setting by its choice, so the saved config says what
    ran; and why the precision is what it is. Neither steps nor minutes: :data:`DEFAULT_MINUTES`."""
    precision, why = choose_precision(config.precision, device)
    return dataclasses.replace(
        config,
        terms=config.terms if config.model == "dcgan" else {},  # the DCGAN's terms: nothing to a sequence model
        minutes=DEFAULT_MINUTES if config.steps is None and config.minutes is None else config.minutes,
        preset=("apollo" if device.type == "cuda" else "small") if config.preset == "auto" else config.preset,
        n_critic=(5 if config.loss == "wgan-gp" and config.model == "dcgan" else 1) if config.n_critic is None
        else config.n_critic,
        precision=precision,
        # NHWC is faster on both in every precision (bench/train.py); MPS: unmeasured.
        channels_last=device.type in ("cuda", "cpu") if config.channels_last is None else config.channels_last,
    ), why


def model_config_for(config: TrainConfig, dataset: RollDataset) -> ModelConfig | SequenceConfig:
    """The preset, shaped for the dataset's rolls; for the DCGAN, with a discriminator norm that suits the loss."""
    if config.model != "dcgan":
        return SequenceConfig(family=config.model, **SEQUENCE_PRESETS[config.preset][config.model],
                              n_pitches=dataset.config.grid.n_pitches, n_steps=dataset.config.n_steps,
                              roll_channels=ENCODINGS[dataset.config.encoding])
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
        motion=config.motion,
        nearest=config.batch_size if config.nearest else 0,  # real and fake halves apart
        rhythm_group=math.gcd(config.rhythm_group, config.batch_size) if config.rhythm_group else 0,  # divides each half
        refine=config.refine,
        refine_residual=config.refine_residual,
        style=config.style,
        pitch_bias=config.pitch_bias,
        voices=config.voices,
        scaled_biases=config.scaled_biases,
        key_contrast=config.key_contrast,
    )


def config_of(state: dict, where: str | Path) -> TrainConfig:
    """The TrainConfig a training checkpoint holds, read as today's (:func:`apollo.runs.migrate_train_config`)."""
    try:
        return TrainConfig(**migrate_train_config(state["train_config"]))
    except (TypeError, ValueError) as error:
        raise ApolloError(f"{where}: the checkpoint's train_config is not usable ({error})") from None


def saved_train_config(checkpoint: str | Path) -> TrainConfig:
    """The settings a training checkpoint was trained with, to change for fine-tuning
    (``train(dataclasses.replace(saved_train_config(path), lr=1e-4), start_from=path)``)."""
    return config_of(read_training_checkpoint(Path(checkpoint)), checkpoint)


def starting_point(config: TrainConfig | None, data, resume, start_from, runs_root) -> tuple:
    """(config, data, saved state or None, run folder or None) for a fresh run, a fine-tune
    (``start_from``) or a resumed run."""
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
            raise ApolloError(f"{start_from}: fine-tuning keeps the model as it is; {', '.join(shaped)} cannot change")
        state = {**state, "best_metric": None}  # the new run keeps its own best
        return config, Path(data if data is not None else state["data"]), state, None
    if resume is not None:
        run_dir = find_run(resume, runs_root)
        state = read_training_checkpoint(run_dir / "checkpoints" / "last.pt")
        saved = config_of(state, run_dir)
        if config is not None:  # how long, where and in what arithmetic may change
            saved = dataclasses.replace(saved, steps=saved.steps if config.steps is None else config.steps,
                                        minutes=saved.minutes if config.minutes is None else config.minutes,
                                        device=config.device, precision=config.precision)
        return saved, Path(state["data"]), state, run_dir
    return config or TrainConfig(), Path(data) if data is not None else find_latest_dataset(), None, None


def build_networks(config: TrainConfig, model_config: ModelConfig, state: dict | None,
                   world: distributed.World) -> Networks:
    """G, D, their optimizers and G's moving average, from ``state`` when there is one; wrapped for
    DistributedDataParallel under torchrun."""
    device = world.device
    torch.manual_seed(config.seed)  # the same weights on every process
    G, D = Generator(model_config).to(device), Discriminator(model_config).to(device)
    g_opt = torch.optim.Adam(G.parameters(), lr=config.lr, betas=config.betas)
    d_opt = torch.optim.Adam(D.parameters(), lr=config.d_lr, betas=config.betas)
    if state is not None:
        try:
            G.load_state_dict(state["generator"])
            D.load_state_dict(state["discriminator"])
            g_opt.load_state_dict(state["g_optimizer"])
            d_opt.load_state_dict(state["d_optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ApolloError(f"the checkpoint does not fit its model config ({str(error)[:200]})") from None
        for optimizer in (g_opt, d_opt):  # a fine-tune may ask for other betas (each step sets the rates)
            for group in optimizer.param_groups:
                group.update(betas=config.betas)
        if isinstance(state.get("torch_rng"), torch.Tensor):
            torch.set_rng_state(state["torch_rng"])
    # The moving average of G's weights is what samples, is evaluated and is exported: it smooths
    # the weights' wandering from step to step without slowing training down.
    G_ema = copy.deepcopy(G).requires_grad_(False) if config.ema else None
    if G_ema is not None and state is not None and "generator_ema" in state:
        G_ema.load_state_dict(state["generator_ema"])
    if config.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    if world.distributed:
        ids = [device.index] if device.type == "cuda" else None
        G, D = nn.parallel.DistributedDataParallel(G, device_ids=ids), nn.parallel.DistributedDataParallel(D, device_ids=ids)
    return Networks(G, D, g_opt, d_opt, G_ema)


def build_sequence_networks(config: TrainConfig, model_config: SequenceConfig, state: dict | None,
                            world: distributed.World) -> SequenceNetworks:
    """A sequence model, its optimizer and its moving average, from ``state`` when there is one.
    Under torchrun the step averages the gradients itself (no DistributedDataParallel wrapper: the
    model's forward samples, and training calls its loss)."""
    torch.manual_seed(config.seed)  # the same weights on every process
    model = SequenceModel(model_config).to(world.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas)
    if state is not None:
        try:
            model.load_state_dict(state["generator"])
            optimizer.load_state_dict(state["g_optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ApolloError(f"the checkpoint does not fit its model config ({str(error)[:200]})") from None
        for group in optimizer.param_groups:
            group.update(betas=config.betas)  # each step sets the rate
        if isinstance(state.get("torch_rng"), torch.Tensor):
            torch.set_rng_state(state["torch_rng"])
    average = copy.deepcopy(model).requires_grad_(False) if config.ema else None
    if average is not None and state is not None and "generator_ema" in state:
        average.load_state_dict(state["generator_ema"])
    return SequenceNetworks(model, optimizer, average)


def validation_rolls(data: Path, config: TrainConfig, fallback: RollDataset) -> list:
    """A fixed, seeded choice of up to ``n_reference`` validation rolls (training rolls where there are none)."""
    val_set = RollDataset(data, split="val")
    val_set = val_set if len(val_set) else fallback
    pick = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(config.seed))
    return val_set.rolls(sorted(pick[: config.n_reference].tolist()))


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


def train(
    config: TrainConfig | None = None,
    *,
    data: str | Path | None = None,
    run: str | Path | None = None,
    resume: str | Path | None = None,
    start_from: str | Path | None = None,
    runs_root: str | Path = "runs",
    progress: bool = True,
    provenance: dict | None = None,
) -> Path:
    """Train a model (``config.model``: the DCGAN or a sequence family) and return the run folder.

    Parameters
    ----------
    config
        How to train (defaults: :class:`TrainConfig`). When resuming, everything comes from the
        checkpoint except how long to go on (``steps``, ``minutes``), the ``device`` and the ``precision``.
    data
        A preprocessed dataset folder; default: the most recent one under ``datasets/``.
    run
        The new run's folder; default: ``<runs_root>/<date-time>``. It must not exist yet.
    resume
        A run folder (or name under ``runs_root``) to continue from its ``last.pt``.
    start_from
        A training checkpoint (``last.pt`` or ``best.pt``) to fine-tune: a new run that goes on from
        its weights, optimizers, moving average and step with ``config``'s settings (start from
        :func:`saved_train_config` and change what should differ). The model's shape is the checkpoint's;
        ``data`` defaults to its dataset. The checkpoint's own run is left as it is.
    progress
        Show a progress bar.
    provenance
        Saved in config.json and every checkpoint, beside the code's commit (a recipe names itself here).

    Raises
    ------
    ApolloError
        No dataset, no run to resume, an unreadable or tampered checkpoint, a missing device, a
        fine-tuning config that would change the model's shape.
    """
    # 1. Settings: the resumed run's own, a checkpoint's changed, or fresh ones; then the device's choices.
    config, data, state, run_dir = starting_point(config, data, resume, start_from, runs_root)
    world = distributed.init(resolve_device(config.device))
    device = world.device
    config, why = settle(config, device)
    use_fast_kernels(device)

    # 2. Data: the training split as packed bits, a fixed slice of validation rolls to compare with.
    train_set = RollDataset(data, split="train")
    dataset_config = dataclasses.asdict(train_set.config)
    # A model trained in one key writes in it; generate moves each piece to one of the corpus's keys.
    key_moves = move_histogram(train_set.provenance["transpose"]) if train_set.config.normalize_key else None
    # Compared as configs, so that a checkpoint saved before a field existed reads it as it was then.
    if state is not None and DatasetConfig.from_dict(state["dataset_config"]) != train_set.config:
        raise ApolloError(f"{data} is not the dataset this run was trained on (its config differs)")
    batches = Batches(train_set, config.batch_size, config.seed, world)

    # 3. The networks, their optimizers and the step that trains them.
    model_config = read_model_config(state["model_config"]) if state else model_config_for(config, train_set)
    if config.model == "dcgan":
        networks = build_networks(config, model_config, state, world)
        training_step = TrainingStep(config, networks, encoding=train_set.config.encoding,
                                     steps_per_beat=train_set.config.grid.steps_per_beat, device=device, rank=world.rank)
    else:
        networks = build_sequence_networks(config, model_config, state, world)
        training_step = SequenceStep(config, networks, device=device, rank=world.rank)
    step, best = (state["step"], state.get("best_metric")) if state is not None else (0, None)
    fixed_noise = networks.generator.sample_noise(max(config.n_samples, config.n_eval),
                                                  torch.Generator().manual_seed(config.seed + 1)).to(device)
    provenance = {**(state or {}).get("provenance", {}), **(provenance or {}), "commit": source_commit()}
    judged = judged_decoding(dataclasses.asdict(config))  # samples and evaluations decode as D judged

    # 4. The run folder (main process only): config, logs, and the validation rolls to compare with.
    if world.main:
        if resume is None:
            run_dir = new_run_dir(run, runs_root)
            write_json(run_dir / "config.json", {
                "train_config": dataclasses.asdict(config), "model_config": dataclasses.asdict(model_config),
                "dataset_config": dataset_config, "data": str(data), "device": str(device),
                "world_size": world.size, "provenance": provenance,
                **({"start_from": str(start_from)} if start_from is not None else {}),
            })
        log = RunLog(run_dir, resumed_at=step if resume is not None else None)
        log.event({"event": "resume" if resume is not None else "start", "step": step, "steps": config.steps,
                   "minutes": config.minutes, "device": str(device), "precision": config.precision,
                   "world_size": world.size})
        reference = validation_rolls(data, config, train_set) if config.eval_every else []
    elif resume is None:
        run_dir = Path(run or runs_root)  # the other processes write nothing

    def checkpoint(name: str) -> None:
        save_checkpoint(run_dir / "checkpoints" / f"{name}.pt", {
            **networks.state(), "model_config": dataclasses.asdict(model_config),
            "train_config": dataclasses.asdict(config), "term_versions": versions(config.terms),
            "provenance": provenance, "dataset_config": dataset_config, "data": str(data), "step": step,
            "best_metric": best, **({"key_moves": key_moves} if key_moves is not None else {}),
            "torch_rng": torch.get_rng_state(),
        })

    def write_sample_set() -> None:
        rolls = generate_rolls(networks.sampler, fixed_noise[: config.n_samples], train_set.config, decoding=judged)
        log.image("samples", write_samples(rolls, run_dir / "samples" / f"step-{step:06d}"), step)

    def evaluate_and_keep_best() -> None:
        nonlocal best
        made = generate_rolls(networks.sampler, fixed_noise[: config.n_eval], train_set.config, decoding=judged)
        quality = evaluate(made, reference)
        log.scalars(step, quality, prefix="eval/")
        duplicates = quality["near_duplicate_rate"] or 0.0  # None: fewer than two pieces
        silence = (quality["empty_bar_rate"] or 0.0) - (quality["real/empty_bar_rate"] or 0.0)
        if quality["mean_oa"] is not None and duplicates <= config.best_max_duplicates and \
                silence <= config.best_max_silence and (best is None or quality["mean_oa"] > best):
            best = quality["mean_oa"]
            checkpoint("best")

    # 5. The loop, after a word on what runs where.
    from tqdm import tqdm

    if world.main:
        size = sum(p.numel() for p in networks.generator.parameters())
        say(f"Training the {config.model} ({config.preset}, {size / 1e6:.2f} M parameters) on {device} "
            f"in {config.precision} ({why}); --precision fp32|bf16 overrides")
        for line in outdated(state.get("term_versions", {}), config.terms) if state is not None else ():
            say(f"Note: {line}")

    bar = tqdm(total=config.steps, initial=step, unit="step", dynamic_ncols=True, disable=not (progress and world.main))
    sums, n_summed, interval_start = 0.0, 0, time.perf_counter()
    started = last_save = time.monotonic()
    reason = "done"
    networks.train()
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
            sums = sums + training_step(step, batches, measure_norms=log_now)
            step, n_summed = step + 1, n_summed + 1
            bar.update(1)
            if log_now and world.main:
                speed = n_summed * config.n_critic * config.batch_size * world.size / (time.perf_counter() - interval_start)
                means = log.training(step, time.monotonic() - started, training_step.names, sums / n_summed,
                                     training_step.norm_names, training_step.grad_norms, speed,
                                     penalty=config.loss == "wgan-gp" or bool(config.r1))
                bar.set_postfix(**training_step.postfix(means), sps=f"{means['samples_per_s']:.0f}")
            if log_now:
                sums, n_summed, interval_start = 0.0, 0, time.perf_counter()
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
        for buffer in networks.generator.buffers():
            torch.distributed.broadcast(buffer, 0)
    if world.main:
        if reason != "interrupted":  # a last look at where training ended (Ctrl-C wants out fast)
            if config.sample_every and step % config.sample_every:
                write_sample_set()
            if config.eval_every and step % config.eval_every:
                evaluate_and_keep_best()
        checkpoint("last")
        log.event({"event": "stop", "step": step, "reason": reason, "time": round(time.monotonic() - started, 2)})
        log.close()
        last = run_dir / "checkpoints" / "last.pt"
        if reason == "done":
            say(f"Trained {step} steps; saved {last}")
        else:
            say(f"Stopped at step {step} ({'Ctrl-C' if reason == 'interrupted' else 'time is up'}); "
                f"saved {last}. Continue with: apollo train --resume {run_dir}")
    distributed.shutdown(world)
    return run_dir
