"""Multi-process training: two CPU processes over gloo end with the same weights; the data is sharded."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from apollo import distributed
from apollo.checkpoint import load_checkpoint
from apollo.dataset import DatasetConfig
from apollo.model import PRESETS, ModelConfig
from apollo.preprocess import preprocess
from apollo.dataset import Batches
from apollo.train import TrainConfig, train

STEPS = 3


@pytest.fixture(scope="module")
def data(chorale_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "chorales"
    preprocess(chorale_dir, out, DatasetConfig(), workers=1)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, data: Path, out: Path, port: int, loss: str) -> None:
    """One of two processes, set up the way torchrun sets them up."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    PRESETS["tiny"] = ModelConfig(width=8)
    # Normally only rank 0 writes; here every rank saves its own run, so that the test can compare.
    distributed.World.main = property(lambda self: True)
    config = TrainConfig(steps=STEPS, loss=loss, preset="tiny", batch_size=2, log_every=1, sample_every=0,
                         eval_every=0)
    train(config, data=data, run=out / f"rank{rank}", progress=False)


@pytest.mark.parametrize("loss", ["bce", "wgan-gp"])  # wgan-gp: the penalty's double backward under DDP
def test_two_processes_end_with_identical_weights(data, tmp_path, loss):
    mp.spawn(worker, args=(data, tmp_path, free_port(), loss), nprocs=2, join=True)
    runs = [tmp_path / f"rank{rank}" for rank in (0, 1)]
    assert json.loads((runs[0] / "config.json").read_text())["world_size"] == 2
    # The two processes trained on different batches and noise (their local losses differ)...
    first = [json.loads((run / "metrics.jsonl").read_text().splitlines()[1]) for run in runs]
    assert first[0]["step"] == first[1]["step"] == 1 and first[0]["d_loss"] != first[1]["d_loss"]
    # ...and yet hold the same weights, because DDP averaged their gradients.
    states = [load_checkpoint(run / "checkpoints" / "last.pt") for run in runs]
    for part in ("generator", "discriminator"):
        assert states[0][part].keys() == states[1][part].keys()
        for name, tensor in states[0][part].items():
            assert torch.equal(tensor, states[1][part][name]), f"{part}.{name} differs between ranks"
    assert states[0]["step"] == STEPS
    # ...and they trained: the generator moved away from its initial weights.
    torch.manual_seed(0)
    from apollo.model import Generator

    initial = Generator(ModelConfig(**states[0]["model_config"])).state_dict()
    assert any(not torch.equal(initial[name], t) for name, t in states[0]["generator"].items())


def test_each_process_gets_its_own_share_of_every_batch(data):
    from apollo.dataset import RollDataset

    dataset = RollDataset(data)
    shares = [Batches(dataset, 4, seed=0, world=distributed.World(rank=r, size=2)) for r in (0, 1)]
    single = Batches(dataset, 8, seed=0, world=distributed.World())
    for b in range(2 * single.per_epoch):  # across an epoch boundary
        a, c = shares[0].indices(b), shares[1].indices(b)
        assert len(a) == len(c) == 4 and not set(a.tolist()) & set(c.tolist())
        assert sorted([*a.tolist(), *c.tolist()]) == sorted(single.indices(b).tolist())
