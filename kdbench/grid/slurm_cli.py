"""Thin wrappers over Slurm's own commands: is it there, MaxArraySize, job states (squeue + sacct), scancel."""

from __future__ import annotations

import functools
import shutil
import subprocess

from kdbench.config import ConfigError

# States in which a job still holds its place in the queue or runs (squeue/sacct spelling).
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "CONFIGURING",
                 "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}
RUNNING_STATES = ACTIVE_STATES - {"PENDING", "REQUEUE_HOLD", "RESV_DEL_HOLD"}


def require_sbatch() -> None:
    """Raise ConfigError before anything is submitted when Slurm's client commands are not on PATH."""
    missing = [cmd for cmd in ("sbatch", "squeue", "sacct", "scancel") if shutil.which(cmd) is None]
    if missing:
        raise ConfigError(f"executor 'slurm': {', '.join(missing)} not found on PATH; on a Slurm login node load "
                          "Slurm's module, on a Debian machine start a local cluster with "
                          "`bash slurm/local-cluster.sh up` (as root), or run here with `--executor local`")


def _run(args: list[str], timeout: float = 60) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@functools.lru_cache(maxsize=1)
def max_array_size() -> int:
    """The cluster's MaxArraySize (array indices run 0..MaxArraySize-1), from `scontrol show config`."""
    for line in _run(["scontrol", "show", "config"]).splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return 1001  # Slurm's default


def _state_word(state: str) -> str:
    return state.split()[0].rstrip("+") if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED


def job_states(job_ids: list[str], since: str | None = None) -> dict[str, str]:
    """State of each job id ('123' or array task '123_4'): squeue for live jobs, sacct for finished ones."""
    wanted = set(job_ids)
    if not wanted or shutil.which("squeue") is None:  # no Slurm here: the records alone tell (kdbench status)
        return {}
    states: dict[str, str] = {}
    for line in _run(["squeue", "-h", "-r", "--me", "-o", "%i|%T"]).splitlines():
        job_id, _, state = line.partition("|")
        if job_id in wanted:
            states[job_id] = _state_word(state)
    rest = wanted - set(states)
    if rest:
        bases = sorted({j.split("_")[0] for j in rest}, key=int)
        args = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(bases)]
        args += ["-S", since or "2000-01-01"]
        for line in _run(args).splitlines():
            job_id, _, state = line.partition("|")
            if job_id in rest:
                states[job_id] = _state_word(state)
    return states


def cancel_jobs(job_ids: list[str]) -> None:
    """scancel the given jobs or array tasks (ids Slurm no longer knows are ignored)."""
    for start in range(0, len(job_ids), 500):
        subprocess.run(["scancel", *job_ids[start:start + 500]], capture_output=True, text=True, timeout=60)
