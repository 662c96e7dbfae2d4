"""The dataset format and RollDataset: packed bits, memory mapping, provenance, finding datasets."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from apollo.dataset import (
    DatasetConfig,
    RollDataset,
    find_latest_dataset,
    load_config,
    pack_planes,
    read_manifest,
    unpack_bits,
)
from apollo.errors import ApolloError
from apollo.preprocess import preprocess
from apollo.roll import Grid, PianoRoll


@pytest.fixture(scope="module")
def dataset(chorale_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("datasets") / "chorales"
    preprocess(chorale_dir, out, DatasetConfig())
    return out


def test_items_are_float_planes_matching_the_packed_rows(dataset):
    train = RollDataset(dataset)
    assert isinstance(train, torch.utils.data.Dataset)
    assert len(train) == read_manifest(dataset)["counts"]["train_chunks"] > 0
    item = train[3]
    assert item.dtype == torch.float32 and item.shape == (2, 64, 256)
    assert set(item.unique().tolist()) == {0.0, 1.0}
    assert np.array_equal(item.numpy().astype(bool), train.planes([3])[0])
    assert isinstance(train.packed, np.memmap) and train.packed.shape == (len(train), 4096)


def test_splits_share_no_file_and_every_training_file_has_chunks(dataset):
    files = {split: set(RollDataset(dataset, split).provenance["file"]) for split in ("train", "val", "test")}
    assert files["train"] and files["val"] and files["test"]
    assert not files["train"] & files["val"] and not files["train"] & files["test"] and not files["val"] & files["test"]
    # A held-out piece shorter than a window gives no stretch; every training piece gives chunks.
    splits = read_manifest(dataset)["files"]["split"]
    assert files["train"] == {i for i, s in enumerate(splits) if s == "train"}
    with pytest.raises(ValueError, match="split"):
        RollDataset(dataset, "everything")


def test_rolls_are_piano_rolls_at_the_source_tempo(dataset):
    train = RollDataset(dataset)
    rolls = train.rolls([0, 1])
    tempos = read_manifest(dataset)["files"]["tempo"]
    assert [r.tempo for r in rolls] == [tempos[f] for f in train.provenance["file"][:2]]
    assert all(isinstance(r, PianoRoll) and r.cells.shape == (64, 256) and r.n_notes >= 8 for r in rolls)
    assert np.array_equal(rolls[1].encode("onset"), train.planes([1])[0])


def test_unpack_bits_in_torch_matches_numpy(dataset):
    train = RollDataset(dataset)
    packed = train.packed_tensor()
    assert packed.dtype == torch.uint8 and packed.shape == train.packed.shape
    planes = unpack_bits(packed[:16], train.shape)
    assert planes.dtype == torch.bool and planes.shape == (16, 2, 64, 256)
    assert np.array_equal(planes.numpy(), train.planes(range(16)))
    assert unpack_bits(packed[:2], train.shape, torch.float32).dtype == torch.float32


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 2), st.integers(1, 5), st.integers(1, 13), st.integers(0, 2**32 - 1))
def test_pack_and_unpack_are_inverse_for_any_shape(n, c, p, t, seed):
    planes = np.random.default_rng(seed).random((n, c, p, t)) < 0.5
    packed = pack_planes(planes)
    assert packed.shape == (n, -(-c * p * t // 8))
    assert np.array_equal(unpack_bits(torch.from_numpy(packed), (c, p, t)).numpy(), planes)


def test_dataloader_batches_and_worker_pickling(dataset):
    train = RollDataset(dataset)
    batch = next(iter(torch.utils.data.DataLoader(train, batch_size=8, shuffle=True)))
    assert batch.shape == (8, 2, 64, 256)
    copy = pickle.loads(pickle.dumps(train))
    assert len(pickle.dumps(train)) < 100_000  # the rows are reopened, not copied
    assert torch.equal(copy[5], train[5])


def test_config_round_trips_and_validates(dataset):
    assert load_config(dataset) == DatasetConfig()
    assert load_config(dataset / "manifest.json") == DatasetConfig()
    config = DatasetConfig(grid=Grid(24, 72, 2), encoding="rest", transpose=(-5, 6), time_shift=3)
    assert DatasetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.shape == (1, 72, 256) and len(config.transpositions) == 12
    for bad in ({"encoding": "midi"}, {"transpose": (3, -3)}, {"hop": 0}, {"val_fraction": 1.0}, {"min_fill": 0},
                {"normalize_key": True, "transpose": (-5, 6)}):
        with pytest.raises(ValueError):
            DatasetConfig(**bad)


def test_find_latest_dataset_skips_unfinished_folders(dataset, tmp_path):
    root = tmp_path / "datasets"
    with pytest.raises(ApolloError, match="no dataset in"):
        find_latest_dataset(root)
    shutil.copytree(dataset, root / "old")
    time.sleep(0.01)
    shutil.copytree(dataset, root / "new")
    manifest = read_manifest(root / "new")
    manifest["finished"] = "2999-01-01T00:00:00.000+00:00"
    (root / "new" / "manifest.json").write_text(json.dumps(manifest))
    shutil.copytree(root / "new", root / "newest.partial")  # unfinished: never picked
    (root / "empty").mkdir()
    assert find_latest_dataset(root) == root / "new"


def test_damaged_or_foreign_datasets_are_refused(dataset, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(dataset, damaged)
    with open(damaged / "train.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ApolloError, match="the dataset is damaged"):
        RollDataset(damaged)
    future = tmp_path / "future"
    shutil.copytree(dataset, future)
    manifest = read_manifest(future)
    manifest["version"] = 99
    (future / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ApolloError, match="format version 99 is newer"):
        RollDataset(future)
    with pytest.raises(ApolloError, match="not a finished dataset"):
        RollDataset(tmp_path)


def test_a_dataset_made_before_test_splits_still_trains_and_says_it_has_no_test_split(dataset, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(dataset, old)
    manifest = read_manifest(old)
    manifest["version"] = 1
    for key in ("fill", "test_fraction", "held_out_hop"):
        del manifest["config"][key]
    del manifest["chunks"]["test"]
    (old / "test.bin").unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    config = load_config(old)
    assert (config.fill, config.test_fraction, config.held_out_hop) == ("silence", 0.0, config.hop)
    assert len(RollDataset(old, "train")) == manifest["counts"]["train_chunks"]
    with pytest.raises(ApolloError, match="no test split .*older Apollo.*apollo preprocess"):
        RollDataset(old, "test")


def test_a_hundred_thousand_chunks_load_well_under_a_second(dataset, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    n = 100_000
    manifest = read_manifest(dataset)
    manifest["counts"].update(train_chunks=n, val_chunks=0)
    manifest["chunks"] = {
        "train": {c: np.arange(n).tolist() for c in ("file", "offset", "transpose", "shift")},
        "val": {c: [] for c in ("file", "offset", "transpose", "shift")},
    }
    (big / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))
    with open(big / "train.bin", "wb") as f:
        f.truncate(n * manifest["bytes_per_chunk"])  # sparse: 400 MB that cost no disk
    (big / "val.bin").touch()
    started = time.perf_counter()
    train = RollDataset(big)
    assert len(train) == n and train[n - 1].shape == (2, 64, 256)
    assert time.perf_counter() - started < 0.5


def test_library_modules_import_without_torch():
    code = "import sys, apollo.corpus, apollo.preprocess, apollo.dataset; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
