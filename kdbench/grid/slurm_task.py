"""The callable a Slurm array task runs: one engine run, checkpointable so submitit can requeue it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdbench.engine import RunBusy, RunJob
from kdbench.engine.distributed import dist_info_from_env


class RunFailedError(RuntimeError):
    """The run ended with a failed record (its traceback is in the record and in the job's stderr)."""


class RunBusyError(RuntimeError):
    """Another process holds the run's lock: this task does not train it a second time."""


@dataclass
class SlurmRunTask:
    """Runs one RunJob inside a Slurm job; on the time-limit or preemption signal, submitit calls `checkpoint`."""

    job: RunJob

    def __call__(self) -> dict[str, Any]:
        """Train (or resume) the run; every task of a multi-task job calls this and gets rank 0's record."""
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        record = self.job()
        if isinstance(record, RunBusy):  # failing the job keeps students waiting with afterok from starting early
            raise RunBusyError(f"{record.describe()}; not trained twice (`kdbench run` resubmits it later)")
        if record.status == "failed":  # a failed Slurm job, so that students waiting with afterok never start
            raise RunFailedError(f"run {record.run_id} failed: {record.reason}\n{record.traceback or ''}")
        return {"run_id": record.run_id, "status": record.status, "reason": record.reason,
                "rank": dist_info_from_env().rank, "top1": record.final.top1 if record.final else None}

    def checkpoint(self) -> Any:
        """Requeue the same run: the engine saves a checkpoint after every epoch and resumes from the last one."""
        import submitit

        return submitit.helpers.DelayedSubmission(SlurmRunTask(self.job))
