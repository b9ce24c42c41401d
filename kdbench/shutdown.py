"""Stopping cleanly: SIGTERM as an interrupt, pool workers that stop on a signal and die with their parent.

Kept free of heavy imports (no torch): a spawned pool worker unpickles its initializer from this module before
anything else, so it installs its signal handlers and its parent-death signal within milliseconds of starting.

Main process (`kdbench run` with ``executor.workers > 1``), on Ctrl-C or SIGTERM: `stop_pool` sets the shared
stop event (a worker that takes another job exits instead of starting it), cancels the futures not yet handed
to a worker, sends SIGTERM to each worker, waits up to ``STOP_GRACE_S`` and then kills what is left (worker and
its own children), and removes temporary files left in the run folders.

Pool worker, on SIGINT (a terminal's Ctrl-C reaches the whole foreground process group) or SIGTERM (from the
main process, or PR_SET_PDEATHSIG when the main process dies, `kill -9` included): while training, the run is
abandoned mid-epoch (`WorkerInterrupted` unwinds it: an atomic write in progress removes its temporary file, the
previous checkpoint stays valid); idle, the worker exits at once. It exits with ``EXIT_INTERRUPTED`` (130)
through `os._exit`, without a traceback and without taking another job; its own children are killed first.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

EXIT_INTERRUPTED = 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE_S = 5.0  # main process: SIGTERM to a worker, then SIGKILL after this long
WORKER_GRACE_S = 3.0  # worker: after a stop signal, exit by itself after this long whatever it is doing
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class OutputClosed(BaseException):
    """Standard output was closed by its reader (`kdbench run GRID | head`); stops the command like an interrupt.

    A BaseException so that a run's `except Exception` does not record it as the run's failure.
    """


class WorkerInterrupted(KeyboardInterrupt):
    """Raised in a pool worker's main thread by SIGINT/SIGTERM while it trains a run."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM raises KeyboardInterrupt, exactly as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def ignore_stop_signals() -> None:
    """SIGINT and SIGTERM are ignored from now on (the process is stopping; a second Ctrl-C must not interrupt)."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Within the block (main thread only), SIGINT and SIGTERM do nothing: a clean-up that must not be cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def stop_signals_noted() -> Iterator[threading.Event]:
    """Within the block (main thread only), SIGINT and SIGTERM set the yielded event instead of raising.

    The code in the block polls the event and stops at a point of its choosing. Outside the main thread the
    event is never set (signals reach the main thread only, as KeyboardInterrupt).
    """
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {signum: signal.signal(signum, lambda *_: requested.set()) for signum in STOP_SIGNALS}
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread; processes started inside the block inherit the blocked mask.

    A spawned worker thus cannot be interrupted while Python boots and unpickles its initializer (no
    KeyboardInterrupt traceback from a half-started worker); `init_pool_worker` unblocks them once its handlers
    are in place, and a signal that arrived meanwhile is delivered then. Signals that reach this process during
    the block are delivered when it ends.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# ---------------------------------------------------------------------------------------------- process trees


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; elsewhere `pgrep -P`); empty when it has none or is gone."""
    tasks = Path(f"/proc/{pid}/task")
    if tasks.is_dir():
        children: list[int] = []
        for task in tasks.glob("*/children"):
            with contextlib.suppress(OSError):
                children.extend(int(word) for word in task.read_text().split())
        return children
    import subprocess

    with contextlib.suppress(OSError):
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
        return [int(word) for word in found.stdout.split()]
    return []


def descendant_pids(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid``, parents before their children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in child_pids(todo.pop()):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def signal_pids(pids: Iterable[int], signum: int) -> None:
    """Send ``signum`` to each pid that still exists."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants (collected first: a killed parent's children are re-parented)."""
    signal_pids([*descendant_pids(pid), pid], signal.SIGKILL)


# ------------------------------------------------------------------------------------------------ pool workers

_stop_event: Any = None  # multiprocessing.Event shared with the main process
_in_job = False
_stopping = False


def init_pool_worker(parent_pid: int, stop_event: Any, threads: int) -> None:
    """ProcessPoolExecutor initializer: stop on SIGINT/SIGTERM, die with the parent, then set up logging/torch."""
    global _stop_event
    _stop_event = stop_event
    for signum in STOP_SIGNALS:
        signal.signal(signum, _on_stop_signal)
    die_with_parent(parent_pid)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked since the spawn: see stop_signals_blocked

    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(threads)


def die_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when ``parent_pid`` dies (kill -9 included).

    Linux: PR_SET_PDEATHSIG. It fires when the *thread* that forked this process ends, not the process:
    ProcessPoolExecutor (3.9+, without max_tasks_per_child) starts its workers in `submit`, and `run_local`
    submits every job, starting every worker, from its own thread (the main thread of `kdbench run`), never from
    the pool's management thread. The parent may have died before the prctl: then getppid() is no longer
    ``parent_pid`` and this process stops at once. Elsewhere: a daemon thread polls getppid().
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)  # the C library python runs on (find_library runs ldconfig)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0:
            if os.getppid() != parent_pid:
                exit_worker()
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="kdbench-parent-watch", daemon=True).start()


def run_in_worker(job: Callable[[], Any]) -> Any:
    """What the pool runs: ``job()``, unless the grid is stopping; an interrupt ends the worker, not just the job."""
    global _in_job
    if _stopping or (_stop_event is not None and _stop_event.is_set()):
        exit_worker()  # the main process stopped the grid: a queued run must not start
    _in_job = True
    try:
        return job()
    except WorkerInterrupted:
        exit_worker()
    finally:
        _in_job = False


def _on_stop_signal(signum: int, frame: Any) -> None:
    global _stopping
    if _stopping:
        return
    _stopping = True
    threading.Thread(target=_exit_after, args=(WORKER_GRACE_S,), name="kdbench-stop-deadline", daemon=True).start()
    if _in_job:
        raise WorkerInterrupted(signal.Signals(signum).name)
    if not _sending_result(frame):
        exit_worker()
    # Interrupted while writing a result to the pool's queue: a half-written message would block the main
    # process's reader forever. Exit as soon as it is written.
    threading.Thread(target=_exit_after_send, name="kdbench-stop-after-send", daemon=True).start()


def _sending_result(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "_sendback_result":
            return True
        frame = frame.f_back
    return False


def _exit_after_send() -> None:
    main = threading.main_thread().ident
    while _sending_result(sys._current_frames().get(main)):
        time.sleep(0.01)
    exit_worker()


def _exit_after(seconds: float) -> None:
    time.sleep(seconds)
    exit_worker()


def exit_worker(code: int = EXIT_INTERRUPTED) -> None:
    """End this worker now: remove its unfinished temporary files, kill its children, exit without clean-up."""
    with contextlib.suppress(Exception):
        from kdbench.tracking.atomic import remove_own_temp_files

        remove_own_temp_files()
    with contextlib.suppress(Exception):
        signal_pids(descendant_pids(os.getpid()), signal.SIGKILL)
    os._exit(code)  # no flush: log handlers flush each line, and a stream's lock may be held by the main thread


# -------------------------------------------------------------------------------------------- the main process


def stop_pool(pool: Any, stop_event: Any, folders: Iterable[Path], grace: float = STOP_GRACE_S) -> bool:
    """Stop a ProcessPoolExecutor now: no queued job starts, workers end within ``grace`` s (then are killed).

    Temporary files of atomic writes left in ``folders`` (the run folders of the pool's jobs) are removed once
    every worker is gone, except in folders whose run lock another process holds (it may be writing there).
    Returns True when a worker ended on an interrupt of its own (exit code 130).
    """
    from kdbench.tracking.atomic import remove_temp_files
    from kdbench.tracking.lock import LOCK_NAME, lock_holder

    with stop_signals_deferred():
        stop_event.set()
        processes = list((getattr(pool, "_processes", None) or {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        signal_pids([p.pid for p in _running(processes)], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _running(processes) and time.monotonic() < deadline:
            time.sleep(0.02)
        for process in _running(processes):
            kill_tree(process.pid)
            process.join(2.0)
        for folder in folders:
            if lock_holder(Path(folder) / LOCK_NAME) is None:
                remove_temp_files(folder)
        if manager is not None:
            manager.join(5.0)
    return any(process.exitcode == EXIT_INTERRUPTED for process in processes)


def _running(processes: list[Any]) -> list[Any]:
    """The processes not ended yet, by their sentinel (`is_alive` may be wrong while another thread joins them)."""
    from multiprocessing.connection import wait

    ended = set(wait([p.sentinel for p in processes], timeout=0)) if processes else set()
    return [p for p in processes if p.sentinel not in ended]
