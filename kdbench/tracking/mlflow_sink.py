"""The MLflow sink: params, per-epoch metrics, final metrics, record tags and the per-class table of each run.

Enough is logged for `kdbench report --from-mlflow` to rebuild every table from the store alone.

A tracking failure is logged and never fails a run: the run record is the source of truth, and
`kdbench sync` (kdbench.tracking.mlflow_sync) brings MLflow back in line with the records using the same
logging functions as the sink (`start_run`, `log_epochs`, `finish_run`).
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from kdbench.numfmt import clean_float, param_text
from kdbench.tracking.lock import exclusive
from kdbench.tracking.record import EpochLog, RunRecord

log = logging.getLogger(__name__)

RUN_ID_TAG = "kdbench.run_id"
# Every pair a run is listed under in the report (kdbench.pairs): '|teacher->student|' for a distilled student; for
# a student without a teacher every pair whose student it is, for a teacher every pair it teaches, as
# '|a->s|b->s|', so `tags.kdbench.pairs LIKE '%|a->s|%'` finds a pair's runs, its baselines and its teacher.
PAIRS_TAG = "kdbench.pairs"
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


def pairs_tag(pairs: list[str]) -> str:
    """The kdbench.pairs value: the sorted pairs between bars, '|a->s|b->s|' (exact under LIKE '%|a->s|%')."""
    return "|" + "|".join(sorted(set(pairs))) + "|"


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


def sqlite_lock_path(uri: str) -> Path | None:
    """<db path>.lock for a sqlite file store, else None."""
    if uri.startswith("sqlite:///"):
        database = uri[len("sqlite:///"):].split("?", 1)[0]
        if database and database != ":memory:":
            return Path(database + ".lock")
    return None


def store_lock_path(uri: str, results_root: str | Path) -> Path:
    """The lock serialising creation of the store and of its experiments: beside a sqlite DB, else in the results root.

    Two processes opening a fresh sqlite store at once both run its schema migrations and one of them fails
    (``duplicate column name: step``); a server (http) store migrates itself, but experiments are still created once.
    """
    return sqlite_lock_path(uri) or Path(results_root).resolve() / "mlflow.lock"


def open_client(uri: str) -> Any:
    """An MlflowClient; a sqlite store is opened (created or migrated when need be) under its lock."""
    from mlflow.tracking import MlflowClient

    lock_path = sqlite_lock_path(uri)
    if lock_path is None:
        return MlflowClient(tracking_uri=uri)
    with exclusive(lock_path):
        return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, experiment: str, artifact_root: str | Path,
                      results_root: str | Path | None = None) -> str:
    """Create the store and the experiment once, before any run starts; return the experiment id.

    Safe when several processes (two grids sharing a results root) do it at once: the store lock (`store_lock_path`;
    its results root is ``results_root``, else the parent of ``artifact_root``) is held throughout, and an experiment
    created meanwhile by a process holding another lock (a shared server) is found rather than created twice.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with exclusive(store_lock_path(uri, results_root or Path(artifact_root).resolve().parent)):
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        location = Path(artifact_root).resolve() / experiment
        try:
            return client.create_experiment(experiment, artifact_location=location.as_uri())
        except MlflowException:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return found.experiment_id


def newest_runs(client: Any, experiment_id: str) -> dict[str, Any]:
    """kdbench run id (tag kdbench.run_id) → its newest MLflow run in the experiment."""
    newest: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, order_by=["attributes.start_time DESC"],
                                  page_token=token)
        for run in page:  # newest first
            if RUN_ID_TAG in run.data.tags:
                newest.setdefault(run.data.tags[RUN_ID_TAG], run)
        token = page.token
        if not token:
            return newest


def mlflow_run_name(label: str, pair: str, dataset: str, seed: int) -> str:
    """The MLflow run name of a kdbench run: <method label>/<pair>/<dataset variant>/s<seed>."""
    return f"{label}/{pair}/{dataset}/s{seed}"


def flatten_params(spec: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The MLflow params of a run: its RunSpec flattened to dotted names (values cut at 5000 characters; floats
    without binary noise, kdbench.numfmt.param_text)."""
    flat: dict[str, str] = {}
    for key, value in spec.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = param_text(value)[:5000]
    return flat


def log_params(client: Any, mlflow_run_id: str, params: dict[str, str]) -> None:
    """Log params in batches of 100 (MLflow's limit)."""
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(mlflow_run_id, params=items[start:start + 100])


def start_run(client: Any, experiment_id: str, run_id: str, run_name: str, spec: dict[str, Any]) -> str:
    """Create the MLflow run of kdbench run ``run_id`` (tagged kdbench.run_id) with its params; its MLflow id."""
    run = client.create_run(experiment_id, run_name=run_name, tags={RUN_ID_TAG: run_id})
    log_params(client, run.info.run_id, flatten_params(spec))
    return run.info.run_id


def epoch_values(entry: EpochLog) -> dict[str, float]:
    """The metrics logged for one epoch (step = epoch): lr, test top-1/5, val top-1, speed, train_<term>.

    The lr is logged without binary noise (a step schedule's 0.05 × 0.1 × 0.1 reads 0.0005; the record keeps the
    optimiser's exact float).
    """
    values = {"lr": clean_float(entry.lr), "test_top1": entry.test_top1, "test_top5": entry.test_top5,
              "epoch_seconds": entry.seconds, "images_per_s": entry.images_per_s}
    values.update({f"train_{k}": v for k, v in entry.train.items()})
    if entry.val_top1 is not None:
        values["val_top1"] = entry.val_top1
    return {key: float(value) for key, value in values.items()}


def log_epochs(client: Any, mlflow_run_id: str, entries: list[EpochLog]) -> None:
    """Log the metrics of these epochs with step = epoch, in batches within MLflow's 1000-metric limit."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, entry.epoch) for entry in entries for k, v in epoch_values(entry).items()]
    for start in range(0, len(metrics), 1000):
        client.log_batch(mlflow_run_id, metrics=metrics[start:start + 1000])


def end_status(record: RunRecord) -> str:
    """The MLflow status of an ended run: FINISHED when its record is done, else FAILED."""
    return "FINISHED" if record.status == "done" else "FAILED"


def end_tags(record: RunRecord, pairs: list[str] | None = None) -> dict[str, str]:
    """Every tag logged when a run ends: record tags, the failure reason of a failed run, and kdbench.pairs from
    ``pairs`` (kdbench.pairs.pairs_of_records over the grid's records), by default the run's own pair: all that its
    record alone tells (exact for a distilled student; a teacher's or baseline's pairs depend on the grid's other
    runs, and the sync that ends `kdbench run`, or `kdbench sync`, sets them)."""
    tags = {key: value[:5000] for key, value in record_tags(record).items()}
    if record.reason:
        tags["kdbench.failure"] = record.reason[:5000]
    tags[PAIRS_TAG] = pairs_tag(pairs or [record.pair])[:5000]
    return tags


def finish_run(client: Any, mlflow_run_id: str, record: RunRecord, metrics: dict[str, float] | None = None,
               per_class: bool = True, pairs: list[str] | None = None) -> None:
    """Log the end of a run: per-class table (when ``per_class``), final ``metrics`` (default: all), tags (with
    ``pairs``, see :func:`end_tags`); close it."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    if per_class and record.final is not None:
        _log_per_class(client, mlflow_run_id, record)
    metrics = record_metrics(record) if metrics is None else metrics
    client.log_batch(mlflow_run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
                     tags=[RunTag(key, value) for key, value in end_tags(record, pairs).items()])
    client.set_terminated(mlflow_run_id, status=end_status(record))


def _log_per_class(client: Any, mlflow_run_id: str, record: RunRecord) -> None:
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
        client.log_artifact(mlflow_run_id, str(path))


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
            client = open_client(self.uri)
            experiment = client.get_experiment_by_name(self.experiment)
            if experiment is None:
                raise RuntimeError(f"experiment '{self.experiment}' does not exist; the submitter creates it")
            previous = client.search_runs([experiment.experiment_id], f"tags.`{RUN_ID_TAG}` = '{run_id}'",
                                          max_results=1, order_by=["attributes.start_time DESC"])
            if previous and previous[0].info.status != "FINISHED":
                self._mlflow_run_id = previous[0].info.run_id
                client.update_run(self._mlflow_run_id, status="RUNNING")
            else:
                self._mlflow_run_id = start_run(client, experiment.experiment_id, run_id, run_name, spec)
            self._client = client

        self._guard("start", start)

    def on_epoch(self, entry: EpochLog) -> None:
        """Log one epoch's metrics with step = epoch."""
        self._guard("epoch logging", lambda: log_epochs(self._client, self._mlflow_run_id, [entry]))

    def on_end(self, record: RunRecord) -> None:
        """Log final metrics and the per-class table, then close the MLflow run."""
        self._guard("final logging", lambda: finish_run(self._client, self._mlflow_run_id, record))
