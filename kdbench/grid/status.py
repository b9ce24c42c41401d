"""The status of each run of a grid, read from its results folder (records, checkpoints and run locks)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kdbench.codeid import code_identity, stale_reasons
from kdbench.engine.checkpoint import checkpoint_files
from kdbench.runspec import RunSpec
from kdbench.tracking.lock import LOCK_NAME, LockHolder, lock_holder
from kdbench.tracking.record import RunRecord, read_record

Status = Literal["done", "failed", "running", "interrupted", "new"]
STATUSES: tuple[Status, ...] = ("done", "failed", "running", "interrupted", "new")


@dataclass(frozen=True)
class PlannedRun:
    """A run of the grid and what its folder says about it (``stale``: why a done run no longer matches)."""

    spec: RunSpec
    status: Status
    record: RunRecord | None
    holder: LockHolder | None = None
    stale: list[str] = field(default_factory=list)


def run_status(run_dir: Path) -> tuple[Status, RunRecord | None, LockHolder | None]:
    """done/failed from the record; running while another process holds the run's lock; interrupted when only a
    checkpoint exists; else new."""
    record = read_record(run_dir)
    if record is not None and record.status == "done":
        return "done", record, None
    holder = lock_holder(run_dir / LOCK_NAME)
    if holder is not None:
        return "running", record, holder
    if record is not None:
        return record.status, record, None
    if checkpoint_files(run_dir):
        return "interrupted", None, None
    return "new", None, None


def plan_runs(specs: list[RunSpec], runs_root: Path) -> list[PlannedRun]:
    """Attach a status to every spec, and to every done run the reasons it is stale (if any)."""
    found = {spec.run_id: run_status(runs_root / spec.run_id) for spec in specs}
    identities: dict[str, dict[str, str]] = {}
    planned = []
    for spec in specs:
        status, record, holder = found[spec.run_id]
        stale: list[str] = []
        if record is not None and status == "done":
            if spec.method not in identities:
                identities[spec.method] = code_identity(spec.method)
            teacher = found.get(spec.teacher.run_id) if spec.teacher is not None else None
            teacher_record = teacher[1] if teacher is not None else None
            stale = stale_reasons(record, teacher_record, identities[spec.method])
        planned.append(PlannedRun(spec, status, record, holder, stale))
    return planned


def status_counts(planned: list[PlannedRun]) -> dict[str, Counter]:
    """Counts of each status per stage ('stale' counts the done runs that are stale)."""
    counts: dict[str, Counter] = {"teacher": Counter(), "student": Counter()}
    for run in planned:
        counts[run.spec.stage][run.status] += 1
        counts[run.spec.stage]["stale"] += bool(run.stale)
    return counts


def stale_summary(planned: list[PlannedRun], retraining: bool = False) -> list[str]:
    """One line per method with stale done runs: how many, what changed, and what happens to them."""
    by_method: dict[str, list[PlannedRun]] = {}
    for run in planned:
        if run.stale:
            by_method.setdefault(run.spec.display_method, []).append(run)
    lines = []
    for method, runs in by_method.items():
        reasons = sorted({reason for run in runs for reason in run.stale})
        lines.append(f"{len(runs)} done runs of '{method}' were trained by other code ({', '.join(reasons)} "
                     f"changed); {'training them again now' if retraining else '--rerun stale retrains them'}")
    return lines
