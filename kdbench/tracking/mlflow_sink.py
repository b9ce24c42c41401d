"""The MLflow sink: params, per-epoch metrics, final metrics, record tags and the per-class table of each run.

Enough is logged for `kdbench report --from-mlflow` to rebuild every table from the store alone.

A tracking failure is logged and never fails a run: the run record is the source of truth.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from kdbench.tracking.record import EpochLog, RunRecord

log = logging.getLogger(__name__)

RUN_ID_TAG = "kdbench.run_id"
PER_CLASS_ARTIFACT = "per_class.csv"
# What a report needs beyond params and epoch metrics (kdbench report --from-mlflow), logged when a run ends.
RECORD_TAGS = ("grid", "status", "stage", "method", "label", "arch", "pair", "dataset")
RECORD_METRICS = ("num_classes", "student_params", "extra_params", "peak_memory_bytes", "seed", "subset_seed")


def record_tags(record: RunRecord) -> dict[str, str]:
    """kdbench.<field> tags of a finished or failed run (grid, status, labels, teacher, method params)."""
    tags = {f"kdbench.{name}": str(getattr(record, name)) for name in RECORD_TAGS}
    tags["kdbench.method_params"] = json.dumps(record.spec.get("params") or {}, sort_keys=True)
    if record.teacher is not None:
        tags["kdbench.teacher_run_id"] = record.teacher.run_id
    return tags


def record_metrics(record: RunRecord) -> dict[str, float]:
    """Final, best-on-validation, size, memory and teacher metrics of a run (absent values are left out)."""
    values: dict[str, float] = {}
    if record.final is not None:
        values.update({f"final_{key}": getattr(record.final, key) for key in ("top1", "top5", "balanced_acc")})
    if record.best_val is not None:
        values.update(best_val_top1=record.best_val.val_top1, best_val_test_top1=record.best_val.test.top1,
                      best_val_epoch=record.best_val.epoch)
    for name in RECORD_METRICS:
        if getattr(record, name) is not None:
            values[name] = getattr(record, name)
    if record.teacher is not None:
        values["teacher_top1"] = record.teacher.top1
    return {key: float(value) for key, value in values.items()}


def default_tracking_uri(results_root: str | Path) -> str:
    """sqlite:///<absolute results root>/mlflow.db."""
    return f"sqlite:///{Path(results_root).resolve() / 'mlflow.db'}"


def ensure_experiment(uri: str, experiment: str, artifact_root: str | Path) -> str:
    """Create the store and the experiment once, before any run starts; return the experiment id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = Path(artifact_root).resolve() / experiment
    return client.create_experiment(experiment, artifact_location=location.as_uri())


def _flatten_params(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:5000]
    return flat


class MlflowSink:
    """Logs one kdbench run into one MLflow run (reused when the kdbench run resumes)."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self._client: Any = None
        self._mlflow_run_id: str | None = None

    def _guard(self, what: str, action) -> None:
        if self._client is None and what != "start":
            return
        try:
            action()
        except Exception as error:  # tracking must never fail a run
            log.warning("MLflow %s failed (%s: %s); the run goes on, its record is unaffected",
                        what, type(error).__name__, error)
            self._client = None

    def on_start(self, run_id: str, run_name: str, spec: dict[str, Any], resumed_epoch: int) -> None:
        """Open (or reopen, on resume) the MLflow run and log its parameters."""

        def start() -> None:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.uri)
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise RuntimeError(f"experiment '{self.experiment}' does not exist; the submitter creates it")
            previous = client.search_runs([experiment.experiment_id], f"tags.`{RUN_ID_TAG}` = '{run_id}'",
                                          max_results=1, order_by=["attributes.start_time DESC"])
            if previous and previous[0].info.status != "FINISHED":
                self._mlflow_run_id = previous[0].info.run_id
                client.update_run(self._mlflow_run_id, status="RUNNING")
            else:
                run = client.create_run(experiment.experiment_id, run_name=run_name, tags={RUN_ID_TAG: run_id})
                self._mlflow_run_id = run.info.run_id
                params = [Param(k, v) for k, v in _flatten_params(spec).items()]
                for start_index in range(0, len(params), 100):
                    client.log_batch(self._mlflow_run_id, params=params[start_index:start_index + 100])
            self._client = client

        self._guard("start", start)

    def on_epoch(self, entry: EpochLog) -> None:
        """Log one epoch's metrics with step = epoch."""

        def log_epoch() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            values = {"lr": entry.lr, "test_top1": entry.test_top1, "test_top5": entry.test_top5,
                      "epoch_seconds": entry.seconds, "images_per_s": entry.images_per_s}
            values.update({f"train_{k}": v for k, v in entry.train.items()})
            if entry.val_top1 is not None:
                values["val_top1"] = entry.val_top1
            metrics = [Metric(k, float(v), now, entry.epoch) for k, v in values.items()]
            self._client.log_batch(self._mlflow_run_id, metrics=metrics)

        self._guard("epoch logging", log_epoch)

    def on_end(self, record: RunRecord) -> None:
        """Log final metrics and the per-class table, then close the MLflow run."""

        def finish() -> None:
            from mlflow.entities import Metric, RunTag

            now = int(time.time() * 1000)
            if record.final is not None:
                self._log_per_class(record)
            metrics = [Metric(key, value, now, 0) for key, value in record_metrics(record).items()]
            tags = [RunTag(key, value[:5000]) for key, value in record_tags(record).items()]
            self._client.log_batch(self._mlflow_run_id, metrics=metrics, tags=tags)
            if record.reason:
                self._client.set_tag(self._mlflow_run_id, "kdbench.failure", record.reason[:5000])
            status = "FINISHED" if record.status == "done" else "FAILED"
            self._client.set_terminated(self._mlflow_run_id, status=status)

        self._guard("final logging", finish)

    def _log_per_class(self, record: RunRecord) -> None:
        assert record.final is not None
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / PER_CLASS_ARTIFACT
            with path.open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["class", "train_count", "test_correct", "test_total", "test_accuracy"])
                counts = record.class_counts or [None] * len(record.final.per_class_total)
                for index, (correct, total) in enumerate(zip(record.final.per_class_correct,
                                                             record.final.per_class_total, strict=True)):
                    accuracy = 100.0 * correct / total if total else float("nan")
                    writer.writerow([index, counts[index], correct, total, f"{accuracy:.4f}"])
            self._client.log_artifact(self._mlflow_run_id, str(path))
