"""The CPUs this process may use (no torch import): Slurm's allocation, else the affinity mask."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may use: SLURM_CPUS_PER_TASK when set (an unbound task sees the whole node), else the
    affinity mask (taskset, cgroups' cpusets), else ``os.cpu_count()``."""
    given = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_workers(workers: int | str, device: str) -> int:
    """``executor.workers`` as a process count: ``auto`` is one single-threaded process per usable CPU on the CPU
    (tiny models scale across processes, not threads) and one process on a GPU."""
    if workers != "auto":
        return int(workers)
    return 1 if device.startswith("cuda") else usable_cpus()
