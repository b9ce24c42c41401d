"""The report frames rebuilt from an MLflow store alone (what kdbench.tracking.mlflow_sink logged).

Per MLflow run: params (the flattened RunSpec), ``kdbench.*`` tags and final metrics (logged when the run ended),
the epoch metrics' histories (curves) and the ``per_class.csv`` artifact. When a kdbench run id has several MLflow
runs, the newest one counts. Runs MLflow did not see end (RUNNING, KILLED, or a status that disagrees with their
``kdbench.status`` tag) are left out with one warning line: they may still be training, or have a record that
MLflow missed (a kill after the record write); `kdbench sync GRID` completes the latter.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdbench.report.errors import ReportError
from kdbench.report.frames import (
    KEY_COLUMNS,
    ReportFrames,
    check_one_grid,
    curves_frame,
    per_class_frame,
    runs_frame,
    with_epoch_totals,
)
from kdbench.tracking.mlflow_sink import PER_CLASS_ARTIFACT, RUN_ID_TAG, newest_runs

EPOCH_METRICS = {"lr": "lr", "test_top1": "test_top1", "test_top5": "test_top5", "val_top1": "val_top1",
                 "epoch_seconds": "seconds", "images_per_s": "images_per_s"}


def _finished_runs(client, experiment_name: str) -> list:
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise ReportError(f"MLflow experiment '{experiment_name}' does not exist in {client.tracking_uri}")
    newest = newest_runs(client, experiment.experiment_id)
    _warn_unended(experiment_name, [run for run in newest.values() if not _ended(run)])
    return [run for run in newest.values() if _ended(run)]


def _ended(run) -> bool:
    """Ended as kdbench ends a run: terminated with the status of its record, and the record's tags logged."""
    expected = {"done": "FINISHED", "failed": "FAILED"}.get(run.data.tags.get("kdbench.status", ""))
    return run.info.status == expected


def _warn_unended(experiment: str, runs: list) -> None:
    """One line on stderr when runs are left out because MLflow did not see them end."""
    if runs:
        statuses = ", ".join(sorted({run.info.status for run in runs}))
        print(f"warning: MLflow experiment '{experiment}' holds {len(runs)} run(s) that did not end there "
              f"({statuses}), left out of this report; unless they are still training, "
              f"`kdbench sync GRID` completes them from their records", file=sys.stderr)


def _number(value: Any) -> float:
    return float(value) if value is not None else np.nan


def _run_row(run) -> dict[str, Any]:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    profile = params.get("dataset.long_tail.profile")
    teacher_arch = params.get("teacher.arch")
    has_val = "best_val_top1" in metrics
    return {
        "run_id": tags[RUN_ID_TAG], "grid": tags["kdbench.grid"], "stage": tags["kdbench.stage"],
        "status": tags["kdbench.status"], "reason": tags.get("kdbench.failure"), "method": tags["kdbench.label"],
        "method_name": tags["kdbench.method"], "pair": tags["kdbench.pair"], "arch": tags["kdbench.arch"],
        "teacher_arch": teacher_arch, "dataset": tags["kdbench.dataset"], "dataset_name": params.get("dataset.name"),
        "lt_profile": profile if profile else "balanced",
        "imbalance_ratio": float(params["dataset.long_tail.imbalance_ratio"]) if profile else 1.0,
        "subset_seed": metrics.get("subset_seed"), "seed": metrics.get("seed"),
        "num_classes": metrics.get("num_classes"),
        "top1": _number(metrics.get("final_top1")), "top5": _number(metrics.get("final_top5")),
        "balanced_acc": _number(metrics.get("final_balanced_acc")), "has_val": has_val,
        "best_val_epoch": metrics.get("best_val_epoch"), "best_val_top1": _number(metrics.get("best_val_top1")),
        "best_val_test_top1": _number(metrics.get("best_val_test_top1")),
        "student_params": metrics.get("student_params"), "extra_params": metrics.get("extra_params"),
        "peak_memory_bytes": metrics.get("peak_memory_bytes"), "teacher_run_id": tags.get("kdbench.teacher_run_id"),
        "teacher_top1": _number(metrics.get("teacher_top1")), "method_params": tags.get("kdbench.method_params", "{}"),
    }


def _curve_rows(client, run, base: dict[str, Any]) -> list[dict[str, Any]]:
    keys = [k for k in run.data.metrics if k in EPOCH_METRICS or k.startswith("train_")]
    by_epoch: dict[int, dict[str, Any]] = {}
    for key in keys:
        for metric in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.timestamp):
            name = EPOCH_METRICS.get(key, key)  # a re-logged epoch (resume) keeps its last value
            by_epoch.setdefault(metric.step, {**base, "epoch": metric.step, "val_top1": np.nan})[name] = metric.value
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _per_class(client, run) -> tuple[list, list, list]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(client.download_artifacts(run.info.run_id, PER_CLASS_ARTIFACT, folder))
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    counts = [int(r["train_count"]) for r in rows if r["train_count"] not in ("", "None")]
    return (counts if len(counts) == len(rows) else [], [int(r["test_correct"]) for r in rows],
            [int(r["test_total"]) for r in rows])


def frames_from_mlflow(uri: str, experiment: str) -> ReportFrames:
    """The runs, per-class and curves frames of the ended runs of ``experiment`` in the store at ``uri``."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run would flood stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = _finished_runs(client, experiment)
    if not runs:
        raise ReportError(f"MLflow experiment '{experiment}' in {uri} has no ended kdbench runs "
                          "(runs logged before the kdbench.* tags existed cannot be reported from MLflow)")
    rows = [_run_row(run) for run in runs]
    frame = runs_frame(rows)
    grid = check_one_grid(frame["grid"])
    curve_rows, done_keys, counts, correct, total = [], [], [], [], []
    for run, row in zip(runs, rows, strict=True):
        base = {column: row[column] for column in KEY_COLUMNS}
        curve_rows += _curve_rows(client, run, base)
        if row["status"] == "done" and "final_top1" in run.data.metrics:
            done_keys.append(base)
            run_counts, run_correct, run_total = _per_class(client, run)
            counts.append(run_counts)
            correct.append(run_correct)
            total.append(run_total)
    per_class = per_class_frame(pd.DataFrame(done_keys, columns=KEY_COLUMNS), counts, correct, total)
    curves = curves_frame(curve_rows)
    return ReportFrames(grid=grid, runs=with_epoch_totals(frame, curves), per_class=per_class, curves=curves)
