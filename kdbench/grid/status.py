"""The status of each run of a grid, read from its results folder: the grid index, checkpoints and run locks."""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kdbench.codeid import current_code_identity, stale_reasons_of
from kdbench.runspec import RunSpec
from kdbench.tracking.index import GridIndex, RunSummary, load_index
from kdbench.tracking.lock import LOCK_NAME, LockHolder, lock_holder
from kdbench.tracking.record import RunRecord, read_record

Status = Literal["done", "failed", "running", "interrupted", "new"]
STATUSES: tuple[Status, ...] = ("done", "failed", "running", "interrupted", "new")
# kdbench.engine.checkpoint's file names (which imports torch); tests/test_index.py keeps the two equal.
CHECKPOINT_NAMES = ("checkpoint.pt", "checkpoint.prev.pt")


@dataclass(frozen=True)
class PlannedRun:
    """A run of the grid and what its folder says about it (``stale``: why a done run no longer matches).

    ``summary`` is the grid index's summary of the run's record, ``record`` the record itself (read from the run
    folder when first asked for); both None for a run without a record.
    """

    spec: RunSpec
    status: Status
    holder: LockHolder | None = None
    stale: list[str] = field(default_factory=list)
    run_id: str = ""
    runs_root: Path | None = None
    index: GridIndex | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.run_id:  # plan_runs passes it: hashing 10,000 specs again takes a while
            object.__setattr__(self, "run_id", self.spec.run_id)

    @functools.cached_property
    def summary(self) -> RunSummary | None:
        """The grid index's summary of the run's record."""
        return self.index.summary(self.run_id) if self.index is not None else None

    @functools.cached_property
    def record(self) -> RunRecord | None:
        """The run's full record (read on first use); None when it has none."""
        if self.runs_root is None or (self.index is not None and self.summary is None):
            return None
        return read_record(self.runs_root / self.run_id)


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / name).is_file() for name in CHECKPOINT_NAMES)


def _state(run_dir: Path, recorded: str | None) -> tuple[Status, LockHolder | None]:
    """done/failed from the record (``recorded``: its status); running while another process holds the run's
    lock; interrupted when only a checkpoint exists; else new."""
    if recorded == "done":
        return "done", None
    holder = lock_holder(run_dir / LOCK_NAME)
    if holder is not None:
        return "running", holder
    if recorded is not None:
        return recorded, None  # type: ignore[return-value]
    if _has_checkpoint(run_dir):
        return "interrupted", None
    return "new", None


def run_status(run_dir: Path) -> tuple[Status, RunRecord | None, LockHolder | None]:
    """The status of one run read from its folder alone (its record, lock and checkpoints), without the index."""
    record = read_record(run_dir)
    status, holder = _state(run_dir, record.status if record is not None else None)
    return status, record, holder


def plan_runs(specs: list[RunSpec], runs_root: Path, index: GridIndex | None = None,
              run_ids: list[str] | None = None) -> list[PlannedRun]:
    """Attach a status to every spec, and to every done run the reasons it is stale (if any).

    States come from the grid index (``load_index(runs_root)`` unless given), which is checked against the
    records on every load; locks and checkpoints are looked at only for runs without a finished record.
    ``run_ids`` are the specs' run ids when the caller has them (hashing 10,000 specs again takes a while).
    """
    index = index if index is not None else load_index(runs_root)
    ids = run_ids if run_ids is not None else [spec.run_id for spec in specs]
    identities: dict[str, dict[str, str]] = {}
    planned = []
    for spec, run_id in zip(specs, ids, strict=True):
        facts = index.facts(run_id)
        recorded = facts.status if facts is not None else None
        status, holder = _state(runs_root / run_id, recorded) if recorded != "done" else ("done", None)
        stale: list[str] = []
        if facts is not None and status == "done":
            if facts.code and spec.method not in identities:
                identities[spec.method] = current_code_identity(spec.method)
            teacher = index.facts(spec.teacher.run_id) if spec.teacher is not None else None
            stale = stale_reasons_of(facts.code, facts.teacher_sha256, teacher.model_sha256 if teacher else None,
                                     identities.get(spec.method, {}))
        planned.append(PlannedRun(spec, status, holder, stale, run_id, runs_root, index))
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
