"""Executors: run a list of RunJobs in this process, in a bounded process pool, or via submitit's debug executor."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

from kdbench.cpus import usable_cpus
from kdbench.engine import RunBusy, RunJob
from kdbench.shutdown import init_pool_worker, run_in_worker, stop_pool, stop_signals_blocked, stop_signals_noted
from kdbench.tracking.record import RunRecord

log = logging.getLogger("kdbench")


def run_local(jobs: list[RunJob], workers: int = 1) -> Iterator[RunRecord | RunBusy]:
    """Run jobs here, one after another, or in ``workers`` spawned processes sharing the cores.

    With a pool, any exit other than the last record (Ctrl-C or SIGTERM as KeyboardInterrupt, stdout closed, the
    caller closing this generator) stops it at once: no queued job starts, the workers abandon their epoch and
    end within seconds (see kdbench.shutdown). Workers also die with this process, `kill -9` included.
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield job()
        return
    threads = max(1, usable_cpus() // workers)
    context = get_context("spawn")
    stop = context.Event()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_pool_worker,
                               initargs=(os.getpid(), stop, threads))
    try:
        with stop_signals_noted() as stop_requested:
            # Every worker starts inside this loop, in this thread (see kdbench.shutdown.die_with_parent), with
            # SIGINT/SIGTERM blocked until its handlers are installed.
            with stop_signals_blocked():
                futures = set(pool.submit(run_in_worker, job) for job in jobs)
            while futures:
                # A signal only sets stop_requested: KeyboardInterrupt is raised here, never in the middle of the
                # futures' locks (an exception there could leave one held and hang the pool's thread).
                done, futures = wait(futures, timeout=0.1, return_when=FIRST_COMPLETED)
                if stop_requested.is_set():
                    raise KeyboardInterrupt("stop requested")
                for future in done:
                    yield future.result()
    except BaseException as error:
        interrupted = stop_pool(pool, stop, [job.run_dir for job in jobs])
        if isinstance(error, BrokenProcessPool) and interrupted:  # a worker got the Ctrl-C before this process
            raise KeyboardInterrupt("a worker was interrupted") from None
        raise
    pool.shutdown(wait=True)


def run_debug(jobs: list[RunJob], folder: Path) -> Iterator[RunRecord | RunBusy]:
    """Run jobs through submitit's in-process DebugExecutor (what the Slurm path pickles, without Slurm)."""
    import submitit

    executor = submitit.DebugExecutor(folder=str(folder))
    submitted = [executor.submit(job) for job in jobs]
    for job in submitted:
        yield job.result()


ExecutorFn = Callable[[list[RunJob]], Iterator[RunRecord]]
