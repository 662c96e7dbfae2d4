"""Checkpoints that carry their own config and never run code from the file.

Training checkpoints (``.pt``) are plain dicts of tensors and numbers written with ``torch.save``
and read back with ``weights_only=True``, which refuses any pickle that would build other objects
(a booby-trapped file raises :class:`~apollo.errors.ApolloError` instead of running its code).
A generator exported for sharing (``.safetensors``) holds only tensors, with the configs as JSON
metadata; the bundled model is one of these.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from apollo import __version__
from apollo.errors import ApolloError
from apollo.io import atomic_path
from apollo.model import Generator, ModelConfig
from apollo.sequence import SequenceConfig, SequenceModel

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "save_generator",
    "load_generator",
    "latest_checkpoint",
    "run_checkpoint",
    "family_of",
    "read_model_config",
    "build_generator",
]


def family_of(model_config: dict) -> str:
    """The model family a saved model config describes ("dcgan" where it does not say: it predates the others)."""
    return model_config.get("family", "dcgan")


def read_model_config(model_config: dict):
    """A saved model config as its dataclass: :class:`~apollo.model.ModelConfig` for the DCGAN,
    :class:`~apollo.sequence.SequenceConfig` for the sequence families."""
    return ModelConfig(**model_config) if family_of(model_config) == "dcgan" else SequenceConfig(**model_config)


def build_generator(config) -> torch.nn.Module:
    """The network that generates, for a model config of any family, with fresh weights."""
    return SequenceModel(config) if isinstance(config, SequenceConfig) else Generator(config)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write a training checkpoint atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        torch.save({**state, "apollo_version": __version__}, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a training checkpoint without executing anything stored in it."""
    path = Path(path)
    if not path.is_file():
        raise ApolloError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only loading refuses any global (a class, a function) it does not allow.
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        asks = f" (it asks for {found.group(1)})" if found else ""
        raise ApolloError(
            f"{path}: refused to load: it holds Python objects beyond plain weights{asks}, "
            "and unpickling them could run code"
        ) from None
    except Exception as error:
        raise ApolloError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None


def save_generator(path: str | Path, generator: Generator, meta: dict) -> None:
    """Export a generator's weights to safetensors with ``meta`` (configs, provenance) as JSON."""
    from safetensors.torch import save_file

    meta = {**meta, "model_config": generator.config.to_dict(), "apollo_version": __version__}
    tensors = {name: t.detach().cpu().contiguous() for name, t in generator.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"apollo": json.dumps(meta)})


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A generator in eval mode and its metadata, from a training checkpoint or a safetensors export:
    the DCGAN's :class:`~apollo.model.Generator` or a :class:`~apollo.sequence.SequenceModel`.

    The metadata holds at least ``model_config`` and ``dataset_config`` (the grid, encoding and
    chunk length the generator was trained on), and ``key_moves`` for a model trained in one key
    (:func:`apollo.key.move_histogram`).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        if not path.is_file():
            raise ApolloError(f"{path}: no such model file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("apollo", "{}"))
            weights = load_file(str(path))
        except (SafetensorError, json.JSONDecodeError, OSError) as error:
            raise ApolloError(f"{path}: not a readable Apollo model ({error})") from None
    else:
        state = load_checkpoint(path)
        if "generator" not in state:
            raise ApolloError(f"{path}: not an Apollo checkpoint (no generator weights)")
        weights = state.get("generator_ema", state["generator"])  # the moving average samples best
        meta = {k: v for k, v in state.items()
                if k.endswith("_config") or k in ("step", "apollo_version", "key_moves", "provenance")}
    if "model_config" not in meta:
        raise ApolloError(f"{path}: not an Apollo model (no model_config)")
    try:
        generator = build_generator(read_model_config(meta["model_config"]))
    except (TypeError, ValueError) as error:
        raise ApolloError(f"{path}: its model config is not usable ({error})") from None
    try:
        generator.load_state_dict(weights)
    except RuntimeError as error:
        raise ApolloError(f"{path}: weights do not match the model config ({str(error)[:200]})") from None
    return generator.to(device).eval(), meta


# -- where a run keeps its checkpoints: runs/<name>/checkpoints/{best,last}.pt ------------------


def run_checkpoint(run: str | Path, which: str = "best") -> Path | None:
    """A run folder's ``checkpoints/<which>.pt`` (``best`` falls back to ``last``), or None. A
    recipe's run (a folder of numbered stage runs) gives its last stage's."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    run = Path(run)
    if not (run / "checkpoints").is_dir() and run.is_dir():
        stages = [path for path in run.iterdir() if path.name.split("-")[0].isdigit() and (path / "checkpoints").is_dir()]
        run = max(stages, key=lambda path: int(path.name.split("-")[0]), default=run)
    for name in dict.fromkeys((which, "last")):
        path = Path(run) / "checkpoints" / f"{name}.pt"
        if path.is_file():
            return path
    return None


def latest_checkpoint(root: str | Path = "runs", which: str = "best") -> Path | None:
    """The newest run's checkpoint (see :func:`run_checkpoint`; a recipe's run counts as its last
    stage): the one written last, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [path for run in root.iterdir() if (path := run_checkpoint(run, which)) is not None]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)
