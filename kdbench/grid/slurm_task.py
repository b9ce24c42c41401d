"""The callable a Slurm array task runs: one engine run, checkpointable so submitit can requeue it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from kdbench.engine import RunJob


def task_rank() -> int:
    """This process's global rank among the job's Slurm tasks (0 outside Slurm or with one task)."""
    value = os.environ.get("SLURM_PROCID", "0")
    return int(value) if value.isdigit() else 0


class RunFailedError(RuntimeError):
    """The run ended with a failed record (its traceback is in the record and in the job's stderr)."""


@dataclass
class SlurmRunTask:
    """Runs one RunJob inside a Slurm job; on the time-limit or preemption signal, submitit calls `checkpoint`."""

    job: RunJob

    def __call__(self) -> dict[str, Any]:
        """Train (or resume) the run; every task of a multi-task job calls this, rank 0's result is the job's."""
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        record = self.job()
        if record is None:  # a non-zero rank of a multi-task (DDP) run: rank 0 writes and reports
            return {"run_id": self.job.spec.run_id, "status": None, "rank": task_rank()}
        if record.status == "failed":  # a failed Slurm job, so that students waiting with afterok never start
            raise RunFailedError(f"run {record.run_id} failed: {record.reason}\n{record.traceback or ''}")
        return {"run_id": record.run_id, "status": record.status, "reason": record.reason, "rank": task_rank(),
                "top1": record.final.top1 if record.final else None}

    def checkpoint(self) -> Any:
        """Requeue the same run: the engine saves a checkpoint after every epoch and resumes from the last one."""
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmRunTask(self.job))
