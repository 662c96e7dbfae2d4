"""Preprocessed piano-roll datasets: the on-disk format, its config, and the torch Dataset over it.

A dataset is a folder made by ``apollo preprocess`` (:mod:`apollo.preprocess`)::

    manifest.json   what the folder holds (see below); written last, so its presence means "finished"
    train.bin       the training chunks, packed bits, one fixed-size row per chunk
    val.bin         the validation chunks, same layout
    test.bin        the test chunks, same layout (datasets of format version 1 have none)

Each chunk is the bool planes ``[C, P, T]`` of one piano-roll window (C = planes of the encoding,
P = pitches, T = steps), flattened in C order and packed 8 cells per byte with
``np.packbits(..., bitorder="little")``, the last byte zero-padded. ``N`` chunks are an ``N x
bytes_per_chunk`` uint8 array: the files are memory-mapped, never unpickled, and 100k chunks load in
milliseconds.

``manifest.json`` holds ``format`` ("apollo-rolls") and ``version`` (bumped on any incompatible
change), ``config`` (a :class:`DatasetConfig`), ``shape`` ``[C, P, T]``, ``bytes_per_chunk``,
``counts``, ``files`` (columns over the source files used: ``path`` relative to the MIDI folder,
``hash``, ``split``, ``tempo``, ``n_steps``), ``chunks`` (per split, columns over chunks: ``file``
index into ``files``, ``offset`` first step of the window in the source piece, ``transpose`` in
semitones, ``shift`` the time-shift augmentation in steps), ``skipped`` (``{"file", "reason"}`` for
every file not used), and timing.

Torch is imported only when :class:`RollDataset` or :func:`unpack_bits` is first used, so that
``apollo preprocess`` starts without it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from apollo.errors import ApolloError
from apollo.roll import ENCODINGS, Grid, PianoRoll
from apollo.splits import SPLITS

if TYPE_CHECKING:
    import torch

__all__ = [
    "Batches",
    "FORMAT",
    "FORMAT_VERSION",
    "DatasetConfig",
    "RollDataset",
    "find_latest_dataset",
    "load_config",
    "pack_planes",
    "read_manifest",
    "unpack_bits",
]

FORMAT = "apollo-rolls"
FORMAT_VERSION = 2  # 2: a test split, splits by tune, held-out chunks are whole stretches of music
FILLS = ("repeat", "silence")


@dataclass(frozen=True)
class DatasetConfig:
    """How MIDI files become fixed-size chunks; saved in every dataset's manifest.

    Each piece goes to one split by its tune (:mod:`apollo.splits`): on average ``test_fraction``
    of the tunes to test, ``val_fraction`` to validation, the rest to training.

    Training chunks: windows of ``n_steps`` start every ``hop`` steps from the first bar that holds
    a note. A window is kept when at least ``min_fill`` of it lies inside the piece and it holds at
    least ``min_notes`` note onsets. Where a window runs past the piece's end, ``fill`` says what
    follows: ``"repeat"`` plays the piece again (as a chorale has more verses and a reel is played
    round), from the first beat where its first note can follow the last note's end, so the model
    never learns that music stops after a few bars, nor holes that the music does not have;
    ``"silence"`` pads with silence. ``transpose`` is an inclusive semitone range, every
    transposition a separate chunk; ``normalize_key`` instead moves each chunk to C major / A minor
    (:mod:`apollo.key`), its move recorded in the manifest's ``transpose`` column; ``time_shift``
    adds copies of each window delayed by 1..time_shift steps (ApolloGAN's "layback").

    Validation and test chunks are what generated music is judged against, so they are real music
    only: whole windows inside a piece, one every ``held_out_hop`` steps, never filled, shifted or
    transposed (``normalize_key`` still applies). A held-out piece shorter than a window gives none.
    """

    grid: Grid = Grid()
    n_steps: int = 256
    hop: int = 128
    encoding: str = "onset"
    transpose: tuple[int, int] = (0, 0)
    normalize_key: bool = False
    time_shift: int = 0
    min_notes: int = 8
    min_fill: float = 0.5
    fill: str = "repeat"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    held_out_hop: int = 16
    out_of_range: str = "fold"
    include_drums: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.grid, dict):  # from JSON
            object.__setattr__(self, "grid", Grid(**self.grid))
        object.__setattr__(self, "transpose", tuple(int(t) for t in self.transpose))
        if self.n_steps < 1:
            raise ValueError(f"n_steps must be positive, got {self.n_steps}")
        if self.hop < 1:
            raise ValueError(f"hop must be positive, got {self.hop}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}; choose from {', '.join(ENCODINGS)}")
        low, high = self.transpose if len(self.transpose) == 2 else (1, 0)
        if not -24 <= low <= high <= 24:
            raise ValueError(f"transpose must be a range low..high within -24..24, got {self.transpose}")
        if self.normalize_key and self.transpose != (0, 0):
            raise ValueError("normalize_key (--normalize-key) moves every chunk to one key; it cannot be combined with a "
                             "transpose range (--transpose)")
        if not 0 <= self.time_shift < self.n_steps:
            raise ValueError(f"time_shift must lie in 0..{self.n_steps - 1}, got {self.time_shift}")
        if self.min_notes < 0:
            raise ValueError(f"min_notes must not be negative, got {self.min_notes}")
        if not 0 < self.min_fill <= 1:
            raise ValueError(f"min_fill must lie in (0, 1], got {self.min_fill}")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"val_fraction and test_fraction must lie in [0, 1) with a sum under 1, "
                             f"got {self.val_fraction} and {self.test_fraction}")
        if self.held_out_hop < 1:
            raise ValueError(f"held_out_hop must be positive, got {self.held_out_hop}")
        if self.out_of_range not in ("fold", "drop"):
            raise ValueError(f"out_of_range must be 'fold' or 'drop', got {self.out_of_range!r}")

    @property
    def channels(self) -> int:
        return ENCODINGS[self.encoding]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one chunk's planes: (channels, pitches, steps)."""
        return (self.channels, self.grid.n_pitches, self.n_steps)

    @property
    def bytes_per_chunk(self) -> int:
        return -(-int(np.prod(self.shape)) // 8)

    @property
    def transpositions(self) -> range:
        return range(self.transpose[0], self.transpose[1] + 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetConfig:
        if "fill" not in data:  # format version 1: silence after the end, no test split, held out like training
            data = {**data, "fill": "silence", "test_fraction": 0.0, "held_out_hop": data.get("hop", cls.hop)}
        return cls(**data)


# -- packed bits -----------------------------------------------------------------------------------


def pack_planes(planes: np.ndarray) -> np.ndarray:
    """Bool planes ``[n, C, P, T]`` as packed rows ``[n, bytes_per_chunk]`` (uint8, little bit order)."""
    planes = np.asarray(planes, dtype=bool)
    return np.packbits(planes.reshape(len(planes), -1), axis=1, bitorder="little")


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Packed rows ``[n, bytes]`` (uint8 tensor) back to planes ``[n, *shape]``, on the rows' device.

    Uses only torch bit operations, so a dataset kept packed on the GPU (8x smaller) is unpacked
    there one batch at a time. Returns bool unless ``dtype`` (e.g. ``torch.float32``) is given.
    """
    import torch

    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed must be a 2-D uint8 tensor, got {packed.dim()}-D {packed.dtype}")
    n_bits = int(np.prod(shape))
    if packed.shape[1] * 8 < n_bits:
        raise ValueError(f"{packed.shape[1]} bytes per row cannot hold shape {tuple(shape)}")
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # [n, bytes, 8], bit 0 first ("little")
    planes = bits.reshape(len(packed), -1)[:, :n_bits].reshape(len(packed), *shape)
    return planes.bool() if dtype is None else planes.to(dtype)


# -- reading ---------------------------------------------------------------------------------------


def _manifest_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.name == "manifest.json" else path / "manifest.json"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a finished dataset (folder or manifest path); ApolloError if there is none."""
    manifest_path = _manifest_path(path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ApolloError(
            f"{manifest_path.parent}: not a finished dataset (no manifest.json); make one with `apollo preprocess`"
        ) from None
    except (OSError, ValueError) as error:
        raise ApolloError(f"{manifest_path}: unreadable manifest ({error})") from None
    if manifest.get("format") != FORMAT:
        raise ApolloError(f"{manifest_path}: not an Apollo dataset (format {manifest.get('format')!r})")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise ApolloError(
            f"{manifest_path}: dataset format version {manifest['version']} is newer than this Apollo "
            f"reads ({FORMAT_VERSION}); upgrade Apollo or preprocess again"
        )
    return manifest


def load_config(path: str | Path) -> DatasetConfig:
    """The :class:`DatasetConfig` a dataset was made with."""
    return DatasetConfig.from_dict(read_manifest(path)["config"])


def find_latest_dataset(root: str | Path = "datasets") -> Path:
    """The most recently finished dataset under ``root`` (unfinished ``.partial`` folders never count)."""
    root = Path(root)
    found = []
    for manifest_path in root.glob("*/manifest.json") if root.is_dir() else []:
        if manifest_path.parent.name.endswith(".partial"):
            continue
        try:
            finished = json.loads(manifest_path.read_text()).get("finished", "")
        except (OSError, ValueError):
            continue
        found.append((finished, manifest_path.stat().st_mtime, manifest_path.parent))
    if not found:
        raise ApolloError(f"no dataset in {root}/; make one with `apollo preprocess MIDI_DIR`")
    return max(found)[2]


class _RollDatasetBase:
    """Chunks of one split of a dataset folder, memory-mapped.

    ``ds[i]`` is chunk ``i`` as a float32 tensor ``[C, P, T]``; :meth:`planes` gives bool arrays for
    many chunks at once, :meth:`rolls` gives :class:`~apollo.roll.PianoRoll` objects, and
    ``provenance`` says where each chunk came from (columns ``file``, ``offset``, ``transpose``,
    ``shift``; ``file`` indexes ``files``).
    """

    def __init__(self, path: str | Path, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.path = _manifest_path(path).parent
        self.split = split
        manifest = read_manifest(self.path)
        self.manifest = manifest
        if split not in manifest["chunks"]:
            raise ApolloError(
                f"{self.path}: no {split} split (made by an older Apollo, before test splits); "
                f"remake it with `apollo preprocess` to report on one"
            )
        self.config = DatasetConfig.from_dict(manifest["config"])
        self.shape: tuple[int, int, int] = tuple(manifest["shape"])  # type: ignore[assignment]
        self.files: list[str] = manifest["files"]["path"]
        self.provenance: dict[str, np.ndarray] = {
            column: np.asarray(values, dtype=np.int64) for column, values in manifest["chunks"][split].items()
        }
        self.packed = self._open()

    def _open(self) -> np.ndarray:
        n = self.manifest["counts"][f"{self.split}_chunks"]
        width = self.manifest["bytes_per_chunk"]
        path = self.path / f"{self.split}.bin"
        size = path.stat().st_size if path.exists() else -1
        if size != n * width:
            raise ApolloError(f"{path}: {size} bytes, the manifest promises {n * width}; the dataset is damaged")
        if n == 0:  # np.memmap cannot map an empty file
            return np.zeros((0, width), dtype=np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="r", shape=(n, width))

    # A memmap would pickle as a full copy; DataLoader workers reopen the file instead.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "packed": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.packed = self._open()

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, index: int) -> torch.Tensor:
        import torch

        bits = np.unpackbits(self.packed[index], count=int(np.prod(self.shape)), bitorder="little")
        return torch.from_numpy(bits.reshape(self.shape).astype(np.float32))

    def __repr__(self) -> str:
        c, p, t = self.shape
        return (
            f"RollDataset({str(self.path)!r}, split={self.split!r}, chunks={len(self)}, "
            f"shape=[{c}, {p}, {t}], encoding={self.config.encoding!r})"
        )

    def planes(self, indices: Any = None) -> np.ndarray:
        """Bool planes ``[n, C, P, T]`` of the chunks at ``indices`` (default: all)."""
        rows = self.packed if indices is None else self.packed[np.asarray(indices, dtype=np.int64).reshape(-1)]
        bits = np.unpackbits(np.asarray(rows), axis=1, count=int(np.prod(self.shape)), bitorder="little")
        return bits.reshape(len(rows), *self.shape).view(bool)

    def rolls(self, indices: Any = None) -> list[PianoRoll]:
        """The chunks at ``indices`` (default: all) as piano rolls at their source file's tempo."""
        index = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        tempos = self.manifest["files"]["tempo"]
        files = self.provenance["file"]
        return [
            PianoRoll.decode(planes, self.config.encoding, self.config.grid, tempo=tempos[files[i]])
            for i, planes in zip(index, self.planes(index))
        ]

    def packed_tensor(self, device: str | torch.device | None = None) -> torch.Tensor:
        """All packed rows as one uint8 tensor ``[N, bytes_per_chunk]`` (on ``device``), for :func:`unpack_bits`."""
        import torch

        return torch.from_numpy(np.array(self.packed)).to(device)


class Batches:
    """Batches of real rolls in a fixed, seeded order, unpacked from bits on the training device.

    The whole packed split moves to the GPU when it fits there, so a batch is one gather and one
    unpack on the device, with no loader process and no stall. On the CPU the rows are gathered from
    the memory-mapped file. Batch ``b`` is a pure function of (seed, b): epoch ``e`` is
    ``randperm(n)`` from a ``torch.Generator`` seeded with (seed, e), and global batch ``b`` holds
    ``batch_size * world.size`` of its indices, of which each process takes every ``world.size``-th
    (``world``: an :class:`apollo.distributed.World`).
    """

    def __init__(self, dataset: RollDataset, batch_size: int, seed: int, world) -> None:
        import torch

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
        import torch

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
        import torch

        index = self.indices(b)
        if isinstance(self.packed, torch.Tensor):
            rows = self.packed[index.to(self.device, non_blocking=True)]
        else:
            rows = torch.from_numpy(self.packed[index.numpy()])
            if self.device.type != "cpu":
                rows = rows.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" \
                    else rows.to(self.device)
        return unpack_bits(rows, self.shape, dtype=torch.float32)


def _make_roll_dataset() -> type:
    import torch.utils.data

    namespace = {"__module__": __name__, "__doc__": _RollDatasetBase.__doc__}
    return type("RollDataset", (_RollDatasetBase, torch.utils.data.Dataset), namespace)


if TYPE_CHECKING:

    class RollDataset(_RollDatasetBase, torch.utils.data.Dataset):  # what the lazy class below is
        pass


def __getattr__(name: str) -> Any:
    # RollDataset subclasses torch's Dataset. Making it on first use keeps `import apollo.dataset`
    # (and with it `apollo preprocess`) free of torch's 1.5 s import.
    if name == "RollDataset":
        cls = _make_roll_dataset()
        globals()["RollDataset"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
