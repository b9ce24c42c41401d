"""`kdbench sync`: make the MLflow store agree with the run records (the records are the truth).

For each record (done or failed) the newest MLflow run tagged ``kdbench.run_id`` is looked up:

- none: one is created with the run's name, params, per-epoch metrics, final metrics, tags and per-class table,
  and terminated FINISHED (done) or FAILED (failed) — e.g. tracking was off or unavailable when it ran;
- one that is not terminated with the record's status, or lacks params, epochs, final metrics, tags or the
  per-class table (a kill between the record write and the MLflow update leaves it RUNNING): what is missing is
  logged and it is terminated;
- one whose only difference is its ``kdbench.pairs`` tag (the pairs a teacher or a student without a teacher is
  listed under depend on the grid's other runs; the sink, which sees one run, tags it with its own pair): the tag is
  set (re-tagged);
- one that agrees: left alone, so a second sync changes nothing.

MLflow runs with no record (a run interrupted before its end, that will resume) are left alone. The logging code is
the MLflow sink's (kdbench.tracking.mlflow_sink), so a synced run looks exactly like one the sink logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.pairs import pairs_of_records
from kdbench.tracking.lock import LOCK_NAME, lock_holder
from kdbench.tracking.mlflow_sink import (
    PAIRS_TAG,
    PER_CLASS_ARTIFACT,
    end_status,
    end_tags,
    ensure_experiment,
    finish_run,
    flatten_params,
    log_epochs,
    log_params,
    mlflow_run_name,
    newest_runs,
    open_client,
    record_metrics,
    start_run,
)
from kdbench.tracking.record import RunRecord, read_records


@dataclass
class SyncResult:
    """How many records got a new MLflow run, had theirs completed, already agreed with it, or only needed their
    kdbench.pairs tag."""

    created: int = 0
    completed: int = 0
    unchanged: int = 0
    retagged: int = 0

    def summary(self) -> str:
        """'2 created, 1 completed, 11 in sync' (then ', 4 tagged with their pairs' when any were)."""
        text = f"{self.created} created, {self.completed} completed, {self.unchanged} in sync"
        return text + (f", {self.retagged} tagged with their pairs" if self.retagged else "")


def gather_records(runs_root: str | Path) -> list[RunRecord]:
    """The readable records under ``runs_root`` whose run no live process holds (its own sink closes its run)."""
    return [record for record in read_records(runs_root)
            if lock_holder(Path(runs_root) / record.run_id / LOCK_NAME) is None]


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _missing_metrics(run: Any, record: RunRecord) -> dict[str, float]:
    logged = run.data.metrics
    return {key: value for key, value in record_metrics(record).items()
            if key not in logged or not _same(logged[key], value)}


def _needs_per_class(client: Any, run: Any, record: RunRecord) -> bool:
    if record.final is None:
        return False
    return PER_CLASS_ARTIFACT not in {item.path for item in client.list_artifacts(run.info.run_id)}


def _complete(client: Any, run: Any, record: RunRecord, pairs: list[str] | None = None) -> str:
    """Log what the MLflow run of ``record`` lacks and terminate it: 'completed'; 'retagged' when only its
    kdbench.pairs tag differed (set alone); 'unchanged' when it already agreed."""
    mlflow_run_id = run.info.run_id
    params = {k: v for k, v in flatten_params(record.spec).items() if k not in run.data.params}
    metrics = _missing_metrics(run, record)
    tags = {k: v for k, v in end_tags(record, pairs).items() if run.data.tags.get(k) != v}
    per_class = _needs_per_class(client, run, record)
    if run.info.status == end_status(record) and not (params or metrics or tags or per_class):
        return "unchanged"
    if run.info.status == end_status(record) and not (params or metrics or per_class) and set(tags) == {PAIRS_TAG}:
        client.set_tag(mlflow_run_id, PAIRS_TAG, tags[PAIRS_TAG])
        return "retagged"
    logged_epochs = {m.step for m in client.get_metric_history(mlflow_run_id, "test_top1")}
    log_params(client, mlflow_run_id, params)
    log_epochs(client, mlflow_run_id, [entry for entry in record.history if entry.epoch not in logged_epochs])
    finish_run(client, mlflow_run_id, record, metrics=metrics, per_class=per_class, pairs=pairs)
    return "completed"


def sync_records(uri: str, experiment: str, records: list[RunRecord], artifact_root: str | Path,
                 results_root: str | Path | None = None) -> SyncResult:
    """Make the MLflow ``experiment`` at ``uri`` agree with ``records`` (creating store and experiment if need be)."""
    experiment_id = ensure_experiment(uri, experiment, artifact_root, results_root)
    client = open_client(uri)
    existing = newest_runs(client, experiment_id)
    listed = pairs_of_records(records)
    result = SyncResult()
    for record in records:
        run = existing.get(record.run_id)
        pairs = listed.get(record.run_id)
        if run is None:
            name = mlflow_run_name(record.label, record.pair, record.dataset, record.seed)
            mlflow_run_id = start_run(client, experiment_id, record.run_id, name, record.spec)
            log_epochs(client, mlflow_run_id, record.history)
            finish_run(client, mlflow_run_id, record, pairs=pairs)
            result.created += 1
        else:
            outcome = _complete(client, run, record, pairs)
            setattr(result, outcome, getattr(result, outcome) + 1)
    return result
