"""The DCGAN: a generator that upsamples noise [C, 2, 8] to a roll, and a discriminator that mirrors it.

Both are plain ``nn.Module`` stacks built in loops from a :class:`ModelConfig`. With the ``apollo``
preset the sizes are ApolloGAN's (noise [7, 2, 8]; generator widths 1024-512-256-128; discriminator
128-256-512-1024-128, then 2048 -> 512 -> 1); ``small`` divides every width by four for CPUs.

Shapes for the default grid (64 pitches, 256 steps), width ``w``, ``n_layers = 5``::

    generator      noise [C, 2, 8] -> [8w, 4, 16] -> [4w, 8, 32] -> [2w, 16, 64] -> [w, 32, 128]
                   -> [roll_channels, 64, 256], sigmoid (the probability of each cell)
                   (with ``voices``: a pitch map and a rest map per voice in place of the
                   sounding plane; each voice picks one pitch or a rest per step)
    discriminator  [roll_channels, 64, 256] -> [w, 32, 128] -> [2w, 16, 64] -> [4w, 8, 32]
                   -> [8w, 4, 16] -> [w, 2, 8] -> flatten 16w -> 4w -> 1 logit

The generator normalizes with layer norm by default (the same in training and in sampling, unlike
batch norm); the discriminator uses spectral norm. docs/model.md has the sizes, the compute and the
measurements behind these choices.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ModelConfig", "PRESETS", "Generator", "Discriminator", "MinibatchStd", "MinibatchNearest", "TimeStream", "group_mean",
           "fold_octaves", "voice_motion", "pair_overlap", "count_parameters", "init_without_checkerboard"]

NORMS = ("batch", "spectral", "layer", "none")
PITCH_CLASSES = 12
REFINE_KERNEL = (3, 5)  # pitches x steps of the generator's last layer with ModelConfig.refine
REFINE_PADDING = tuple(size // 2 for size in REFINE_KERNEL)  # keeps the roll's shape
OUTPUT_BIAS = -3.0  # initial logit of every cell: sigmoid(-3) = 0.047
MOTION_REACH = 12  # semitones: the motion path tells steps of 0..12 apart, and anything wider as one


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the two networks; saved in every checkpoint."""

    width: int = 32  # narrowest hidden width; the widest is width * 2 ** (n_layers - 2)
    noise_channels: int = 7  # C of the noise [C, n_pitches / 2**n_layers, n_steps / 2**n_layers]
    roll_channels: int = 2  # planes of the roll encoding (2 for "onset", 1 otherwise)
    n_pitches: int = 64
    n_steps: int = 256
    n_layers: int = 5  # stride-2 (transposed) convolutions in each network
    kernel: int = 4
    generator_norm: str = "layer"  # "layer" (per sample: same in training and sampling), "batch" or "none"
    discriminator_norm: str = "spectral"  # "spectral", "batch", "layer" or "none" (WGAN-GP: not "batch")
    minibatch_std: int = 0  # D's group size for ProGAN's minibatch standard deviation feature (0: off)
    nearest: int = 0  # D's group size for the overlap of each roll with its nearest neighbour in the group (0: off)
    rhythm_group: int = 0  # D's group size for the mean of the rhythm path's features over the group (0: off)
    chroma: bool = False  # pitch-class paths: G picks a key per sample, D also sees the roll folded to 12 classes
    rhythm: bool = False  # D also sees how many pitches sound and start at each step, along time
    motion: bool = False  # D also sees how far each starting note lies from the nearest note that just ended
    refine: bool = False  # G ends in a stride-1 convolution over neighbouring pitches and steps
    refine_residual: bool = False  # G's output maps pass through a residual of two stride-1 layers that starts at zero
    style: int = 0  # G reads this many numbers from the whole noise and gives them to every position (0: off)
    pitch_bias: bool = False  # G adds a learned bias per pitch row to its logits: which pitches sound at all
    voices: int = 0  # G writes each step as this many voices, each one pitch or a rest (0: every cell on its own)
    scaled_biases: bool = False  # with voices: the pitch and key biases grow with the spread of each voice's pitch map
    key_contrast: float = 0.0  # > 0: each piece's 12 key biases are standardized to this standard deviation (0: learned freely)

    def __post_init__(self) -> None:
        scale = 2**self.n_layers
        if self.n_pitches % scale or self.n_steps % scale:
            raise ValueError(
                f"n_pitches ({self.n_pitches}) and n_steps ({self.n_steps}) must be multiples of "
                f"2**n_layers = {scale}"
            )
        if self.n_layers < 2:
            raise ValueError("n_layers must be at least 2")
        if self.minibatch_std < 0 or self.nearest < 0 or self.rhythm_group < 0:
            raise ValueError("minibatch_std, nearest and rhythm_group must be group sizes (0: off)")
        if self.rhythm_group and not self.rhythm:
            raise ValueError("rhythm_group averages the rhythm path's features and needs rhythm")
        if self.key_contrast < 0 or (self.key_contrast and not self.chroma):
            raise ValueError("key_contrast must be at least 0 (0: off) and needs the chroma paths (chroma = true)")
        if self.style < 0:
            raise ValueError("style must be a number of channels (0: off)")
        if self.voices < 0:
            raise ValueError("voices must be a number of voices (0: off)")
        if self.scaled_biases and not self.voices:
            raise ValueError("scaled_biases scales the voices' biases and needs voices")
        if self.kernel % 2:
            raise ValueError("kernel must be even so that a stride-2 layer exactly halves or doubles")
        for name, value, allowed in (
            ("generator_norm", self.generator_norm, ("layer", "batch", "none")),
            ("discriminator_norm", self.discriminator_norm, NORMS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    @property
    def noise_shape(self) -> tuple[int, int, int]:
        scale = 2**self.n_layers
        return (self.noise_channels, self.n_pitches // scale, self.n_steps // scale)

    @property
    def hidden_widths(self) -> list[int]:
        """Widths after each hidden generator layer, widest first: e.g. 1024, 512, 256, 128."""
        return [self.width * 2**i for i in reversed(range(self.n_layers - 1))]

    @property
    def output_channels(self) -> int:
        """Channels of the generator's last layer: one per roll plane, or with ``voices`` a pitch map
        and a rest map per voice in place of the sounding plane."""
        return self.roll_channels + (2 * self.voices - 1 if self.voices else 0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, ModelConfig] = {
    "apollo": ModelConfig(width=128),  # ApolloGAN's sizes: 11.1 M + 14.2 M parameters
    "small": ModelConfig(width=32),  # for CPUs: about 1/16 of the compute
}


class Generator(nn.Module):
    """Noise [B, *noise_shape] -> cell probabilities [B, roll_channels, n_pitches, n_steps]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        k, pad = config.kernel, config.kernel // 2 - 1
        widths = [config.noise_channels + config.style, *config.hidden_widths]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(widths, widths[1:]):
            layers.append(nn.ConvTranspose2d(n_in, n_out, k, stride=2, padding=pad, bias=False))
            layers.append(norm_layer(config.generator_norm, n_out))
            layers.append(nn.ReLU(inplace=True))
        if config.refine:
            # Each cell of a stride-2 layer's output comes from one of four kernel phases, so
            # neighbouring steps are drawn apart; a last stride-1 layer sees +-2 steps together
            # and can settle where a note ends (docs/model.md).
            layers.append(nn.ConvTranspose2d(widths[-1], widths[-1] // 2, k, stride=2, padding=pad, bias=False))
            layers.append(norm_layer(config.generator_norm, widths[-1] // 2))
            layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Conv2d(widths[-1] // 2, config.output_channels, REFINE_KERNEL, padding=REFINE_PADDING))
        else:
            layers.append(nn.ConvTranspose2d(widths[-1], config.output_channels, k, stride=2, padding=pad))
        self.net = nn.Sequential(*layers)
        # The same view over neighbouring steps as `refine`, added to the maps instead of replacing
        # the last layer: its last weights start at zero, so the generator starts as the plain one
        # does (docs/model.md).
        self.residual = None
        if config.refine_residual:
            self.residual = nn.Sequential(
                nn.Conv2d(config.output_channels, config.width, REFINE_KERNEL, padding=REFINE_PADDING),
                nn.ReLU(inplace=True),
                nn.Conv2d(config.width, config.output_channels, REFINE_KERNEL, padding=REFINE_PADDING))
        self.apply(init_weights)
        if self.residual is not None:
            nn.init.zeros_(self.residual[-1].weight)
            nn.init.zeros_(self.residual[-1].bias)
        for layer in self.net:
            if isinstance(layer, nn.ConvTranspose2d):
                init_without_checkerboard(layer)
        # Start from sparse rolls, as music is (about 5 % of cells sound), not from coin flips:
        # with fakes binarized for the discriminator, 50 % would mean a flood of notes at first.
        nn.init.constant_(self.net[-1].bias, OUTPUT_BIAS)
        if config.voices:  # each voice starts as an even choice among its pitches and the rest
            nn.init.zeros_(self.net[-1].bias[: 2 * config.voices])
        # A key is a choice among the 12 pitch classes, which convolutions along pitch cannot make
        # (they see a few semitones at a time): one bias per pitch class, read from the noise,
        # added to every octave of that class.
        self.key = nn.Linear(math.prod(config.noise_shape), PITCH_CLASSES) if config.chroma else None
        if self.key is not None:
            init_weights(self.key)
        # Each noise position shapes about two bars and convolutions mix neighbours only, so
        # decisions about the whole piece (where it ends, how it moves) have no way across it.
        # Style numbers, read from the whole noise like the key and given to every position, are
        # one (docs/model.md).
        self.style = nn.Linear(math.prod(config.noise_shape), config.style, bias=False) if config.style else None
        if self.style is not None:
            nn.init.normal_(self.style.weight, 0.0, math.prod(config.noise_shape) ** -0.5)  # unit variance, like the noise
        # Which pitches an instrument or a style uses at all is a fact about each row, which
        # convolutions (the same weights at every pitch) can only build from the zero padding at
        # the edges; there they overshoot: the lowest row sounded in 16 % of the pieces of a model
        # trained on chorales, which never use it (docs/model.md). One learned bias per row.
        self.pitch_bias = nn.Parameter(torch.zeros(config.roll_channels, config.n_pitches, 1)) if config.pitch_bias else None

    def forward(self, noise: torch.Tensor, whole: torch.Tensor | None = None) -> torch.Tensor:
        outputs = self.outputs(noise, whole)
        if not self.config.voices:
            return torch.sigmoid(outputs)
        return torch.cat([self.sounding(outputs), torch.sigmoid(outputs[:, 2 * self.config.voices:])], dim=1)

    def logits(self, noise: torch.Tensor, whole: torch.Tensor | None = None) -> torch.Tensor:
        """The logit of each cell's probability (what :meth:`forward` returns before its sigmoid)."""
        if not self.config.voices:
            return self.outputs(noise, whole)
        return torch.logit(self(noise, whole), eps=1e-6)

    def sounding(self, outputs: torch.Tensor) -> torch.Tensor:
        """The sounding plane [B, 1, P, T] from the voices' maps (``voices`` only).

        Monophonic music has one note a step and a chorale four, which a cell-by-cell sigmoid cannot
        say: a step torn between two pitches sounds both, or neither. Each voice instead picks one
        of the pitches or a rest at each step (a softmax; its rest logit is the mean of its rest
        map over pitches), and a cell sounds if any voice sounds it (docs/model.md)."""
        n = self.config.voices
        rest = outputs[:, n : 2 * n].mean(dim=2, keepdim=True)
        choice = torch.softmax(torch.cat([outputs[:, :n], rest], dim=2).float(), dim=2)[:, :, :-1]
        return 1 - torch.prod(1 - choice, dim=1, keepdim=True)

    def outputs(self, noise: torch.Tensor, whole: torch.Tensor | None = None) -> torch.Tensor:
        """The last layer's maps [B, output_channels, P, T] with the pitch and key biases added.

        ``whole`` (default: ``noise``, same shape) is the noise the whole-piece choices, the key
        and the style numbers, are read from. The windows of one long piece all pass the first
        window's, so the piece keeps one key and one character (:mod:`apollo.generate`)."""
        whole = (noise if whole is None else whole).flatten(1)
        inputs = noise
        if self.style is not None:
            style = self.style(whole)[:, :, None, None].expand(-1, -1, *noise.shape[2:])
            inputs = torch.cat([noise, style], dim=1)
        outputs = self.net(inputs)
        if self.residual is not None:
            outputs = outputs + self.residual(outputs)
        gain = self.voice_gain(outputs) if self.config.scaled_biases else None
        if self.pitch_bias is not None:
            outputs = outputs + self.per_map(self.pitch_bias[None], gain)
        if self.key is not None:
            rows = torch.arange(self.config.n_pitches, device=noise.device) % PITCH_CLASSES
            key = self.key(whole)
            if self.config.key_contrast:
                # A learned bias can shrink once the discriminator stops asking for the key, and in
                # the folk runs it did (docs/model.md); standardized, only which classes it favours is learned.
                key = self.config.key_contrast * (key - key.mean(dim=1, keepdim=True)) / \
                    key.std(dim=1, keepdim=True).clamp_min(1e-6)
            key = key[:, None, rows, None].expand(-1, self.config.roll_channels, -1, -1)
            outputs = outputs + self.per_map(key, gain)
        return outputs

    def voice_gain(self, outputs: torch.Tensor) -> torch.Tensor:
        """How much the biases of each voice's pitch map are scaled by [B, voices, 1, 1] (``scaled_biases``).

        A voice's softmax decides by logit differences, so its maps grow to a spread of several
        units while the learned biases stay near 1 and lose their say (docs/model.md). Multiplied
        by the spread of the map they join (its standard deviation over pitches, averaged over
        steps; no gradient flows through it, and never less than 1), they keep their weight."""
        maps = outputs[:, : self.config.voices].detach().float()
        return maps.std(dim=2, keepdim=True).mean(dim=3, keepdim=True).clamp(min=1.0)

    def per_map(self, bias: torch.Tensor, gain: torch.Tensor | None = None) -> torch.Tensor:
        """A bias per roll plane [B, roll_channels, P, 1] as one per output map: with ``voices``, each
        voice's pitch map takes the sounding plane's (times ``gain`` [B, voices, 1, 1] if given), its
        rest map none."""
        if not self.config.voices:
            return bias
        n = self.config.voices
        sounding = bias[:, :1].expand(-1, n, -1, -1)
        maps = torch.cat([sounding, torch.zeros_like(sounding), bias[:, 1:]], dim=1)
        if gain is None:
            return maps
        others = torch.ones_like(gain[:, :1]).expand(-1, maps.shape[1] - n, -1, -1)  # the rest maps, the onset plane
        return maps * torch.cat([gain, others], dim=1).to(maps.dtype)

    @property
    def reads_whole(self) -> bool:
        """Whether any choice is read from the whole noise (key or style), so ``whole`` matters."""
        return self.key is not None or self.style is not None

    def sample_noise(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(n, *self.config.noise_shape, generator=generator, device=device)


class Discriminator(nn.Module):
    """Rolls [B, roll_channels, n_pitches, n_steps] -> one logit each (no sigmoid: the loss applies it)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        k, pad = config.kernel, config.kernel // 2 - 1
        norm = config.discriminator_norm
        # Mirror of the generator, then back down to `width` channels before the dense layers.
        widths = [config.roll_channels, *reversed(config.hidden_widths), config.width]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
            if i == len(widths) - 2 and config.minibatch_std:  # before the last convolution
                layers.append(MinibatchStd(config.minibatch_std))
                n_in += 1
            conv = nn.Conv2d(n_in, n_out, k, stride=2, padding=pad, bias=norm != "batch")
            layers.append(nn.utils.parametrizations.spectral_norm(conv) if norm == "spectral" else conv)
            if i > 0 and norm in ("batch", "layer"):  # "layer" treats each sample alone, as WGAN-GP needs
                layers.append(norm_layer(norm, n_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        _, height, length = config.noise_shape
        flat, hidden = config.width * height * length, 4 * config.width
        dense = [nn.Linear(flat, hidden), nn.Linear(hidden, 1)]
        if norm == "spectral":
            dense = [nn.utils.parametrizations.spectral_norm(layer) for layer in dense]
        self.features = nn.Sequential(*layers, nn.Flatten())
        # Views along time of the roll summed over some of its pitches (see TimeStream).
        self.chroma = TimeStream(PITCH_CLASSES, config) if config.chroma else None
        self.rhythm = TimeStream(config.roll_channels, config) if config.rhythm else None
        self.motion = TimeStream(MOTION_REACH + 2, config) if config.motion else None
        # How near each roll's nearest neighbour in the batch lies (MinibatchNearest): one number.
        self.nearest = MinibatchNearest(config.nearest) if config.nearest else None
        streams = [stream for stream in (self.chroma, self.rhythm, self.motion) if stream is not None]
        if streams or self.nearest is not None:
            flat += sum(stream.n_features for stream in streams) + (self.nearest is not None)
            flat += self.rhythm.n_features if config.rhythm_group else 0
            dense[0] = nn.Linear(flat, hidden)
            if norm == "spectral":
                dense[0] = nn.utils.parametrizations.spectral_norm(dense[0])
        self.head = nn.Sequential(dense[0], nn.LeakyReLU(0.2, inplace=True), dense[1])
        self.apply(init_weights)

    def forward(self, rolls: torch.Tensor) -> torch.Tensor:
        features = [self.features(rolls)]
        if self.chroma is not None:  # plane 0 is "sounding" in every encoding
            features.append(self.chroma(fold_octaves(rolls[:, 0])))
        if self.rhythm is not None:
            features.append(self.rhythm(rolls.sum(dim=2)))
            if self.config.rhythm_group:
                features.append(group_mean(features[-1], self.config.rhythm_group))
        if self.motion is not None:
            onsets = rolls[:, 1] if rolls.shape[1] > 1 else None  # "onset" encoding: plane 1
            features.append(self.motion(voice_motion(rolls[:, 0], onsets)))
        if self.nearest is not None:
            features.append(self.nearest(rolls).to(features[0].dtype))
        return self.head(torch.cat(features, dim=1)).squeeze(1)


class TimeStream(nn.Module):
    """A discriminator path along time: 1-D convolutions over a roll summed across pitches, down to
    as many positions as the main path, whose features join it before the dense layers.

    Two views use it. **Chroma**, after MuseGAN's chroma stream: the sounding plane folded into 12
    pitch classes (:func:`fold_octaves`). Whether a roll keeps to a key is a question about all
    octaves at once, which the 2-D path, a few semitones per kernel, learns slowly if at all.
    **Rhythm**: every plane summed over all pitches, how many pitches sound and how many start at
    each step. Where the onsets fall bar after bar, and how long the texture holds, are questions
    about all voices at once too. **Motion**: how far the notes that start at each step lie from
    the notes that just ended (:func:`voice_motion`), which is how a voice moves.
    """

    def __init__(self, n_channels: int, config: ModelConfig) -> None:
        super().__init__()
        k, pad = config.kernel, config.kernel // 2 - 1
        widths = [n_channels, *reversed(config.hidden_widths), config.width]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(widths, widths[1:]):
            conv = nn.Conv1d(n_in, n_out, k, stride=2, padding=pad)
            layers.append(nn.utils.parametrizations.spectral_norm(conv) if config.discriminator_norm == "spectral" else conv)
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.n_features = config.width * config.noise_shape[2]

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """[B, n_channels, steps] -> [B, n_features]."""
        return self.net(series)


def fold_octaves(cells: torch.Tensor) -> torch.Tensor:
    """[B, pitches, steps] -> [B, 12, steps]: row ``r`` added into class ``r mod 12``."""
    n, n_pitches, n_steps = cells.shape
    octaves = -(-n_pitches // PITCH_CLASSES)
    padded = nn.functional.pad(cells, (0, 0, 0, octaves * PITCH_CLASSES - n_pitches))
    return padded.reshape(n, octaves, PITCH_CLASSES, n_steps).sum(dim=1)


def voice_motion(sounding: torch.Tensor, onsets: torch.Tensor | None = None, reach: int = MOTION_REACH) -> torch.Tensor:
    """How voices move: [B, pitches, steps] -> [B, reach + 2, steps].

    Channel ``d`` (0..reach) counts the notes starting at each step that lie within ``d`` semitones
    of a note ending just before it (the successor in its voice of :mod:`apollo.metrics`, as a
    cumulative count over the step's size); the last channel counts every note starting there.
    A note ends before step ``t`` where it sounds at ``t - 1`` and does not go on sounding at ``t``
    without a new onset. Without an onset plane, a note starts where a row begins to sound.

    The 2-D path sees a few semitones per kernel and mixes a chord's voices with their moves; the
    same counts for every step let the discriminator compare the sizes of steps directly, so that a
    generator whose voices leap is easier to tell from one whose voices move by step.
    """
    previous = nn.functional.pad(sounding, (1, 0))[..., :-1]  # what sounded one step earlier
    if onsets is None:
        onsets = sounding * (1 - previous)
    near = previous * (1 - sounding + onsets).clamp(max=1)  # a note ends here
    counts = [(onsets * near).sum(dim=1)]
    for _ in range(reach):
        # Widened by a semitone each way: is any note ending within one more semitone of each row?
        near = nn.functional.max_pool2d(near[:, None], (3, 1), stride=1, padding=(1, 0))[:, 0]
        counts.append((onsets * near).sum(dim=1))
    counts.append(onsets.sum(dim=1))
    return torch.stack(counts, dim=1)


class MinibatchStd(nn.Module):
    """ProGAN's minibatch standard deviation: one more feature map saying how much the rolls of each
    group of ``group`` consecutive samples differ, so that a generator that writes the same roll over
    and over is easy to catch (mode collapse).

    Groups are consecutive samples, so a batch made of real rolls followed by as many fake ones
    keeps the two apart when its halves are multiples of ``group`` (the trainer makes sure of it).
    """

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        group = self.group if n % self.group == 0 else 1  # a lone sample differs from nothing: 0
        spread = x.float().reshape(n // group, group, -1).var(dim=1, unbiased=False).add(1e-8).sqrt().mean(dim=1)
        feature = spread.repeat_interleave(group).reshape(n, 1, 1, 1).expand(n, 1, height, width)
        return torch.cat([x, feature.to(x.dtype).contiguous(memory_format=_layout(x))], dim=1)


class MinibatchNearest(nn.Module):
    """How much each roll overlaps its nearest neighbour among the ``group`` consecutive rolls it
    is judged with: [B, planes, pitches, steps] -> [B, 1], the largest :func:`pair_overlap` of its
    sounding cells with another roll of the group.

    Real pieces drawn at random seldom share most of their cells; a generator that draws a few
    whole-piece templates gives many of its rolls a twin. ProGAN's standard deviation
    (:class:`MinibatchStd`) averages a group's spread, which a few clusters among varied rolls
    barely move; the nearest neighbour is a fact about each roll. Groups work as there: a batch of
    real rolls followed by as many fakes keeps them apart when the group is the half's size.
    """

    def __init__(self, group: int) -> None:
        super().__init__()
        self.group = group

    def forward(self, rolls: torch.Tensor) -> torch.Tensor:
        n = len(rolls)
        if n % self.group or self.group < 2:  # a lone roll has no neighbour: 0
            return rolls.new_zeros(n, 1)
        cells = rolls[:, 0].float().reshape(n // self.group, self.group, -1)
        overlap = torch.stack([pair_overlap(group) for group in cells])
        alone = torch.eye(self.group, dtype=torch.bool, device=rolls.device)
        return overlap.masked_fill(alone, 0.0).amax(dim=2).reshape(n, 1)


def group_mean(features: torch.Tensor, group: int) -> torch.Tensor:
    """[B, F] -> [B, F]: each row's mean over the ``group`` consecutive rows it belongs to (itself
    alone where ``group`` does not divide B).

    What the discriminator's ``rhythm_group`` view adds: where a group of pieces sits as a whole
    (all slow, say), which a roll scored alone does not show (docs/model.md says what it measured).
    Groups work as for :class:`MinibatchStd`: real and fake halves stay apart when the group
    divides each half.
    """
    n = len(features)
    if n % group:
        return features
    return features.reshape(n // group, group, -1).mean(dim=1).repeat_interleave(group, dim=0)


def pair_overlap(cells: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [B, B]: the overlap (Dice) of the cells of every pair of rolls, 1 for a roll with
    itself; overlap rather than distance, so that adding notes does not buy distance."""
    flat = cells.flatten(1)
    sizes = flat.sum(dim=1)
    return 2 * flat @ flat.T / (sizes[:, None] + sizes[None, :]).clamp_min(1.0)


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Batch norm, layer norm (one group: each sample normalized over channels and positions) or none."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        weight = getattr(module, "parametrizations", None)
        target = weight.weight.original if weight is not None else module.weight
        nn.init.normal_(target, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def init_without_checkerboard(layer: nn.ConvTranspose2d) -> None:
    """Make a stride-2 transposed convolution start out as "nearest-neighbour upsampling, then a
    (k-1) x (k-1) convolution" (Odena et al. 2016, Aitken et al. 2017).

    A stride-2 transposed convolution fills even and odd output cells from different kernel taps.
    With independent random taps the two phases differ, and the generator starts out writing every
    other step and every other pitch: the dotted rows seen in early samples. Summing one random
    (k-1) x (k-1) kernel at the four offsets of a 2 x 2 box gives both phases the same response to
    a smooth input, and training starts from there.
    """
    weight = layer.weight  # [in, out, k, k]
    k = weight.shape[-1]
    small = torch.randn(*weight.shape[:2], k - 1, k - 1, device=weight.device) * weight.std() / 2
    weight.copy_(sum(nn.functional.pad(small, (dx, 1 - dx, dy, 1 - dy)) for dx in (0, 1) for dy in (0, 1)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
