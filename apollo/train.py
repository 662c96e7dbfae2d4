"""Training the DCGAN: a plain loop, a run directory per run, exact resume.

Run layout (other commands rely on it)::

    runs/<name>/config.json          TrainConfig + ModelConfig + DatasetConfig + data path
    runs/<name>/metrics.jsonl        append-only JSON lines
    runs/<name>/tensorboard/         TensorBoard event files
    runs/<name>/checkpoints/last.pt  written atomically
    runs/<name>/checkpoints/best.pt
    runs/<name>/samples/step-000500/sample-00.mid ... rolls.png
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["latest_checkpoint"]


def latest_checkpoint(root: str | Path = "runs", which: str = "best") -> Path | None:
    """The newest run's ``checkpoints/<which>.pt`` (``best`` falls back to ``last``), or None.

    "Newest" is the run whose chosen checkpoint was written most recently, so a run that is
    still training (or was just resumed) wins over an older one started later.
    """
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    root = Path(root)
    if not root.is_dir():
        return None
    found = []
    for run in root.iterdir():
        for name in (which, "last"):
            path = run / "checkpoints" / f"{name}.pt"
            if path.is_file():
                found.append((path.stat().st_mtime, path))
                break
    return max(found)[1] if found else None
