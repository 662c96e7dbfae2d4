"""What the adversarial game sees and scores: the GAN losses, their penalties, and the views of a
roll that both networks share.

The discriminator judges generated rolls as the decoder will read them (:func:`as_judged`), and
real and generated rolls alike move at random before it sees them (:func:`shift_randomly`), so
that it cannot win by spotting what no listener would hear or by learning a small corpus by heart.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["BINARIZE", "LOSSES", "R1_EVERY", "discriminator_loss", "generator_loss", "gradient_penalty", "r1_penalty",
           "shift_randomly", "as_judged", "as_decoded", "begins_to_sound", "drop_short_sounds"]

LOSSES = ("bce", "wgan-gp", "hinge")
BINARIZE = ("threshold", "sample", "piece", "none")  # how the discriminator sees generated cells (as_judged)
R1_EVERY = 4  # steps between R1 penalties (lazy regularization, as in StyleGAN2: a third of the cost)


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


def r1_penalty(scores: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): the squared gradient of D at real rolls, averaged; it keeps D
    from sharpening its boundary around the training set, which is what lets it run away from G."""
    (grad,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
    return grad.float().flatten(1).square().sum(dim=1).mean()



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


def as_judged(probs: torch.Tensor, binarize: str, encoding: str, rng: torch.Generator | None = None,
              width: float = 0.5, fill: float | None = None, min_length: int = 1) -> torch.Tensor:
    """Generated probabilities as the discriminator judges them, and, for the onset encoding, read
    as the decoder reads them (:func:`as_decoded`). ``binarize`` (:data:`BINARIZE`) makes 0/1 cells
    like the real rolls, with straight-through gradients (forward: the 0/1 cells; backward: the
    identity): "threshold" sounds a cell above 0.5; "sample" sounds it above a threshold drawn for
    each cell from 0.5 ± ``width`` (from ``rng``), so a cell left near 0.5 is a coin flip that the
    discriminator sees (``width`` 0.5: each cell sounds with its probability); "piece" draws one
    such threshold for each roll, so a generator that leaves cells near 0.5 writes pieces that
    thin out or fill up as a whole, never a speckle, and 0.5 is no line to hover under; "none" shows the
    probabilities. With ``fill`` (binarized fakes only), a step of the sounding plane where no cell
    sounds sounds its most probable pitch if that is above ``fill``, as the decoding's ``fill`` does
    (:meth:`PianoRoll.decode`). With ``min_length`` above 1 (binarized fakes only), a pitch's sounding
    runs shorter than that many steps are silenced, as the decoding's ``min_length`` drops them
    (:func:`drop_short_sounds`); real rolls read this way lose theirs too."""
    if binarize != "none":
        cut = 0.5
        if binarize in ("sample", "piece"):
            shape = probs.shape if binarize == "sample" else (len(probs), *(1,) * (probs.dim() - 1))
            cut = 0.5 + width * (2 * torch.rand(shape, device=probs.device, generator=rng) - 1)
        hard = probs > cut
        if fill is not None:
            sounding = probs[:, 0].detach()  # [B, P, T]
            top, pitch = sounding.max(dim=1)
            silent = ~hard[:, 0].any(dim=1) & (top > fill)  # [B, T]
            filled = F.one_hot(pitch, sounding.shape[1]).transpose(1, 2).bool() & silent[:, None]
            hard = torch.cat([hard[:, :1] | filled[:, None], hard[:, 1:]], dim=1)
        hard = hard.to(probs.dtype)
        if min_length > 1:
            hard = torch.cat([drop_short_sounds(hard[:, :1], min_length), hard[:, 1:]], dim=1)
        probs = probs + (hard - probs).detach()
    elif min_length > 1:
        raise ValueError("min_length needs binarized cells (binarize other than 'none')")
    return as_decoded(probs) if encoding == "onset" else probs


def drop_short_sounds(sounding: torch.Tensor, min_length: int) -> torch.Tensor:
    """0/1 cells [..., T] without their runs of sounding steps shorter than ``min_length``: the
    torch twin of :func:`apollo.roll.drop_short_runs`, which the decoding applies. A cell stays
    when some window of ``min_length`` sounding cells covers it."""
    steps = sounding.shape[-1]
    if min_length <= 1:
        return sounding
    if steps < min_length:
        return torch.zeros_like(sounding)
    flat = sounding.reshape(-1, 1, steps)
    full = -F.max_pool1d(-flat, min_length, stride=1)  # the window starting here all sounds
    covered = F.max_pool1d(F.pad(full, (min_length - 1, min_length - 1)), min_length, stride=1)
    return (flat * covered).reshape(sounding.shape)


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

