"""Isolated worker processes: run a function on many items where one item may crash, hang or eat memory.

:func:`isolated_map` is what :mod:`apollo.preprocess` parses MIDI files with. The native parser can
still crash (SIGSEGV), hang or allocate without bound on an input nobody foresaw, so each worker runs
under an address-space limit (``RLIMIT_AS``) and a per-item timeout; a worker that dies or stalls
costs only the item it was on, reported as a reason ("parser crashed (signal 11, SIGSEGV)", "timed
out after 30 s", "out of memory (over the 1 GiB limit)"), and a fresh worker takes over the rest of
its batch. Workers end with the main process, even when it is killed with SIGKILL in the middle of
an item (``PR_SET_PDEATHSIG`` on Linux, and the pipe between files), so an interrupted run leaves no
process behind. They are forked from the caller when it runs no other thread (the fastest start),
else started by a fork server (``spawn`` where there is none); see :func:`_context`.
"""

from __future__ import annotations

import ctypes
import faulthandler
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from apollo.errors import ApolloError

__all__ = ["DEFAULT_MEMORY_LIMIT", "DEFAULT_TIMEOUT", "isolated_map"]

DEFAULT_TIMEOUT = 30.0  # seconds per file; a normal file takes a millisecond
DEFAULT_MEMORY_LIMIT = 1 << 30  # bytes a worker may allocate beyond what it holds at start


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
    # Imported once in the server, not in every worker: this module (_worker), apollo.preprocess (the
    # function preprocess hands out, pickled by reference) and symusic (the parser it calls).
    ctx.set_forkserver_preload(["apollo.workers", "apollo.preprocess", "symusic"])  # no effect once the server runs
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
