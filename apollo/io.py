"""Small file helpers shared by every writer: nothing Apollo writes is ever left half-done."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FoundFile", "append_jsonl", "atomic_path", "write_json"]


@dataclass(frozen=True)
class FoundFile:
    """A file Apollo chose for the user (a model, a SoundFont) and why: printed, so they know."""

    path: Path
    source: str

    def __str__(self) -> str:
        return f"{self.path} ({self.source})"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    If the block fails (or the process dies) the old ``path`` is untouched and the temporary
    file is removed when possible.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp (and some writers) make owner-only files; give the result the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: object) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line and flush it to disk: logs only ever grow."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
