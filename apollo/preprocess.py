"""``apollo preprocess``: a folder of MIDI files becomes a dataset of fixed piano-roll chunks.

The run, in order:

1. Walk ``MIDI_DIR`` recursively for ``.mid`` / ``.midi`` files (any case). Symbolic links to files
   are used; linked folders are entered once each, so link loops end.
2. Convert the files in worker processes, one per core, with a progress bar. Each worker reads a
   file, hashes it, parses it (:func:`apollo.midi.read_notes`) and cuts it into chunks
   (:func:`chunk_piece`). A worker runs under a memory limit (``RLIMIT_AS``) and a per-file
   timeout: if the native parser crashes, runs away with memory or hangs, only that file is lost,
   recorded as skipped ("parser crashed (signal 11, SIGSEGV)"), and a fresh worker carries on.
3. Every file's result is appended to ``<OUT>.partial/`` as it arrives. An interrupted run
   (Ctrl-C, kill -9, power loss) leaves only that folder, which nothing mistakes for a dataset, and
   no worker (they end with the main process); running the same command again picks up where it
   stopped.
4. Finish: exact duplicates (same content hash) are dropped, files are split into train and
   validation **by file** (the ``val_fraction`` of files with the smallest content hashes, so the
   split is deterministic and no piece is on both sides), the chunks are written in file order
   (format: :mod:`apollo.dataset`), ``manifest.json`` last, and the folder appears at ``OUT`` by a
   single rename.

Short pieces: windows of ``n_steps`` start every ``hop`` steps from the first bar with a note; a
window is kept if at least ``min_fill`` (default half) of it lies inside the piece, the rest being
silence. So a piece shorter than one chunk but at least half a chunk long gives one chunk padded
with silence, a shorter one is skipped ("too short"), and a piece's tail gets a padded chunk only if
it is long enough. Windows with fewer than ``min_notes`` note onsets are dropped as (near-)empty.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import functools
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import resource
import shutil
import signal
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
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

__all__ = [
    "MIDI_SUFFIXES",
    "PreprocessSummary",
    "chunk_piece",
    "find_midi_files",
    "isolated_map",
    "preprocess",
]

MIDI_SUFFIXES = (".mid", ".midi")
DEFAULT_TIMEOUT = 30.0  # seconds per file; a normal file takes a millisecond
DEFAULT_MEMORY_LIMIT = 1 << 30  # bytes a worker may allocate beyond what it holds at start


@dataclass
class PreprocessSummary:
    """What :func:`preprocess` did."""

    out: Path
    files_found: int = 0
    files_used: int = 0
    train_chunks: int = 0
    val_chunks: int = 0
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
        return (
            f"{self.files_used} of {self.files_found} files used, {skipped}; "
            f"{self.train_chunks + self.val_chunks} chunks written ({self.train_chunks} train, "
            f"{self.val_chunks} validation) to {self.out} in {self.seconds:.1f} s{resumed}"
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


def chunk_piece(notes: MidiNotes, config: DatasetConfig) -> dict[str, np.ndarray]:
    """Cut one piece into packed chunks; see the module docstring for the rules.

    Returns ``rows`` (uint8 ``[n, bytes_per_chunk]``) and the int32 columns ``offset`` (first step
    of the window in the piece, negative when a time shift reaches before it), ``transpose`` and
    ``shift``. Raises MidiError (with ``.reason``) when no chunk survives.
    """
    grid, width = config.grid, config.n_steps
    bar = 4 * grid.steps_per_beat  # windows start on (4/4) bar lines: most music lives there
    begin = int(notes.start.min()) // bar * bar
    end = int(notes.end.max())
    need = int(np.ceil(config.min_fill * width))
    if end - begin < need:
        error = MidiError(f"too short ({end - begin} steps, a chunk needs at least {need})")
        error.reason = str(error)  # type: ignore[attr-defined]
        raise error
    starts = begin + config.hop * np.arange((end - begin - need) // config.hop + 1)
    shifts = np.arange(config.time_shift + 1)
    # Every (start, shift) pair is one window; a shift of s delays the music by s steps.
    window = (starts[None, :] - shifts[:, None]).reshape(-1)
    shift_of = np.repeat(shifts, len(starts))

    def roll_moved(semitones: int) -> PianoRoll:
        return PianoRoll.from_notes(
            notes.pitch + semitones, notes.start, notes.end, grid, n_steps=end, out_of_range=config.out_of_range
        )

    lo, hi = np.clip(window, 0, end), np.clip(window + width, 0, end)
    # Which windows are moved by how many semitones: all by each transposition, or each to C.
    plan = [(semitones, np.ones(len(window), dtype=bool)) for semitones in config.transpositions]
    if config.normalize_key:
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
        error = MidiError(f"near-empty (no chunk with at least {config.min_notes} notes)")
        error.reason = str(error)  # type: ignore[attr-defined]
        raise error
    return {
        "rows": np.concatenate(rows),
        "offset": np.concatenate(offsets).astype(np.int32),
        "transpose": np.concatenate(transposes).astype(np.int32),
        "shift": np.concatenate(shift_column).astype(np.int32),
    }


def _process_file(path: str, config: DatasetConfig) -> dict[str, Any]:
    """Worker side: one file to a result record (chunks or a skip reason). Never raises on bad input."""
    try:
        data = read_bytes(path)
    except MidiError as error:
        return {"status": "skipped", "reason": error.reason}
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        notes = read_notes(data, config.grid.steps_per_beat, include_drums=config.include_drums, name=path)
        chunks = chunk_piece(notes, config)
    except MidiError as error:
        return {"status": "skipped", "reason": getattr(error, "reason", str(error)), "hash": digest}
    return {
        "status": "ok",
        "hash": digest,
        "tempo": round(notes.tempo, 3),
        "n_steps": int(notes.end.max()),
        **chunks,
    }


# -- isolated workers ------------------------------------------------------------------------------


def _limit_memory(budget: int) -> None:
    """Let this process allocate at most ``budget`` bytes of address space beyond what it has now."""
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return  # not Linux: no limit, the timeout still applies
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + budget
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _end_with_parent(parent: int | None) -> None:
    """Have the kernel kill this worker when its parent dies (Linux), even in the middle of a file.

    Between files the pipe already tells a worker that the main process is gone (EOFError,
    BrokenPipeError); this also ends one stuck in native code, which nobody would stop once the main
    process is killed. ``parent``: the main process's pid when it forked this worker, else None.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(ctypes.c_int(1), ctypes.c_ulong(signal.SIGKILL))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:  # it died before prctl: no signal will come
        os._exit(0)
    if parent is None:
        # A fork server's child. Its copy of the server's keep-alive pipe would keep the server
        # running after the main process dies, for as long as this worker lives; closed, the server
        # exits with the main process and its exit kills this worker. (It cannot have exited before
        # prctl: this copy held it.) A worker starts no processes, so it needs no server.
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        keep_alive = getattr(server, "_forkserver_alive_fd", None)
        if keep_alive is not None:
            os.close(keep_alive)
            server._forkserver_alive_fd = None


def _worker(
    conn: multiprocessing.connection.Connection,
    func: Callable,
    memory_limit: int | None,
    inherited: Sequence[multiprocessing.connection.Connection] = (),
    parent: int | None = None,
) -> None:
    """Worker loop: receive batches of (index, item), send back (index, ok, result-or-reason) each."""
    _end_with_parent(parent)
    for other in inherited:
        other.close()
    faulthandler.disable()  # a crash is reported by the parent as one line, not a dump on the terminal
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_limit:
        _limit_memory(memory_limit)
    try:
        conn.send(None)  # ready: start-up time must not count against the first file's timeout
    except OSError:  # the parent is gone
        return
    while True:
        try:
            batch = conn.recv()
        except EOFError:  # the parent is gone
            return
        if batch is None:
            return
        for index, item in batch:
            try:
                message = (index, True, func(item))
            except MemoryError:
                message = (index, False, f"out of memory (over the {_size(memory_limit)} limit)")
            except Exception as error:  # a bug or an unforeseen input: lose the file, not the run
                text = " ".join(str(error).split())[:100]
                message = (index, False, f"unexpected error ({type(error).__name__}: {text})")
            try:
                conn.send(message)
            except (BrokenPipeError, EOFError, OSError):
                return


def _size(n: int | None) -> str:
    return "unlimited" if not n else f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"


def _context() -> multiprocessing.context.BaseContext:
    """How to start workers: fork when that is safe, else from a fork server.

    Forking this process directly is the fastest start (0.3 s less per run than a fork server, a
    tenth of a run on a few thousand files). On Linux it is safe while no other Python thread runs:
    none can hold a lock the child would inherit locked (native pools such as OpenBLAS's reset
    themselves on fork). A caller with threads (a trainer, a GUI) gets workers forked from a small
    single-threaded server instead, as do other systems.
    """
    methods = multiprocessing.get_all_start_methods()
    if sys.platform == "linux" and "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["apollo.preprocess", "symusic"])  # no effect once the server runs
    return ctx


class _Slot:
    """One worker process and the batch it is working through."""

    def __init__(self, ctx, func: Callable, memory_limit: int | None, siblings: Sequence[_Slot] = ()) -> None:
        self.conn, child = ctx.Pipe()
        forked = ctx.get_start_method() == "fork"
        # A forked worker holds copies of the parent's pipe ends, its own included; it closes them,
        # or it would never see the parent's end close when the parent dies (and would wait forever).
        inherited = [self.conn, *(slot.conn for slot in siblings)] if forked else []
        parent = os.getpid() if forked else None  # a fork server's worker is the server's child
        args = (child, func, memory_limit, inherited, parent)
        self.process = ctx.Process(target=_worker, args=args, daemon=True)
        with warnings.catch_warnings():
            # Python 3.12+ warns on any fork while native threads (OpenBLAS's pool) exist; see _context.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.process.start()
        child.close()
        self.pending: list[tuple[int, Any]] = []  # sent, no answer yet; pending[0] is being worked on
        self.ready = False  # the worker has started and said so
        self.since = time.monotonic()  # when the current file started (once ready)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=None if kill else 5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def isolated_map(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    workers: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
) -> Iterator[tuple[int, bool, Any]]:
    """Run ``func`` on every item in worker processes that may crash, hang or run out of memory.

    Yields ``(index, True, result)`` or ``(index, False, reason)`` as items finish, in any order.
    Reasons: "parser crashed (signal 11, SIGSEGV)", "timed out after 30 s", "out of memory (over
    the 1 GiB limit)", "unexpected error (...)". A dead or stuck worker is replaced and the rest of
    its batch is handed out again. ``func`` must be picklable (a module-level function or a
    partial of one).
    """
    ctx = _context()
    todo: list[tuple[int, Any]] = list(enumerate(items))[::-1]  # a stack: pop() takes the next item
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    slots: list[_Slot] = []
    failed_starts = 0
    try:
        for _ in range(n_workers if todo else 0):
            slots.append(_Slot(ctx, func, memory_limit, slots))
        while todo or any(slot.pending for slot in slots):
            for slot in slots:
                if not slot.pending and todo:
                    # Small batches keep the pipe busy; a crash only sends the batch's rest back.
                    size = max(1, min(16, len(todo) // (4 * len(slots))))
                    slot.pending = [todo.pop() for _ in range(min(size, len(todo)))]
                    slot.since = time.monotonic()
                    try:
                        slot.conn.send(slot.pending)
                    except OSError:  # the worker is already dead; handled below
                        pass
            busy = [slot for slot in slots if slot.pending]
            ready = multiprocessing.connection.wait(
                [s.conn for s in busy] + [s.process.sentinel for s in busy], timeout=0.5
            )
            for i, slot in enumerate(slots):
                if not slot.pending:
                    continue
                alive = True
                if slot.conn in ready or slot.process.sentinel in ready:
                    # Drain what arrived, even from a worker that died after sending it.
                    try:
                        while slot.pending and slot.conn.poll():
                            message = slot.conn.recv()
                            slot.since = time.monotonic()
                            if message is None:  # started
                                slot.ready, failed_starts = True, 0
                                continue
                            slot.pending.pop(0)
                            yield message
                    except (EOFError, OSError):
                        alive = False
                alive = alive and slot.process.is_alive()
                stuck = slot.ready and timeout and time.monotonic() - slot.since > timeout
                if alive and not stuck:
                    continue
                # Dead or stuck: replace the worker, blame the file it was on, hand out the rest.
                if not slot.ready:  # died before it could start: no file is to blame
                    failed_starts += 1
                    if failed_starts >= 3:
                        raise ApolloError(
                            f"worker processes die as they start ({_death_reason(slot.process)}); a script "
                            "that runs this must guard its top level with `if __name__ == \"__main__\":`"
                        )
                    todo.extend(reversed(slot.pending))
                    slot.pending = []
                    slot.stop(kill=True)
                    slots[i] = _Slot(ctx, func, memory_limit, slots[:i] + slots[i + 1 :])
                    continue
                if alive:
                    slot.process.kill()
                reason = _death_reason(slot.process) if not alive else f"timed out after {timeout:g} s"
                culprit, *rest = slot.pending
                slot.pending = []
                todo.extend(reversed(rest))  # back on the stack, first in line
                slot.stop(kill=True)
                slots[i] = _Slot(ctx, func, memory_limit, slots[:i] + slots[i + 1 :])
                yield culprit[0], False, reason
    finally:
        for slot in slots:
            slot.stop(kill=bool(slot.pending))


def _death_reason(process: multiprocessing.process.BaseProcess) -> str:
    process.join(timeout=1)
    code = process.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"parser crashed (signal {-code}, {name})"
    return f"worker exited unexpectedly (code {code})"


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
    fields = ("status", "reason", "hash", "tempo", "n_steps", "first_row", "n_chunks")
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

    # Validation: the files with the smallest hashes. Content decides, not names or order.
    n_val = round(config.val_fraction * len(used))
    if config.val_fraction > 0 and len(used) >= 2:
        n_val = min(max(n_val, 1), len(used) - 1)
    val_hashes = set(sorted(r["hash"] for r in used)[:n_val])
    splits = ["val" if r["hash"] in val_hashes else "train" for r in used]

    final = log.folder / "dataset"
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    pieces: dict[str, list[np.ndarray]] = {"train": [], "val": []}  # [4, n] blocks: file index + provenance
    width = config.bytes_per_chunk
    with open(log.folder / "chunks.bin", "rb") as source:
        for split in ("train", "val"):
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
            "train_chunks": summary.train_chunks,
            "val_chunks": summary.val_chunks,
        },
        "files": {
            "path": [r["path"] for r in used],
            "hash": [r["hash"] for r in used],
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
