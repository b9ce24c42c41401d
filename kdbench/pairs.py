"""Which pairs a run is listed under: one rule for the report's tables and plots, the end-of-run summary and the
``kdbench.pairs`` tag in MLflow.

A student distilled from a teacher belongs to its own pair ('resnet56->resnet20'). A student trained without a
teacher (``vanilla``: one run, shared by every pair with that student) is listed under each pair whose student is
its architecture, and a teacher run under each pair it teaches, both on the same dataset variant. The pairs that
count are those of the distilled students given as ``taught`` (by default the distilled students among the runs
themselves). A run with no such pair keeps its own pair (the architecture alone).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from kdbench.tracking.record import RunRecord

#: Columns :func:`listed_pairs` reads (the report's runs frame has them all).
PAIR_COLUMNS = ["run_id", "stage", "dataset", "arch", "teacher_arch", "pair"]


def _distilled(runs: pd.DataFrame) -> pd.Series:
    return (runs["stage"] == "student") & runs["teacher_arch"].notna()


def listed_pairs(runs: pd.DataFrame, taught: pd.DataFrame | None = None) -> pd.DataFrame:
    """(row, run_id, pair) rows: each run of ``runs`` once per pair it is listed under (see the module docstring);
    ``row`` is the run's position in ``runs``.

    ``taught`` (default ``runs``) holds the runs whose pairs count; only its distilled students are used. Rows come
    in the order distilled students, untaught students, teachers, each in the order of ``runs``.
    """
    source = runs if taught is None else taught
    targets = source.loc[_distilled(source), ["dataset", "pair", "arch", "teacher_arch"]].drop_duplicates()
    runs = runs[["run_id", "stage", "dataset", "arch", "teacher_arch", "pair"]].assign(row=np.arange(len(runs)))
    parts = [runs.loc[_distilled(runs), ["row", "run_id", "pair"]]]
    untaught = (runs["stage"] == "student") & runs["teacher_arch"].isna()
    for mask, join in ((untaught, "arch"), (runs["stage"] == "teacher", "teacher_arch")):
        subset = runs.loc[mask, ["row", "run_id", "dataset", "arch", "pair"]]
        pairs = targets[["dataset", "pair", join]].rename(columns={"pair": "_listed", join: "arch"}).drop_duplicates()
        joined = subset.merge(pairs, on=["dataset", "arch"], how="left")
        joined["pair"] = joined["_listed"].where(joined["_listed"].notna(), joined["pair"])
        parts.append(joined[["row", "run_id", "pair"]])
    return pd.concat(parts, ignore_index=True)


def record_rows(records: Iterable[RunRecord]) -> pd.DataFrame:
    """The :data:`PAIR_COLUMNS` of records (teacher_arch from the spec), plus status and tuning."""
    rows = [{"run_id": r.run_id, "stage": r.stage, "dataset": r.dataset, "arch": r.arch,
             "teacher_arch": (r.spec.get("teacher") or {}).get("arch"), "pair": r.pair, "status": r.status,
             "tuning": bool(r.spec.get("tuning"))} for r in records]
    return pd.DataFrame(rows, columns=[*PAIR_COLUMNS, "status", "tuning"])


def pairs_of_records(records: Iterable[RunRecord]) -> dict[str, list[str]]:
    """Run id → the sorted pairs it is listed under, for every record given (done or failed, tuning or not).

    The pairs that count are those of the finished, non-tuning distilled students, as in the report's tables.
    """
    runs = record_rows(records)
    if runs.empty:
        return {}
    taught = runs[(runs["status"] == "done") & ~runs["tuning"]]
    listed = listed_pairs(runs, taught)
    return {run_id: sorted(set(group)) for run_id, group in listed.groupby("run_id")["pair"]}
