"""The status of each run of a grid, read from its results folder."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kdbench.engine.checkpoint import CHECKPOINT_NAME
from kdbench.runspec import RunSpec
from kdbench.tracking.record import RECORD_NAME, RunRecord, read_record

Status = Literal["done", "failed", "interrupted", "new"]


@dataclass(frozen=True)
class PlannedRun:
    """A run of the grid and what its folder says about it."""

    spec: RunSpec
    status: Status
    record: RunRecord | None


def run_status(run_dir: Path) -> tuple[Status, RunRecord | None]:
    """done/failed from the record; interrupted when only a checkpoint exists; else new."""
    if (run_dir / RECORD_NAME).is_file():
        record = read_record(run_dir)
        assert record is not None
        return record.status, record
    if (run_dir / CHECKPOINT_NAME).is_file():
        return "interrupted", None
    return "new", None


def plan_runs(specs: list[RunSpec], runs_root: Path) -> list[PlannedRun]:
    """Attach a status to every spec."""
    planned = []
    for spec in specs:
        status, record = run_status(runs_root / spec.run_id)
        planned.append(PlannedRun(spec, status, record))
    return planned


def status_counts(planned: list[PlannedRun]) -> dict[str, Counter]:
    """Counts of each status per stage."""
    counts: dict[str, Counter] = {"teacher": Counter(), "student": Counter()}
    for run in planned:
        counts[run.spec.stage][run.status] += 1
    return counts
