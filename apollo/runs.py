"""Run folders: where a training run writes, and how its checkpoints are read back.

Layout (``apollo generate`` and the docs rely on it)::

    runs/<name>/config.json                 TrainConfig + ModelConfig + DatasetConfig + data path
    runs/<name>/metrics.jsonl               append-only JSON lines: losses, D(real), D(fake), quality
    runs/<name>/tensorboard/                the same, plus sample images, for TensorBoard
    runs/<name>/checkpoints/last.pt         written atomically every few minutes and at the end
    runs/<name>/checkpoints/best.pt         the checkpoint with the best mean OA so far (no collapse)
    runs/<name>/samples/step-000500/        sample-00.mid ... and rolls.png, from fixed noise

A new run never reuses an existing folder; resuming appends to the run it continues. A recipe's
run (:mod:`apollo.recipes`) is a folder of such runs, one per stage.
"""

from __future__ import annotations

import datetime
import functools
import math
import subprocess
from pathlib import Path

import numpy as np

from apollo.checkpoint import family_of, load_checkpoint
from apollo.errors import ApolloError
from apollo.image import roll_image, save_png
from apollo.io import append_jsonl
from apollo.roll import PianoRoll

__all__ = ["new_run_dir", "find_run", "read_training_checkpoint", "migrate_train_config", "source_commit",
           "RunLog", "generate_rolls", "write_samples", "evaluate"]

CHECKPOINT_KEYS = ("generator", "g_optimizer", "model_config", "train_config", "dataset_config", "step")
GAN_KEYS = ("discriminator", "d_optimizer")  # what a DCGAN's checkpoint holds beside them
SAMPLE_TEMPO = 100.0  # beats per minute of the sample MIDI files
# Settings added after runs were already saved without them: such a run goes on as it trained.
OFF_IN_OLDER_RUNS = {"augment_shift": 0, "r1": 0.0, "ema": 0.0, "shift_in_beats": False, "chroma": False,
                     "rhythm": False, "refine": False, "style": 0, "pitch_bias": False, "best_max_duplicates": 1.0,
                     "voices": 0}
# Before the term registry, each generator term was a config field of its own, in this order.
TERM_FIELDS = ("diversity", "character", "texture", "lengths", "ending", "confidence", "closeness",
               "length_mix", "silence")


# -- folders ---------------------------------------------------------------------------------


def new_run_dir(run: str | Path | None, root: str | Path = "runs", prefix: str = "") -> Path:
    """Claim a fresh run folder: ``run`` if given (it must not exist), else ``root/<prefix><date-time>``."""
    if run is not None:
        path = Path(run)
        try:
            path.mkdir(parents=True)
        except FileExistsError:
            raise ApolloError(f"{path} already exists: pick a new --run name, or --resume {path}") from None
        return path
    stamp = prefix + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = Path(root) / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)  # mkdir is atomic: two runs started together get different names
            return path
        except FileExistsError:
            continue
    raise ApolloError(f"could not find a free run name under {root}")


def find_run(run: str | Path, root: str | Path = "runs") -> Path:
    """The run to resume: a path, or a name under ``root``; it must hold checkpoints/last.pt."""
    for path in (Path(run), Path(root) / run):
        if (path / "checkpoints" / "last.pt").is_file():
            return path
    raise ApolloError(f"no run to resume at {run} (no checkpoints/last.pt there or under {root}/)")


@functools.cache  # asked once per process: the code that runs is the code that was loaded
def source_commit() -> str | None:
    """The git commit of the code that runs (with ``-dirty`` for uncommitted changes), if it is a checkout."""
    here = Path(__file__).resolve().parent
    try:
        described = subprocess.run(["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"],
                                   capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return described.stdout.strip() or None if described.returncode == 0 else None


# -- checkpoints -----------------------------------------------------------------------------


def read_training_checkpoint(path: Path) -> dict:
    """A training checkpoint, checked for the keys resuming needs (loading never runs its code)."""
    state = load_checkpoint(path)
    needed = CHECKPOINT_KEYS + (GAN_KEYS if family_of(state.get("model_config") or {}) == "dcgan" else ())
    missing = [key for key in needed if key not in state]
    if missing:
        raise ApolloError(f"{path}: not an Apollo training checkpoint (missing {', '.join(missing)})")
    return state


def migrate_train_config(saved: dict) -> dict:
    """A saved TrainConfig's fields as today's TrainConfig takes them.

    Settings a run predates are off; the generator terms, once fields of their own, become the
    ``terms`` mapping; ``bf16`` (true, false or null) becomes ``precision``.
    """
    config = {**OFF_IN_OLDER_RUNS, **saved}
    if "terms" not in config:
        config["terms"] = {name: config[name] for name in TERM_FIELDS if config.get(name)}
    for name in TERM_FIELDS:
        config.pop(name, None)
    if "bf16" in config:
        bf16 = config.pop("bf16")
        config.setdefault("precision", "auto" if bf16 is None else "bf16" if bf16 else "fp32")
    if "betas" in config:
        config["betas"] = tuple(config["betas"])
    return config


# -- what a run records ----------------------------------------------------------------------


class RunLog:
    """metrics.jsonl and TensorBoard of a run folder (main process only)."""

    def __init__(self, run_dir: Path, resumed_at: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.metrics = run_dir / "metrics.jsonl"
        # purge_step drops TensorBoard events past the checkpoint, which a resumed run redoes.
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resumed_at)

    def event(self, record: dict) -> None:
        """A line for metrics.jsonl only (start, resume, stop)."""
        append_jsonl(self.metrics, record)

    def scalars(self, step: int, record: dict, prefix: str = "") -> None:
        """A metrics line, and each number in it as a TensorBoard scalar."""
        append_jsonl(self.metrics, {"step": step, **{prefix + key: value for key, value in record.items()}})
        for key, value in record.items():
            if value is not None and key != "time":
                self.writer.add_scalar(prefix + key, value, step)

    def training(self, step: int, seconds: float, names: tuple[str, ...], means, norm_names: tuple[str, ...],
                 grad_norms, samples_per_s: float, penalty: bool) -> dict:
        """The metrics line of a stretch of training steps: their mean losses (a DCGAN's: D(real),
        D(fake), the penalty where the loss has one, and each term), the last step's gradient norms,
        the speed."""
        record = dict(zip(names, means.tolist()))
        if not penalty:
            record.pop("penalty", None)
        record = {"time": round(seconds, 2), **record, **dict(zip(norm_names, grad_norms.tolist())),
                  "samples_per_s": samples_per_s}
        self.scalars(step, record)
        return record

    def image(self, name: str, picture: np.ndarray, step: int) -> None:
        self.writer.add_image(name, picture, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


def generate_rolls(generator, noise, dataset_config, batch: int = 64, decoding=None) -> list[PianoRoll]:
    """Rolls from the generator in eval mode, in float32, decoded with ``decoding`` (default:
    :class:`~apollo.decoding.Decoding`'s defaults). The trainer passes the run's
    :func:`~apollo.decoding.judged_decoding`, as ``apollo generate`` decodes a model without a
    decoding of its own."""
    import torch

    from apollo.decoding import Decoding

    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            probs = torch.cat([generator(z).float().cpu() for z in noise.split(batch)])
    finally:
        generator.train(was_training)
    decoding = decoding or Decoding()
    return [decoding.decode(p.numpy(), dataset_config.encoding, dataset_config.grid, SAMPLE_TEMPO) for p in probs]


def write_samples(rolls: list[PianoRoll], folder: Path) -> np.ndarray:
    """sample-NN.mid for each roll and rolls.png of them all; returns the picture for TensorBoard."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, roll in enumerate(rolls):
        roll.to_midi(folder / f"sample-{i:02d}.mid")
    save_png(rolls, folder / "rolls.png")
    return np.concatenate([roll_image(roll, scale=1) for roll in rolls])


def evaluate(generated: list[PianoRoll], reference: list[PianoRoll]) -> dict[str, float | None]:
    """Quality of generated rolls against validation rolls (:func:`apollo.evaluate.compare`).

    "mean_oa" (higher is better) chooses best.pt, among evaluations with few near-duplicates
    (``TrainConfig.best_max_duplicates``). Values that are undefined for these samples
    (nan: e.g. polyphony of silent rolls) become None, so that metrics.jsonl stays valid JSON.
    """
    from apollo.evaluate import compare

    return {key: value if math.isfinite(value) else None for key, value in compare(generated, reference).items()}
