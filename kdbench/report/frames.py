"""Run records → three pandas frames (runs, per-class, curves): the single input of every table and plot.

Frames (all built by :func:`frames_from_records`; :func:`load_frames` reads a grid's ``runs/*/record.json``
through the grid index, kdbench.tracking.index; ``kdbench.report.mlflow_frames`` builds the very same frames from
an MLflow store):

``runs`` — one row per run (teachers and students, done and failed):
    run_id, grid, stage ('teacher' | 'student'), status ('done' | 'failed'), reason (failure message or None),
    method (display label of the method setting, e.g. 'kd' or 'kd(T=2)'; 'teacher' for teacher runs),
    method_name (registered method, e.g. 'kd'), pair ('teacher->student', or the arch alone for teachers),
    arch (student architecture), teacher_arch (None for teachers), dataset (variant label, e.g. 'cifar100' or
    'cifar100-lt-exp-100'), dataset_name ('cifar100'), lt_profile ('balanced' | 'exp' | 'step'),
    imbalance_ratio (ρ = n_max / n_min; 1.0 when balanced), subset_seed, seed (training seed), num_classes,
    epochs (epochs logged), top1 / top5 / balanced_acc (final epoch on the test set, %; NaN if failed),
    has_val (a validation set existed, i.e. best_val is known), best_val_epoch, best_val_top1 (validation top-1
    at that epoch), best_val_test_top1 (test top-1 at the best-validation epoch; NaN without validation),
    best_test_top1 (the highest test top-1 over the run's epochs: "best epoch selected on test", the protocol of
    published CIFAR tables; shown only beside published numbers, never as a result), seconds_per_epoch (mean
    wall time of a training epoch), images_per_s (training throughput: images / seconds
    over all epochs), student_params, extra_params (trainable parameters the method adds), peak_memory_bytes,
    teacher_run_id, teacher_top1, method_params (the method's hyper-parameters as sorted JSON).
    Integer columns that can be missing use pandas' nullable ``Int64``.

``per_class`` — one row per (run, class) for finished runs, final-epoch test counts:
    run_id, grid, stage, method, pair, dataset, seed, class (0-based label), train_count (training images of
    the class in this run's training set), test_correct, test_total, accuracy (%, NaN when test_total is 0).

``curves`` — one row per (run, epoch):
    run_id, grid, stage, method, pair, dataset, seed, epoch (1-based), lr, test_top1, test_top5, val_top1 (NaN
    without validation), seconds, images_per_s, and one ``train_<term>`` column per training-loss term
    (mean over the epoch; ``train_total`` is the summed objective, ``train_top1`` the training accuracy, not a
    loss). A term a run does not have is NaN.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdbench.report.errors import ReportError
from kdbench.tracking.index import ClassCounts, GridIndex, RunSummary, load_index, summarize
from kdbench.tracking.record import RunRecord, read_record, read_records  # noqa: F401  (read_records: re-exported)

KEY_COLUMNS = ["run_id", "grid", "stage", "method", "pair", "dataset", "seed"]
RUN_COLUMNS = [
    "run_id", "grid", "stage", "status", "reason", "method", "method_name", "pair", "arch", "teacher_arch",
    "dataset", "dataset_name", "lt_profile", "imbalance_ratio", "subset_seed", "seed", "num_classes", "epochs",
    "top1", "top5", "balanced_acc", "has_val", "best_val_epoch", "best_val_top1", "best_val_test_top1",
    "best_test_top1", "seconds_per_epoch", "images_per_s", "student_params", "extra_params", "peak_memory_bytes",
    "teacher_run_id", "teacher_top1", "method_params",
]
PER_CLASS_COLUMNS = [*KEY_COLUMNS, "class", "train_count", "test_correct", "test_total", "accuracy"]
CURVE_BASE_COLUMNS = [*KEY_COLUMNS, "epoch", "lr", "test_top1", "test_top5", "val_top1", "seconds", "images_per_s"]

_INT_COLUMNS = ["subset_seed", "seed", "num_classes", "epochs", "best_val_epoch", "student_params", "extra_params",
                "peak_memory_bytes"]
_FLOAT_COLUMNS = ["imbalance_ratio", "top1", "top5", "balanced_acc", "best_val_top1", "best_val_test_top1",
                  "best_test_top1", "seconds_per_epoch", "images_per_s", "teacher_top1"]


@dataclass(frozen=True)
class ReportFrames:
    """The runs, per-class and curves frames of one grid (see the module docstring for the columns)."""

    grid: str
    runs: pd.DataFrame
    per_class: pd.DataFrame
    curves: pd.DataFrame

    def finished(self) -> pd.DataFrame:
        """The runs frame restricted to finished (status 'done') runs."""
        return self.runs[self.runs["status"] == "done"]


def load_frames(runs_root: str | Path) -> ReportFrames:
    """The frames of the records under ``runs_root`` (through the grid index); ReportError when there are none or
    grids are mixed."""
    index = load_index(runs_root, with_counts=True)
    if not len(index):
        raise ReportError(f"{runs_root}: no run records (record.json) found; run the grid first")
    return frames_from_index(index)


def dataset_variant_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """dataset_name, lt_profile and imbalance_ratio from a record's ``spec`` (a RunSpec dump)."""
    dataset = spec.get("dataset") or {}
    long_tail = dataset.get("long_tail")
    return {
        "dataset_name": dataset.get("name"),
        "lt_profile": long_tail["profile"] if long_tail else "balanced",
        "imbalance_ratio": float(long_tail["imbalance_ratio"]) if long_tail else 1.0,
    }


def summary_row(summary: RunSummary) -> dict[str, Any]:
    """The runs-frame row of one run, from its summary (kdbench.tracking.index: what the grid index keeps)."""
    final, best, teacher = summary.final, summary.best_val, summary.teacher
    return {
        "run_id": summary.run_id, "grid": summary.grid, "stage": summary.stage, "status": summary.status,
        "reason": summary.reason, "method": summary.label, "method_name": summary.method, "pair": summary.pair,
        "arch": summary.arch, "teacher_arch": summary.teacher_arch, "dataset": summary.dataset,
        "dataset_name": summary.dataset_name, "lt_profile": summary.lt_profile,
        "imbalance_ratio": summary.imbalance_ratio, "subset_seed": summary.subset_seed, "seed": summary.seed,
        "num_classes": summary.num_classes, "epochs": summary.epochs,
        "top1": final.top1 if final else np.nan, "top5": final.top5 if final else np.nan,
        "balanced_acc": final.balanced_acc if final else np.nan, "has_val": best is not None,
        "best_val_epoch": best.epoch if best else None, "best_val_top1": best.val_top1 if best else np.nan,
        "best_val_test_top1": best.test_top1 if best else np.nan, "best_test_top1": summary.best_test_top1,
        "seconds_per_epoch": summary.seconds_per_epoch, "images_per_s": summary.images_per_s,
        "student_params": summary.student_params, "extra_params": summary.extra_params,
        "peak_memory_bytes": summary.peak_memory_bytes,
        "teacher_run_id": teacher.run_id if teacher else None,
        "teacher_top1": teacher.top1 if teacher else np.nan,
        "method_params": json.dumps(summary.params, sort_keys=True),
    }


def run_row(record: RunRecord) -> dict[str, Any]:
    """The runs-frame row of one record."""
    return summary_row(summarize(record)[0])


def with_epoch_totals(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with epochs, seconds_per_epoch, images_per_s (images / seconds over all epochs) and best_test_top1
    from ``curves``."""
    seconds = curves["seconds"].to_numpy(float)
    per_run = pd.DataFrame({"run_id": curves["run_id"], "seconds": seconds,
                            "images": curves["images_per_s"].to_numpy(float) * seconds,
                            "test_top1": curves["test_top1"].to_numpy(float)})
    totals = per_run.groupby("run_id").agg(epochs=("seconds", "size"), seconds_per_epoch=("seconds", "mean"),
                                           _seconds=("seconds", "sum"), _images=("images", "sum"),
                                           best_test_top1=("test_top1", "max"))
    totals["images_per_s"] = (totals["_images"] / totals["_seconds"]).where(totals["_seconds"] > 0)
    added = ["epochs", "seconds_per_epoch", "images_per_s", "best_test_top1"]
    runs = runs.drop(columns=added, errors="ignore")
    runs = runs.merge(totals[added], left_on="run_id", right_index=True, how="left")
    runs["epochs"] = runs["epochs"].fillna(0)
    return runs_frame(runs)


def runs_frame(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows → the runs frame with fixed column order and dtypes (shared by the records and MLflow readers)."""
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS) if not isinstance(rows, pd.DataFrame) else rows[RUN_COLUMNS]
    frame = frame.copy()
    for column in _INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in _FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    frame["has_val"] = frame["has_val"].astype(bool)
    for column in ("reason", "teacher_arch", "teacher_run_id"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame.sort_values("run_id", ignore_index=True)


def per_class_frame(keys: pd.DataFrame, train_counts: list, correct: list, total: list) -> pd.DataFrame:
    """Per-class rows: ``keys`` (one row per run, KEY_COLUMNS) repeated over each run's classes.

    ``train_counts``, ``correct`` and ``total`` hold one sequence per run (same order as ``keys``); a run
    without class counts passes an empty sequence for ``train_counts`` (NaN counts).
    """
    lengths = np.array([len(c) for c in correct], dtype=int)
    if lengths.sum() == 0:
        return _typed_per_class(pd.DataFrame(columns=PER_CLASS_COLUMNS))
    frame = keys.loc[keys.index.repeat(lengths), KEY_COLUMNS].reset_index(drop=True)
    frame["class"] = np.concatenate([np.arange(n) for n in lengths])
    counts = [np.asarray(c, dtype=float) if len(c) == n else np.full(n, np.nan)
              for c, n in zip(train_counts, lengths, strict=True)]
    frame["train_count"] = np.concatenate(counts)
    frame["test_correct"] = np.concatenate([np.asarray(c, dtype=np.int64) for c in correct])
    frame["test_total"] = np.concatenate([np.asarray(t, dtype=np.int64) for t in total])
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = 100.0 * frame["test_correct"].to_numpy(float) / frame["test_total"].to_numpy(float)
    frame["accuracy"] = np.where(frame["test_total"].to_numpy() > 0, accuracy, np.nan)
    return _typed_per_class(frame)


def _typed_per_class(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype({"class": "int64", "test_correct": "int64", "test_total": "int64",
                          "train_count": "Int64", "accuracy": float})
    frame["seed"] = frame["seed"].astype("Int64")
    return frame.sort_values(["run_id", "class"], ignore_index=True)


def curves_frame(rows: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows (or a frame) of (KEY_COLUMNS, epoch, lr, test_top1, ..., train_<term>...) → the curves frame."""
    if isinstance(rows, pd.DataFrame):
        terms = sorted(c for c in rows.columns if c.startswith("train_"))
        frame = rows[[*CURVE_BASE_COLUMNS, *terms]].copy()
    else:
        terms = sorted({key for row in rows for key in row if key.startswith("train_")})
        frame = pd.DataFrame(rows, columns=[*CURVE_BASE_COLUMNS, *terms])
    frame = frame.astype({"epoch": "int64", **{c: float for c in CURVE_BASE_COLUMNS[8:]}, **{t: float for t in terms}})
    frame["seed"] = frame["seed"].astype("Int64")
    return frame.sort_values(["run_id", "epoch"], ignore_index=True)


def _curves_from_records(records: list[RunRecord]) -> pd.DataFrame:
    """The curves frame, built column by column (no per-epoch dicts: grids have millions of epoch rows)."""
    epochs = [entry for record in records for entry in record.history]
    lengths = np.array([len(record.history) for record in records], dtype=int)
    keys = pd.DataFrame([{"run_id": r.run_id, "grid": r.grid, "stage": r.stage, "method": r.label, "pair": r.pair,
                          "dataset": r.dataset, "seed": r.seed} for r in records], columns=KEY_COLUMNS)
    frame = keys.loc[keys.index.repeat(lengths)].reset_index(drop=True)
    frame["epoch"] = np.array([e.epoch for e in epochs], dtype=np.int64)
    for column in ("lr", "test_top1", "test_top5", "seconds", "images_per_s"):
        frame[column] = np.array([getattr(e, column) for e in epochs], dtype=float)
    frame["val_top1"] = np.array([e.val_top1 if e.val_top1 is not None else np.nan for e in epochs], dtype=float)
    terms = sorted({term for e in epochs for term in e.train})
    for term in terms:
        frame[f"train_{term}"] = np.array([e.train.get(term, np.nan) for e in epochs], dtype=float)
    return curves_frame(frame)


def check_one_grid(grids: pd.Series) -> str:
    """The single grid name in ``grids``; ReportError naming each grid and its run count when they are mixed."""
    counts = grids.value_counts()
    if len(counts) > 1:
        listing = ", ".join(f"'{name}' ({n} runs)" for name, n in counts.items())
        raise ReportError(f"run records from different grids are mixed: {listing}; "
                          "report one grid at a time, or pass two grids to compare them side by side")
    if counts.empty:
        raise ReportError("no run records to report")
    return str(counts.index[0])


def frames_from_records(records: Iterable[RunRecord]) -> ReportFrames:
    """The three frames of a grid's records; ReportError when empty or when records of several grids are mixed.

    Tuning runs (a method's sweep, trained on validation) are left out: they are no result, and the tuning table
    reports them from the grid's tuning.json.
    """
    records = [record for record in records if not record.spec.get("tuning")]
    summarized = [summarize(record) for record in records]
    counts = {summary.run_id: found for summary, found in summarized if found is not None}
    return frames_from_summaries([summary for summary, _ in summarized], counts, _curves_from_records(records))


def frames_from_index(index: GridIndex, curves: bool = True) -> ReportFrames:
    """The three frames of a grid index (loaded ``with_counts``): the runs and per-class frames from the index,
    the curves from the records (the per-epoch history is kept there only); ``curves=False`` leaves that frame
    empty, for the tables, which need none of it."""
    summaries = [summary for summary in index.summaries() if not summary.tuning]
    counts = index.class_counts(summary.run_id for summary in summaries if _has_counts(summary))
    history: pd.DataFrame | None = None
    if curves:
        records = [read_record(index.runs_root / summary.run_id) for summary in summaries]
        history = _curves_from_records([record for record in records if record is not None])
    return frames_from_summaries(summaries, counts, history)


def _has_counts(summary: RunSummary) -> bool:
    return summary.status == "done" and summary.final is not None


def frames_from_summaries(summaries: list[RunSummary], counts: dict[str, ClassCounts],
                          curves: pd.DataFrame | None) -> ReportFrames:
    """The frames of run summaries, their per-class counts and (or no) curves; see frames_from_records."""
    runs = runs_frame([summary_row(summary) for summary in summaries])
    grid = check_one_grid(runs["grid"])
    done = [summary for summary in summaries if _has_counts(summary) and summary.run_id in counts]
    keys = pd.DataFrame([{"run_id": s.run_id, "grid": s.grid, "stage": s.stage, "method": s.label, "pair": s.pair,
                          "dataset": s.dataset, "seed": s.seed} for s in done], columns=KEY_COLUMNS)
    found = [counts[summary.run_id] for summary in done]
    per_class = per_class_frame(keys, [c.class_counts for c in found], [c.correct for c in found],
                                [c.total for c in found])
    return ReportFrames(grid=grid, runs=runs, per_class=per_class,
                        curves=curves if curves is not None else curves_frame([]))
