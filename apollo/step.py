"""One training step: the DCGAN's (the discriminator's updates, then the generator's), or a sequence
model's (one update on the likelihood of real rolls).

:class:`TrainingStep` and :class:`SequenceStep` are the whole algorithm of a step, and the only
copies of it: ``apollo train`` (:func:`apollo.train.train`) calls one of them in its loop and
bench/train.py times it. Everything random in a step comes from generators reseeded from (seed,
rank, step), so a step is a pure function of the weights, the optimizers' state and the step
number: that is what makes resuming exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from apollo.losses import (R1_EVERY, as_judged, discriminator_loss, generator_loss, gradient_penalty, r1_penalty,
                           shift_randomly)
from apollo.negatives import break_rolls
from apollo.terms import TERMS, Batch

__all__ = ["Networks", "TrainingStep", "SequenceNetworks", "SequenceStep", "update_ema", "grad_norm", "lr_scale"]

STATS = ("d_loss", "g_loss", "d_real", "d_fake", "penalty")  # what every step reports, then its terms
CLIP = 1.0  # a sequence model's gradient norm is clipped to this: recurrent nets' gradients can explode


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of everything random in one step of one process."""
    return ((seed * 1_000_003 + rank) * 1_000_000_007 + step) % 2**63


def lr_scale(step: int, decay_steps: int, floor: float, start: int = 0) -> float:
    """The share of the configured learning rates that step ``step`` trains with: 1 without decay
    (``decay_steps`` 0); else 1 until step ``start``, then half a cosine down to ``floor`` at
    ``decay_steps``, and ``floor`` after (nanoGPT's schedule, without its warm-up)."""
    if not decay_steps:
        return 1.0
    done = min(max(step - start, 0) / (decay_steps - start), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def update_ema(average: nn.Module, model: nn.Module, decay: float) -> None:
    """average <- decay * average + (1 - decay) * model, for weights; buffers are copied."""
    torch._foreach_lerp_(list(average.parameters()), list(model.parameters()), 1.0 - decay)
    for mine, theirs in zip(average.buffers(), model.buffers()):
        mine.copy_(theirs)


def grad_norm(module: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


@dataclass
class Networks:
    """What training updates: the two networks as called (DistributedDataParallel wrappers under
    torchrun), their optimizers, and the moving average of the generator's weights (or None)."""

    G: nn.Module
    D: nn.Module
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    G_ema: nn.Module | None = None

    @property
    def generator(self) -> nn.Module:
        """The generator module itself, unwrapped."""
        return getattr(self.G, "module", self.G)

    @property
    def discriminator(self) -> nn.Module:
        return getattr(self.D, "module", self.D)

    @property
    def sampler(self) -> nn.Module:
        """What samples, is evaluated and is exported: the moving average where there is one."""
        return self.G_ema if self.G_ema is not None else self.generator

    def state(self) -> dict:
        """The weights and optimizer states, as a training checkpoint holds them."""
        return {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                **({"generator_ema": self.G_ema.state_dict()} if self.G_ema is not None else {}),
                "g_optimizer": self.g_opt.state_dict(), "d_optimizer": self.d_opt.state_dict()}

    def train(self) -> None:
        self.G.train()
        self.D.train()


class TrainingStep:
    """``step(i, real_batch)`` trains step ``i``: ``n_critic`` discriminator updates on real batches
    ``real_batch(i * n_critic + k)`` against fresh fakes, then one generator update against the
    updated discriminator, then the moving average. Returns the step's numbers (:attr:`names`) as
    one tensor on the device, so that logging needs no device sync on most steps.

    The networks are called as given (DistributedDataParallel wrappers under torchrun); the plain
    modules inside them are used where only one process's view is wanted.
    """

    def __init__(self, config, networks: Networks, *, encoding: str, steps_per_beat: int, device: torch.device,
                 rank: int = 0) -> None:
        self.config = config
        self.G, self.D, self.g_opt, self.d_opt, self.G_ema = (networks.G, networks.D, networks.g_opt, networks.d_opt,
                                                               networks.G_ema)
        self.G_plain, self.D_plain = networks.generator, networks.discriminator
        self.encoding, self.steps_per_beat, self.device, self.rank = encoding, steps_per_beat, device, rank
        self.terms = [(TERMS[name], weight) for name, weight in config.terms.items()]
        self.names = (*STATS, *(term.name for term, _ in self.terms))
        self.norm_names = ("d_grad_norm", "g_grad_norm")
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        self.layout = torch.channels_last if config.channels_last else torch.contiguous_format
        self.rng = torch.Generator(device)
        self.breaks = config.break_names  # parsed once, not every step
        self.noise_shape = self.G_plain.config.noise_shape
        self.grad_norms = torch.zeros(2, device=device)  # D's and G's, measured when asked

    @staticmethod
    def postfix(means: dict) -> dict:
        """What the progress bar shows of a stretch of steps."""
        return {"d": f"{means['d_loss']:.3f}", "g": f"{means['g_loss']:.3f}", "real": f"{means['d_real']:.2f}",
                "fake": f"{means['d_fake']:.2f}"}

    def seen_by_d(self, rolls: torch.Tensor) -> torch.Tensor:
        """What the discriminator is shown: real or fake rolls alike, moved at random in pitch and in
        time and blurred by instance noise, as far as the config asks for it."""
        config = self.config
        if config.augment_transpose:
            rolls = shift_randomly(rolls, config.augment_transpose, 2, self.rng)
        if config.augment_shift:
            unit = self.steps_per_beat if config.shift_in_beats else 1
            rolls = shift_randomly(rolls, config.augment_shift, 3, self.rng, unit)
        if config.instance_noise:
            rolls = rolls + config.instance_noise * torch.randn(rolls.shape, device=self.device, generator=self.rng)
        return rolls

    def __call__(self, step: int, real_batch: Callable[[int], torch.Tensor], measure_norms: bool = False) -> torch.Tensor:
        config, kind, layout, autocast = self.config, self.config.loss, self.layout, self.autocast
        n_critic = config.n_critic
        self.rng.manual_seed(step_seed(config.seed, self.rank, step))
        scale = lr_scale(step, config.lr_decay_steps, config.lr_floor, config.lr_decay_start)
        set_lr(self.g_opt, config.lr * scale)
        set_lr(self.d_opt, config.d_lr * scale)

        # Discriminator: n_critic updates, each on a fresh real batch against fresh fakes.
        for k in range(n_critic):
            real = real_batch(step * n_critic + k).contiguous(memory_format=layout)
            if config.judged_min_length > 1:  # real rolls as the same decoding would write them
                real = as_judged(real, "threshold", self.encoding, min_length=config.judged_min_length)
            noise = torch.randn(real.shape[0], *self.noise_shape, device=self.device, generator=self.rng)
            last = k == n_critic - 1
            with autocast, torch.set_grad_enabled(last):  # the last fakes also train G below
                probs = self.G(noise.contiguous(memory_format=layout))
                fake = as_judged(probs, config.binarize, self.encoding, self.rng, config.binarize_width,
                                 config.binarize_fill, config.judged_min_length)
            judged_fake = fake.detach()
            if config.negatives:  # some of D's fakes are real rolls made wrong (apollo.negatives)
                k = round(config.negatives * len(real))
                broken = break_rolls(real[:k], self.steps_per_beat, self.rng, self.breaks).to(judged_fake.dtype)
                judged_fake = torch.cat([broken, judged_fake[k:]])
            with autocast:
                seen_real, seen_fake = self.seen_by_d(real), self.seen_by_d(judged_fake)
                lazy_r1 = config.r1 and kind != "wgan-gp" and step % R1_EVERY == 0
                if lazy_r1:
                    seen_real = seen_real.detach().requires_grad_(True)
                inputs = [seen_real, seen_fake]
                if kind == "wgan-gp":
                    alpha = torch.rand(real.shape[0], 1, 1, 1, device=self.device, generator=self.rng)
                    mixed = (alpha * seen_real + (1 - alpha) * seen_fake).detach().requires_grad_(True)
                    inputs.append(mixed)
                # One pass over real and fake together: one forward per backward, as DDP wants.
                scores = self.D(torch.cat(inputs).contiguous(memory_format=layout)).float()
                real_scores, fake_scores = scores[: len(real)], scores[len(real) : 2 * len(real)]
                d_loss = discriminator_loss(kind, real_scores, fake_scores, config.label_smoothing)
                penalty = torch.zeros((), device=self.device)
                if kind == "wgan-gp":
                    penalty = gradient_penalty(scores[2 * len(real) :], mixed)
                    d_loss = d_loss + config.gp_weight * penalty
                elif lazy_r1:  # every R1_EVERY steps, as much as it would weigh in all of them
                    penalty = r1_penalty(real_scores, seen_real)
                    d_loss = d_loss + config.r1 / 2 * R1_EVERY * penalty
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            if measure_norms and last:
                self.grad_norms[0] = grad_norm(self.D_plain)
            self.d_opt.step()

        # Generator: fool the updated discriminator. D_plain (not the DDP wrapper) with its weights
        # frozen: only G's gradients are wanted, and only G's need averaging.
        self.D_plain.requires_grad_(False)
        with autocast:
            g_loss = generator_loss(kind, self.D_plain(self.seen_by_d(fake).contiguous(memory_format=layout)).float())
            batch = Batch(fake.float(), real.float(), probs, self.steps_per_beat)
            terms = [term.compute(batch) for term, _ in self.terms]
            for (_, weight), value in zip(self.terms, terms):
                g_loss = g_loss + weight * value
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        if measure_norms:
            self.grad_norms[1] = grad_norm(self.G_plain)
        self.g_opt.step()
        self.D_plain.requires_grad_(True)
        if self.G_ema is not None:
            done = step + 1
            update_ema(self.G_ema, self.G_plain, min(config.ema, done / (done + 10)))

        as_prob = torch.sigmoid if kind == "bce" else torch.as_tensor  # D(x) as a probability where it is one
        return torch.stack([d_loss.detach(), g_loss.detach(), as_prob(real_scores.detach()).mean(),
                            as_prob(fake_scores.detach()).mean(), penalty.detach(),
                            *(value.detach() for value in terms)])


@dataclass
class SequenceNetworks:
    """What training updates for a sequence model: the model, its optimizer, and the moving average
    of its weights (or None). The checkpoint calls the model "generator", as it is what generates."""

    G: nn.Module
    g_opt: torch.optim.Optimizer
    G_ema: nn.Module | None = None

    @property
    def generator(self) -> nn.Module:
        return self.G

    @property
    def sampler(self) -> nn.Module:
        return self.G_ema if self.G_ema is not None else self.generator

    def state(self) -> dict:
        return {"generator": self.generator.state_dict(), "g_optimizer": self.g_opt.state_dict(),
                **({"generator_ema": self.G_ema.state_dict()} if self.G_ema is not None else {})}

    def train(self) -> None:
        self.G.train()


class SequenceStep:
    """``step(i, real_batch)`` trains a sequence model (:mod:`apollo.sequence`) on real batch ``i``:
    the negative log-likelihood of every cell given the steps before it (teacher forcing), one
    clipped Adam update, then the moving average. Dropout draws from torch's global generator,
    reseeded from (seed, rank, step) as the DCGAN's step reseeds its own. Under torchrun the
    gradients are averaged over the processes before the update."""

    names = ("nll",)  # nats per time step
    norm_names = ("grad_norm",)

    def __init__(self, config, networks: SequenceNetworks, *, device: torch.device, rank: int = 0) -> None:
        self.config, self.networks, self.device, self.rank = config, networks, device, rank
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        self.grad_norms = torch.zeros(1, device=device)

    @staticmethod
    def postfix(means: dict) -> dict:
        return {"nll": f"{means['nll']:.2f}"}

    def __call__(self, step: int, real_batch: Callable[[int], torch.Tensor], measure_norms: bool = False) -> torch.Tensor:
        networks = self.networks
        torch.manual_seed(step_seed(self.config.seed, self.rank, step))
        config = self.config
        set_lr(networks.g_opt, config.lr * lr_scale(step, config.lr_decay_steps, config.lr_floor, config.lr_decay_start))
        real = real_batch(step)
        with self.autocast:
            loss = networks.G.loss(real)
        networks.g_opt.zero_grad(set_to_none=True)
        loss.backward()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for parameter in networks.G.parameters():  # SUM, then divide: gloo has no AVG
                torch.distributed.all_reduce(parameter.grad)
                parameter.grad /= torch.distributed.get_world_size()
        norm = nn.utils.clip_grad_norm_(networks.generator.parameters(), CLIP)
        if measure_norms:
            self.grad_norms[0] = norm
        networks.g_opt.step()
        if networks.G_ema is not None:
            done = step + 1
            update_ema(networks.G_ema, networks.generator, min(self.config.ema, done / (done + 10)))
        return loss.detach()[None]
