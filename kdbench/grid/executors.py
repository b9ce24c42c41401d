"""Executors: run a list of RunJobs in this process, in a bounded process pool, or via submitit's debug executor."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from kdbench.engine import RunJob
from kdbench.tracking.record import RunRecord

log = logging.getLogger("kdbench")


def _init_worker(threads: int) -> None:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(threads)


def run_local(jobs: list[RunJob], workers: int = 1) -> Iterator[RunRecord]:
    """Run jobs here, one after another, or in ``workers`` spawned processes sharing the cores."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield job()
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(job) for job in jobs]
        for future in as_completed(futures):
            yield future.result()


def run_debug(jobs: list[RunJob], folder: Path) -> Iterator[RunRecord]:
    """Run jobs through submitit's in-process DebugExecutor (what the Slurm path pickles, without Slurm)."""
    import submitit

    executor = submitit.DebugExecutor(folder=str(folder))
    submitted = [executor.submit(job) for job in jobs]
    for job in submitted:
        yield job.result()


ExecutorFn = Callable[[list[RunJob]], Iterator[RunRecord]]
