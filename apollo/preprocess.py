"""``apollo preprocess``: a folder of MIDI files becomes a dataset of fixed piano-roll chunks.

The run, in order:

1. Walk ``MIDI_DIR`` recursively for ``.mid`` / ``.midi`` files (any case). Symbolic links to files
   are used; linked folders are entered once each, so link loops end.
2. Convert the files in worker processes, one per core, with a progress bar. Each worker reads a
   file, hashes it, parses it (:func:`apollo.midi.read_notes`) and cuts it into chunks
   (:func:`chunk_piece`). A worker runs under a memory limit (``RLIMIT_AS``) and a per-file
   timeout (:mod:`apollo.workers`): if the native parser crashes, runs away with memory or hangs,
   only that file is lost, recorded as skipped ("parser crashed (signal 11, SIGSEGV)"), and a fresh
   worker carries on.
3. Every file's result is appended to ``<OUT>.partial/`` as it arrives. An interrupted run
   (Ctrl-C, kill -9, power loss) leaves only that folder, which nothing mistakes for a dataset, and
   no worker (they end with the main process); running the same command again picks up where it
   stopped.
4. Finish: exact duplicates (same content hash) are dropped, each file goes to the split its tune
   chose (:mod:`apollo.splits`: train, validation or test; every copy of a tune on one side), the
   chunks are written in file order (format: :mod:`apollo.dataset`), ``manifest.json`` last, and
   the folder appears at ``OUT`` by a single rename.

How pieces become chunks (training windows, the repeat at a piece's end, held-out stretches) is
described in :class:`~apollo.dataset.DatasetConfig`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from apollo import __version__
from apollo.dataset import FORMAT, FORMAT_VERSION, DatasetConfig, pack_planes
from apollo.errors import ApolloError, MidiError
from apollo.key import move_to_c
from apollo.midi import MidiNotes, read_bytes, read_notes
from apollo.roll import ONSET, PianoRoll
from apollo.splits import SPLITS, split_of, tune_fingerprint
from apollo.workers import DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT, isolated_map

__all__ = [
    "MIDI_SUFFIXES",
    "PreprocessSummary",
    "chunk_piece",
    "find_midi_files",
    "preprocess",
]

MIDI_SUFFIXES = (".mid", ".midi")


@dataclass
class PreprocessSummary:
    """What :func:`preprocess` did."""

    out: Path
    files_found: int = 0
    files_used: int = 0
    train_chunks: int = 0
    val_chunks: int = 0
    test_chunks: int = 0
    held_out_files: dict[str, int] = field(default_factory=dict)  # split asked for -> its files
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}, as in the manifest
    resumed: int = 0  # files whose results came from an interrupted earlier run
    seconds: float = 0.0

    def skipped_by_reason(self) -> Counter:
        """Skipped files counted by the kind of reason ("truncated", "duplicate", ...)."""
        return Counter(entry["reason"].split(" (")[0] for entry in self.skipped)

    def line(self) -> str:
        counts = self.skipped_by_reason().most_common()
        reasons = [f"{n} {reason}" for reason, n in counts[:4]]
        if len(counts) > 4:  # one line stays one line; manifest.json has every file and reason
            reasons.append(f"{sum(n for _, n in counts[4:])} other")
        skipped = f"{len(self.skipped)} skipped ({', '.join(reasons)})" if self.skipped else "0 skipped"
        resumed = f", {self.resumed} from the interrupted run" if self.resumed else ""
        missing = [name for split, name in (("val", "validation"), ("test", "test"))
                   if self.held_out_files.get(split) == 0]
        # Splits go by tune hash: a corpus of a handful of tunes may hold out none.
        note = f"; no {' or '.join(missing)} piece among so few tunes" if missing and self.files_used else ""
        return (
            f"{self.files_used} of {self.files_found} files used, {skipped}; "
            f"{self.train_chunks + self.val_chunks + self.test_chunks} chunks written ({self.train_chunks} train, "
            f"{self.val_chunks} validation, {self.test_chunks} test) to {self.out} in {self.seconds:.1f} s{resumed}{note}"
        )


# -- finding files ---------------------------------------------------------------------------------


def find_midi_files(midi_dir: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """MIDI files under ``midi_dir`` as sorted relative POSIX paths, and entries that cannot be used.

    Follows symbolic links to files and folders, entering each real folder once (no loops).
    Broken links and unlistable folders come back as ``{"file", "reason"}`` entries.
    """
    root = Path(midi_dir)
    files: list[str] = []
    problems: list[dict[str, str]] = []
    visited: set[tuple[int, int]] = set()

    def walk(folder: Path) -> None:
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in visited:
                return
            visited.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as error:
            problems.append({"file": _relative(folder, root), "reason": f"cannot list folder ({error.strerror})"})
            return
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                walk(Path(entry.path))
            elif entry.name.lower().endswith(MIDI_SUFFIXES):
                relative = _relative(Path(entry.path), root)
                if entry.is_file():
                    files.append(relative)
                else:
                    reason = "broken symbolic link" if entry.is_symlink() else "not a regular file"
                    problems.append({"file": relative, "reason": reason})

    walk(root)
    return sorted(files), problems


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else "."


# -- one piece -------------------------------------------------------------------------------------


def chunk_piece(notes: MidiNotes, config: DatasetConfig, *, held_out: bool = False) -> dict[str, np.ndarray]:
    """Cut one piece into packed chunks; see :class:`~apollo.dataset.DatasetConfig` for the rules.

    ``held_out`` cuts a validation or test piece: whole windows inside it only, possibly none.
    Returns ``rows`` (uint8 ``[n, bytes_per_chunk]``) and the int32 columns ``offset`` (first step
    of the window in the piece, negative when a time shift reaches before it), ``transpose`` and
    ``shift``. Raises MidiError (with ``.reason``) when a training piece gives no chunk.
    """
    grid, width = config.grid, config.n_steps
    bar = 4 * grid.steps_per_beat  # windows start on (4/4) bar lines: most music lives there
    begin = int(notes.start.min()) // bar * bar
    end = int(notes.end.max())
    pitch, start, stop = notes.pitch, notes.start, notes.end
    if held_out:
        last = -(-end // bar) * bar  # the piece's final bar line
        starts = begin + config.held_out_hop * np.arange(max((last - begin - width) // config.held_out_hop + 1, 0))
        shifts = np.zeros(1, dtype=np.int64)
    else:
        need = int(np.ceil(config.min_fill * width))
        if end - begin < need:
            raise _skip(f"too short ({end - begin} steps, a chunk needs at least {need})")
        starts = begin + config.hop * np.arange((end - begin - need) // config.hop + 1)
        shifts = np.arange(config.time_shift + 1)
    # Every (start, shift) pair is one window; a shift of s delays the music by s steps.
    window = (starts[None, :] - shifts[:, None]).reshape(-1)
    shift_of = np.repeat(shifts, len(starts))
    if not held_out and config.fill == "repeat" and len(window):
        # The piece again, as often as the furthest window needs, from the first beat where its first
        # note can follow the last note's end, as a chorale's next verse or a reel's next round does.
        # (From the next bar line, an upbeat after a full last bar left three beats of silence that
        # the music never has.) One copy more than the windows reach: a copy may end up to a beat
        # short of the next one's start.
        first = int(start.min())
        period = -(-(end - first) // grid.steps_per_beat) * grid.steps_per_beat
        copies = -(-(int(window.max()) + width - begin) // period) + 1
        repeat = np.repeat(np.arange(copies) * period, len(pitch))
        pitch, start, stop = np.tile(pitch, copies), np.tile(start, copies) + repeat, np.tile(stop, copies) + repeat
        end = int(stop.max())

    def roll_moved(semitones: int) -> PianoRoll:
        return PianoRoll.from_notes(pitch + semitones, start, stop, grid, n_steps=end, out_of_range=config.out_of_range)

    lo, hi = np.clip(window, 0, end), np.clip(window + width, 0, end)
    # Which windows are moved by how many semitones: all by each transposition, or each to C.
    transpositions = [0] if held_out else config.transpositions
    plan = [(semitones, np.ones(len(window), dtype=bool)) for semitones in transpositions]
    if config.normalize_key and len(window):
        as_written = roll_moved(0)
        moves = np.array([move_to_c(as_written.slice(a, b)) for a, b in zip(lo, hi)])
        plan = [(int(semitones), moves == semitones) for semitones in np.unique(moves)]

    rows, offsets, transposes, shift_column = [], [], [], []
    for semitones, chosen in plan:
        roll = roll_moved(semitones)
        onsets = np.concatenate([[0], np.cumsum((roll.cells == ONSET).sum(axis=0))])
        keep = chosen & (onsets[hi] - onsets[lo] >= max(config.min_notes, 1))
        if not keep.any():
            continue
        planes = roll.encode(config.encoding)
        chunks = np.zeros((int(keep.sum()), *config.shape), dtype=bool)  # silence where a window overhangs
        for chunk, first in zip(chunks, window[keep]):
            a, b = max(first, 0), min(first + width, end)
            chunk[:, :, a - first : b - first] = planes[:, :, a:b]
        if config.encoding == "onset":
            # A note already sounding when the window opens begins there, as PianoRoll.slice does.
            chunks[:, 1, :, 0] |= chunks[:, 0, :, 0]
        rows.append(pack_planes(chunks))
        offsets.append(window[keep])
        transposes.append(np.full(int(keep.sum()), semitones))
        shift_column.append(shift_of[keep])
    if not rows:
        if not held_out:
            raise _skip(f"near-empty (no chunk with at least {config.min_notes} notes)")
        rows, offsets, transposes, shift_column = [np.zeros((0, config.bytes_per_chunk), np.uint8)], [[]], [[]], [[]]
    return {
        "rows": np.concatenate(rows),
        "offset": np.concatenate(offsets).astype(np.int32),
        "transpose": np.concatenate(transposes).astype(np.int32),
        "shift": np.concatenate(shift_column).astype(np.int32),
    }


def _skip(reason: str) -> MidiError:
    error = MidiError(reason)
    error.reason = reason  # type: ignore[attr-defined]
    return error


def _process_file(path: str, config: DatasetConfig) -> dict[str, Any]:
    """Worker side: one file to a result record (chunks or a skip reason). Never raises on bad input."""
    try:
        data = read_bytes(path)
    except MidiError as error:
        return {"status": "skipped", "reason": error.reason}
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        notes = read_notes(data, config.grid.steps_per_beat, include_drums=config.include_drums, name=path)
        tune = tune_fingerprint(notes.pitch, notes.start, notes.end)
        split = split_of(tune, config.val_fraction, config.test_fraction)
        chunks = chunk_piece(notes, config, held_out=split != "train")
    except MidiError as error:
        return {"status": "skipped", "reason": getattr(error, "reason", str(error)), "hash": digest}
    return {
        "status": "ok",
        "hash": digest,
        "tune": tune,
        "split": split,
        "tempo": round(notes.tempo, 3),
        "n_steps": int(notes.end.max()),
        **chunks,
    }


# -- the whole run ---------------------------------------------------------------------------------


def preprocess(
    midi_dir: str | Path,
    out: str | Path | None = None,
    config: DatasetConfig = DatasetConfig(),
    *,
    workers: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
    overwrite: bool = False,
    progress: bool = False,
) -> PreprocessSummary:
    """Turn the MIDI files under ``midi_dir`` into a dataset at ``out`` (default ``datasets/<folder name>``).

    See the module docstring for what happens. Resumes an interrupted run of the same config.
    Raises ApolloError for a missing or empty folder, a folder without a usable file, or an
    existing ``out`` (unless ``overwrite``).
    """
    started = time.perf_counter()
    midi_dir = Path(midi_dir)
    if not midi_dir.is_dir():
        raise ApolloError(f"{midi_dir}: no such folder" if not midi_dir.exists() else f"{midi_dir}: not a folder")
    out = Path(out) if out is not None else Path("datasets") / midi_dir.resolve().name
    partial = out.with_name(out.name + ".partial")
    if out.exists() and not out.is_dir():
        raise ApolloError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ApolloError(f"{out} already exists; pass --overwrite to replace it")

    files, problems = find_midi_files(midi_dir)
    if not files:
        raise ApolloError(f"{midi_dir}: no .mid or .midi files in it")
    summary = PreprocessSummary(out, files_found=len(files) + len(problems))

    log = _PartialLog(partial, config, midi_dir)
    try:
        done = log.load(files)
        summary.resumed = len(done)
        todo = [path for path in files if path not in done]
        task = functools.partial(_process_file, config=config)
        with _progress_bar(total=len(files), initial=len(done), disable=not progress) as bar:
            paths = [str(midi_dir / p) for p in todo]
            results = isolated_map(task, paths, workers=workers, timeout=timeout, memory_limit=memory_limit)
            with contextlib.closing(results):  # closing: the workers end at once, even on Ctrl-C
                for index, ok, value in results:
                    # A crash, hang or memory blow-up may depend on the machine: a rerun tries again.
                    record = value if ok else {"status": "skipped", "reason": value, "retry": True}
                    log.append(todo[index], record)
                    bar.update()
        log.close()
        _finish(log, files, problems, config, midi_dir, out, overwrite, summary)
    finally:
        log.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _progress_bar(**options: Any):
    from tqdm import tqdm

    class Bar(tqdm):
        monitor_interval = 0  # no monitor thread: this process stays single-threaded and may fork

    return Bar(unit="file", file=sys.stderr, **options)


class _PartialLog:
    """The ``<OUT>.partial`` folder: per-file results appended as they arrive, so a rerun resumes.

    ``chunks.bin`` holds packed rows back to back; ``files.jsonl`` one line per finished file,
    naming the rows it owns and flushed after them. A line whose rows did not all reach the disk
    (or a half-written last line) is dropped on resume, and so is everything if the config changed.
    """

    def __init__(self, folder: Path, config: DatasetConfig, midi_dir: Path) -> None:
        self.folder = folder
        self.config = config
        self.width = config.bytes_per_chunk
        identity = {"format_version": FORMAT_VERSION, "config": config.to_dict(), "midi_dir": str(midi_dir.resolve())}
        self.identity = json.loads(json.dumps(identity))  # as it reads back: tuples become lists
        self.midi_dir = midi_dir
        self.records: dict[str, dict[str, Any]] = {}
        self.rows = 0
        self._chunks = self._lines = None

    def load(self, files: list[str]) -> set[str]:
        """Open the folder (resuming what matches) and return those of ``files`` already done."""
        state = self.folder / "state.json"
        try:
            same = json.loads(state.read_text()) == self.identity
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)
            state.write_text(json.dumps(self.identity))
        chunks_path = self.folder / "chunks.bin"
        rows_on_disk = chunks_path.stat().st_size // self.width if same and chunks_path.exists() else 0
        lines_path = self.folder / "files.jsonl"
        kept = []
        if same and lines_path.exists():
            for line in lines_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # the last line was cut off by the interruption
                if record["first_row"] + record.get("n_chunks", 0) > rows_on_disk:
                    break
                kept.append(line)
                self.rows = max(self.rows, record["first_row"] + record.get("n_chunks", 0))
                if not record.get("retry") and self._unchanged(record):
                    self.records[record["path"]] = _compact(record)
        # Rewrite both files to exactly what is kept, then append from there.
        with open(self.folder / "chunks.bin", "ab") as f:
            f.truncate(self.rows * self.width)
        lines_path.write_text("".join(line + "\n" for line in kept))
        self._chunks = open(self.folder / "chunks.bin", "ab")
        self._lines = open(lines_path, "a")
        self._flushed = time.monotonic()
        wanted = set(files)
        self.records = {path: record for path, record in self.records.items() if path in wanted}
        return set(self.records)

    def _unchanged(self, record: dict[str, Any]) -> bool:
        """Whether the file a record describes is still there, unchanged (else it is done again)."""
        try:
            info = os.stat(self.midi_dir / record["path"])
        except OSError:
            return False
        return (record["size"], record["mtime_ns"]) == (info.st_size, info.st_mtime_ns)

    def append(self, path: str, result: dict[str, Any]) -> None:
        try:
            info = os.stat(self.midi_dir / path)
            size, mtime = info.st_size, info.st_mtime_ns
        except OSError:  # vanished meanwhile: the record will not match on resume, so it is redone
            size, mtime = -1, -1
        rows = result.pop("rows", None)
        record = {"path": path, "size": size, "mtime_ns": mtime, "first_row": self.rows}
        for key, value in result.items():
            record[key] = value.tolist() if isinstance(value, np.ndarray) else value
        if rows is not None:
            self._chunks.write(np.ascontiguousarray(rows).tobytes())
            record["n_chunks"] = len(rows)
            self.rows += len(rows)
        self._lines.write(json.dumps(record) + "\n")
        self.records[path] = _compact(record)
        # Handing buffers to the OS a few times a second (rows before lines) bounds what kill -9
        # can lose; flushing after every file would cost more than the parsing.
        if time.monotonic() - self._flushed > 0.25:
            self._chunks.flush()
            self._lines.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        for f in (self._chunks, self._lines):  # in this order: rows reach the OS before their lines
            if f is not None and not f.closed:
                f.close()


PROVENANCE = ("offset", "transpose", "shift")  # per-chunk columns a worker reports


def _compact(record: dict[str, Any]) -> dict[str, Any]:
    """A record as kept in memory until the end: only what the manifest needs, provenance as one
    int32 array (Python lists cost about 36 bytes per number, this 12 per chunk).
    """
    fields = ("status", "reason", "hash", "tune", "split", "tempo", "n_steps", "first_row", "n_chunks")
    kept = {key: record[key] for key in fields if key in record}
    if "offset" in record:
        kept["provenance"] = np.array([record[column] for column in PROVENANCE], dtype=np.int32)
    return kept


def _finish(
    log: _PartialLog,
    files: list[str],
    problems: list[dict[str, str]],
    config: DatasetConfig,
    midi_dir: Path,
    out: Path,
    overwrite: bool,
    summary: PreprocessSummary,
) -> None:
    """Deduplicate, split, write the dataset into the partial folder and rename it into place."""
    skipped = list(problems)
    used: list[dict[str, Any]] = []
    first_with_hash: dict[str, str] = {}
    for path in files:  # sorted, so the first copy of a duplicated file is the one kept
        record = log.records[path]
        if record["status"] != "ok":
            skipped.append({"file": path, "reason": record["reason"]})
        elif record["hash"] in first_with_hash:
            skipped.append({"file": path, "reason": f"duplicate (same content as {first_with_hash[record['hash']]})"})
        else:
            first_with_hash[record["hash"]] = path
            used.append({**record, "path": path})
    skipped.sort(key=lambda entry: entry["file"])
    summary.skipped = skipped
    summary.files_used = len(used)
    if not used:
        shutil.rmtree(log.folder, ignore_errors=True)
        reasons = ", ".join(f"{n} {r}" for r, n in summary.skipped_by_reason().most_common(4))
        raise ApolloError(f"{midi_dir}: no usable MIDI file ({len(skipped)} skipped: {reasons})")

    splits = [r["split"] for r in used]  # decided by each file's tune (apollo.splits)

    final = log.folder / "dataset"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    pieces: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}  # [4, n] blocks: file index + provenance
    width = config.bytes_per_chunk
    with open(log.folder / "chunks.bin", "rb") as source:
        for split in SPLITS:
            with open(final / f"{split}.bin", "wb") as target:
                for file_index, (record, file_split) in enumerate(zip(used, splits)):
                    if file_split != split:
                        continue
                    # Row by file, read and written in pieces: memory stays flat however big the set.
                    source.seek(record["first_row"] * width)
                    target.write(source.read(record["n_chunks"] * width))
                    index = np.full((1, record["n_chunks"]), file_index, dtype=np.int32)
                    pieces[split].append(np.concatenate([index, record["provenance"]]))
                target.flush()
                os.fsync(target.fileno())
    chunks = {}
    for split, blocks in pieces.items():
        table = np.concatenate(blocks, axis=1) if blocks else np.zeros((4, 0), dtype=np.int32)
        chunks[split] = {column: values.tolist() for column, values in zip(("file", *PROVENANCE), table)}
    summary.train_chunks = len(chunks["train"]["file"])
    summary.val_chunks = len(chunks["val"]["file"])
    summary.test_chunks = len(chunks["test"]["file"])
    wanted = {"val": config.val_fraction, "test": config.test_fraction}
    summary.held_out_files = {split: splits.count(split) for split, fraction in wanted.items() if fraction > 0}

    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "apollo_version": __version__,
        "config": config.to_dict(),
        "shape": list(config.shape),
        "bytes_per_chunk": width,
        "bit_order": "little",
        "source": midi_dir.resolve().name,
        "counts": {
            "files_found": summary.files_found,
            "files_used": len(used),
            "files_skipped": len(skipped),
            "train_files": splits.count("train"),
            "val_files": splits.count("val"),
            "test_files": splits.count("test"),
            "train_chunks": summary.train_chunks,
            "val_chunks": summary.val_chunks,
            "test_chunks": summary.test_chunks,
        },
        "files": {
            "path": [r["path"] for r in used],
            "hash": [r["hash"] for r in used],
            "tune": [r["tune"] for r in used],
            "split": splits,
            "tempo": [r["tempo"] for r in used],
            "n_steps": [r["n_steps"] for r in used],
            "n_chunks": [r["n_chunks"] for r in used],
        },
        "chunks": chunks,
        "skipped": skipped,
        "finished": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }
    with open(final / "manifest.json", "w") as f:
        json.dump(manifest, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())

    # The finished folder appears by one rename; an old one is moved aside first, then removed.
    out.parent.mkdir(parents=True, exist_ok=True)
    old = log.folder / "replaced"
    if out.exists():
        if not overwrite and any(out.iterdir()):
            raise ApolloError(f"{out} already exists and is not empty; pass --overwrite to replace it")
        os.replace(out, old)
    os.replace(final, out)
    log.close()
    shutil.rmtree(log.folder, ignore_errors=True)
