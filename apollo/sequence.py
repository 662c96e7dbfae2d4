"""Sequence models: an LSTM, a GRU and a small Transformer that write a roll one time step at a time.

Each time step of a roll is one element of the sequence: its 64 pitches' cells, pitch by pitch
from the lowest (with the onset encoding: sounding, then onset, of pitch 0, then of pitch 1, ...),
128 zeros and ones. A model reads the steps so far and gives the probability of each cell of the
next step. The families differ only in what reads the past: a stacked LSTM or GRU, or pre-norm
Transformer blocks with rotary positions (so attention depends on how far back a step is, not on
where the window began, and a piece can run on past the training length with a sliding window).

Within a step the cells are not independent: a chord is a choice of pitches together. So the last
layer is a chain over the step's cells: cell ``i``'s logit is the network's plus a learned linear
function of the cells below it in the same step (a strictly lower-triangular matrix, as in a fully
visible sigmoid belief net). Training reads every cell at once (teacher forcing); sampling draws
the cells in order, lowest first, and keeps the planes consistent (an onset only where a note
sounds; a note that was silent a step before starts with an onset).

Sampling is a pure function of noise, as the DCGAN's is: a window is drawn from uniforms
``[steps, cells]``, a cell sounding where its uniform lies below its probability (raised to a
temperature). So the trainer's fixed sample noise, seeds and `apollo generate` work the same for
every family.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FAMILIES", "SEQUENCE_FAMILIES", "SEQUENCE_PRESETS", "SequenceConfig", "SequenceModel", "to_steps",
           "to_planes", "sample_piece", "sample_pieces"]

SEQUENCE_FAMILIES = ("lstm", "gru", "transformer")
FAMILIES = ("dcgan", *SEQUENCE_FAMILIES)  # what `apollo train --model` takes
OUTPUT_BIAS = -3.0  # initial logit of every cell, as the DCGAN's: music is sparse
ROPE_BASE = 10_000.0


@dataclass(frozen=True)
class SequenceConfig:
    """Everything needed to rebuild a sequence model; saved in every checkpoint."""

    family: str = "lstm"  # "lstm", "gru" or "transformer"
    width: int = 256  # hidden size (the Transformer's model width)
    n_layers: int = 2
    n_heads: int = 4  # Transformer only
    dropout: float = 0.1
    context: int = 256  # Transformer only: how many steps back attention reaches when sampling
    n_pitches: int = 64
    roll_channels: int = 2  # planes of the roll encoding (2 for "onset")
    n_steps: int = 256  # steps per window: the training chunks, and one sample window

    def __post_init__(self) -> None:
        if self.family not in SEQUENCE_FAMILIES:
            raise ValueError(f"family must be one of {', '.join(SEQUENCE_FAMILIES)}, got {self.family!r}")
        if self.family == "transformer" and (self.width % self.n_heads or (self.width // self.n_heads) % 2):
            raise ValueError(f"width ({self.width}) must split into {self.n_heads} heads of an even size")
        if min(self.width, self.n_layers, self.context, self.n_steps) < 1 or not 0 <= self.dropout < 1:
            raise ValueError("width, n_layers, context and n_steps must be positive, dropout in [0, 1)")

    @property
    def n_cells(self) -> int:
        """Cells per time step: pitches times planes."""
        return self.n_pitches * self.roll_channels

    @property
    def noise_shape(self) -> tuple[int, int]:
        """The uniforms one window is drawn from: [steps, cells]."""
        return (self.n_steps, self.n_cells)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Sizes per preset, chosen so that each family trains on a 2-core CPU in the DCGAN's default
# time (`small`) and has room on a GPU (`apollo`); docs/families.md has the parameters and speeds.
SEQUENCE_PRESETS: dict[str, dict[str, dict]] = {
    "small": {"lstm": dict(width=256, n_layers=2), "gru": dict(width=256, n_layers=2),
              "transformer": dict(width=128, n_layers=4, n_heads=4)},
    "apollo": {"lstm": dict(width=768, n_layers=3), "gru": dict(width=768, n_layers=3),
               "transformer": dict(width=384, n_layers=8, n_heads=6)},
}


def to_steps(planes: torch.Tensor) -> torch.Tensor:
    """Rolls [B, planes, pitches, steps] -> sequences [B, steps, pitches * planes], pitch by pitch."""
    n, channels, pitches, steps = planes.shape
    return planes.permute(0, 3, 2, 1).reshape(n, steps, pitches * channels)


def to_planes(steps: torch.Tensor, channels: int) -> torch.Tensor:
    """The inverse of :func:`to_steps`."""
    n, length, cells = steps.shape
    return steps.reshape(n, length, cells // channels, channels).permute(0, 3, 2, 1)


def rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of queries or keys [B, heads, T, D] at ``positions`` [T]."""
    half = x.shape[-1] // 2
    frequencies = ROPE_BASE ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * frequencies[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


class Block(nn.Module):
    """A pre-norm Transformer block: causal self-attention with rotary positions, then an MLP."""

    def __init__(self, width: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attention_norm, self.mlp_norm = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: dict | None = None,
                context: int = 0) -> torch.Tensor:
        n, length, width = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(n, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = rotate(q, positions), rotate(k, positions)
        if cache is None:  # training: every step at once, each seeing itself and the steps before
            # No dropout on the attention weights: with it, PyTorch's CPU attention takes a path 3x slower.
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # sampling: one new step against the last `context` keys and values
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2)[:, :, -context:], torch.cat([cache["v"], v], dim=2)[:, :, -context:]
            cache["k"], cache["v"] = k, v
            attended = F.scaled_dot_product_attention(q, k, v)
        x = x + self.drop(self.out(attended.transpose(1, 2).reshape(n, length, width)))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class SequenceModel(nn.Module):
    """Steps so far -> the next step's cell logits; called on noise, it samples (module doc)."""

    def __init__(self, config: SequenceConfig) -> None:
        super().__init__()
        self.config = config
        width, cells = config.width, config.n_cells
        self.embed = nn.Linear(cells, width)
        if config.family == "transformer":
            self.blocks = nn.ModuleList(Block(width, config.n_heads, config.dropout) for _ in range(config.n_layers))
        else:
            rnn = nn.LSTM if config.family == "lstm" else nn.GRU
            self.rnn = rnn(width, width, config.n_layers, batch_first=True,
                           dropout=config.dropout if config.n_layers > 1 else 0.0)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, cells)
        nn.init.constant_(self.head.bias, OUTPUT_BIAS)
        # The chain within a step: cell i reads cells 0..i-1 of the same step.
        self.chain = nn.Parameter(torch.zeros(cells, cells))
        self.register_buffer("below", torch.ones(cells, cells).tril(-1), persistent=False)

    def core(self, previous: torch.Tensor, start: int = 0, state=None) -> tuple[torch.Tensor, object]:
        """Hidden states [B, T, width] after reading ``previous`` [B, T, cells] from step ``start``;
        ``state`` carries an RNN's state or the Transformer's key-value caches between calls."""
        x = self.embed(previous)
        if self.config.family != "transformer":
            return self.rnn(x, state)
        positions = torch.arange(start, start + x.shape[1], device=x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, None if state is None else state[i], self.config.context)
        return x, state

    def logits(self, steps: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the logits [B, T, cells] of every step of ``steps`` [B, T, cells], each
        from the steps before it and the cells below it in its own step."""
        previous = F.pad(steps[:, :-1], (0, 0, 1, 0))  # step 0 is read after an all-silent step
        hidden, _ = self.core(previous)
        return self.head(self.norm(hidden)) + steps @ (self.chain * self.below).T

    def loss(self, planes: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of rolls [B, planes, pitches, steps], in nats per time step."""
        steps = to_steps(planes)
        logits = self.logits(steps).float()
        return F.binary_cross_entropy_with_logits(logits, steps, reduction="sum") / (steps.shape[0] * steps.shape[1])

    def sample_noise(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.rand(n, *self.config.noise_shape, generator=generator, device=device)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        """A window of rolls [B, planes, pitches, steps] (zeros and ones) drawn with uniforms ``noise``."""
        return self.sample(noise)

    @torch.no_grad()
    def sample(self, uniforms: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Rolls [B, planes, pitches, T] drawn step by step with ``uniforms`` [B, T, cells]."""
        n, length, cells = uniforms.shape
        channels = self.config.roll_channels
        chain = (self.chain * self.below).to(uniforms.dtype)
        state = [{} for _ in self.blocks] if self.config.family == "transformer" else None
        step = torch.zeros(n, cells, device=uniforms.device)  # before the first step: silence
        drawn = []
        for t in range(length):
            hidden, state = self.core(step[:, None], t, state)
            base = self.head(self.norm(hidden[:, 0])).float()
            sounded_before = step.view(n, -1, channels)[..., 0]
            step = torch.zeros(n, cells, device=uniforms.device)
            for i in range(cells):
                logit = base[:, i] + step[:, :i] @ chain[i, :i]
                cell = (uniforms[:, t, i] < torch.sigmoid(logit / temperature)).float()
                if channels == 2 and i % 2:  # the onset of pitch i // 2, just after its sounding cell
                    sounding = step[:, i - 1]
                    cell = torch.maximum(cell * sounding, sounding * (1 - sounded_before[:, i // 2]))
                step[:, i] = cell
            drawn.append(step)
        return to_planes(torch.stack(drawn, dim=1), channels)


def sample_pieces(model: SequenceModel, n_steps: int, seeds: list[int], temperature: float = 1.0,
                  batch: int = 64) -> torch.Tensor:
    """Pieces [len(seeds), planes, pitches, n_steps] of any length: the model runs on (module doc).
    Each piece's uniforms are drawn window by window from its own seed, so a longer piece starts
    with the shorter one; pieces are drawn ``batch`` at a time, which changes nothing but speed
    (up to float rounding in a cell whose uniform lies within it of its probability)."""
    window, cells = model.config.n_steps, model.config.n_cells
    n_windows = math.ceil(n_steps / window)

    def uniforms(seed: int) -> torch.Tensor:
        rng = torch.Generator().manual_seed(seed)
        return torch.cat([torch.rand(window, cells, generator=rng) for _ in range(n_windows)])[:n_steps]

    with torch.inference_mode():
        return torch.cat([model.sample(torch.stack([uniforms(seed) for seed in seeds[i : i + batch]]), temperature)
                          for i in range(0, len(seeds), batch)])


def sample_piece(model: SequenceModel, n_steps: int, seed: int, temperature: float = 1.0) -> torch.Tensor:
    """One piece [planes, pitches, n_steps] (see :func:`sample_pieces`)."""
    return sample_pieces(model, n_steps, [seed], temperature)[0]
