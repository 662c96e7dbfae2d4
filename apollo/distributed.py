"""Multi-process training with DistributedDataParallel, set up from ``torchrun``'s environment.

``torchrun --nproc_per_node N -m apollo train ...`` starts N copies of the trainer with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set. Each copy trains on its own share of every batch; gradients
are averaged by DDP, so all copies hold the same weights. Only rank 0 writes anything to disk.
A plain ``apollo train`` (no such variables) is a world of one and never touches
``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["World", "init", "shutdown", "agree"]


@dataclass(frozen=True)
class World:
    """Where this process sits: its rank among ``size`` processes and the device it trains on."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """True for the one process that logs, samples and saves checkpoints."""
        return self.rank == 0


def init(device: torch.device) -> World:
    """Join the process group when started by torchrun; a world of one otherwise.

    On CUDA each process takes the GPU ``LOCAL_RANK`` and talks over NCCL; elsewhere it uses gloo.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank=rank, size=size, device=device)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def agree(world: World, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank, so that all processes stop together
    (after Ctrl-C or when time is up) instead of one waiting forever for the others."""
    if not world.distributed:
        return flag
    value = torch.tensor([float(flag)], device=world.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
