"""The comparison a method paper shows: the method under study beside each other method, as paired differences."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdbench.report.frames import ReportFrames
from kdbench.report.stats import MATCH_COLUMNS, describe, paired_differences
from kdbench.report.tables import DEFAULT_GROUP_BY, TEACHER_LABEL, Table, format_mean_std, sort_rows, table_runs

#: The method under study when a report names none and the grid has it.
DEFAULT_FOCUS = "trg"


def focus_method(frames: ReportFrames, focus: str | None = None) -> str | None:
    """``focus`` if given, else ``trg`` when the report has finished student runs of it, else None."""
    if focus is not None:
        return focus
    students = frames.finished()
    students = students[students["stage"] == "student"]
    return DEFAULT_FOCUS if (students["method"] == DEFAULT_FOCUS).any() else None


def focus_differences(frames: ReportFrames, focus: str,
                      group_by: tuple[str, ...] = DEFAULT_GROUP_BY) -> pd.DataFrame:
    """Per cell and other method m: m's and ``focus``'s top-1 (mean, std, n) and the paired focus − m.

    Columns: the cell columns, method, mean/std/n of m, focus_mean/focus_std/focus_n, delta (mean of the paired
    differences focus − m on matched seeds and data subsets), delta_ci_low/high (95% t-interval), delta_n and
    p_value (two-sided paired t-test). Teachers are left out; vanilla is a baseline like any other method.
    """
    runs = table_runs(frames)
    keys = [k for k in group_by if k in runs.columns]
    cell = [k for k in keys if k != "method"]
    students = runs[runs["stage"] == "student"]
    if not (students["method"] == focus).any():
        return pd.DataFrame(columns=[*cell, "method"])
    match = tuple(dict.fromkeys([*MATCH_COLUMNS, *[c for c in ("dataset", "pair") if c not in cell]]))
    # m − focus for every m, negated: one grouped computation gives focus − m for all methods at once.
    against = paired_differences(students, cell, "method", focus, "top1", match=match)
    against = against.assign(delta=-against["delta"], delta_ci_low=-against["delta_ci_high"],
                             delta_ci_high=-against["delta_ci_low"])
    stats = describe(students, [*cell, "method"], "top1")
    focus_stats = stats[stats["method"] == focus][[*cell, "mean", "std", "n"]].rename(
        columns={"mean": "focus_mean", "std": "focus_std", "n": "focus_n"})
    others = stats[(stats["method"] != focus) & (stats["method"] != TEACHER_LABEL)][[*cell, "method", "mean", "std",
                                                                                      "n"]]
    table = others.merge(focus_stats, on=cell, how="inner") if cell else others.merge(focus_stats, how="cross")
    columns = [*cell, "method", "delta", "delta_ci_low", "delta_ci_high", "delta_n", "p_value"]
    table = table.merge(against[columns], on=[*cell, "method"], how="left")
    table["delta_n"] = table["delta_n"].fillna(0).astype(int)
    return sort_rows(table, [*cell, "method"])


def _interval(low: pd.Series, high: pd.Series) -> list[str]:
    return [f"[{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) and np.isfinite(hi) else "—"
            for lo, hi in zip(low, high, strict=True)]


def _p_text(p: pd.Series) -> list[str]:
    return ["—" if not np.isfinite(v) else ("<0.001" if v < 0.001 else f"{v:.3f}") for v in p]


def focus_table(frames: ReportFrames, focus: str, group_by: tuple[str, ...] = DEFAULT_GROUP_BY) -> Table:
    """The method under study against each other method: both top-1s, paired Δ with 95% CI, p and n pairs."""
    data = focus_differences(frames, focus, group_by)
    cell = [k for k in group_by if k in data.columns and k != "method"]
    display = data[cell].copy()
    display["method"] = data["method"]
    display["method top-1 (%)"] = format_mean_std(data["mean"], data["std"], data["n"])
    display[f"{focus} top-1 (%)"] = format_mean_std(data["focus_mean"], data["focus_std"], data["focus_n"])
    display[f"Δ {focus} − method"] = [f"{d:+.2f}" if np.isfinite(d) else "—" for d in data["delta"].astype(float)]
    display["95% CI of Δ"] = _interval(data["delta_ci_low"].astype(float), data["delta_ci_high"].astype(float))
    display["p"] = _p_text(data["p_value"].astype(float))
    display["n pairs"] = data["delta_n"]
    notes = [f"{focus} against each other method of the same dataset and pair: Δ is the mean of the paired "
             f"differences {focus} − method over matched seeds (same training seed and data subset), with its 95% "
             "t-interval and the two-sided paired t-test p-value; a CI that contains 0 means the grid cannot tell "
             "the two apart",
             "top-1: test set, final epoch, mean ± sample std over seeds; † marks fewer than 3 seeds"]
    return Table("focus", f"{focus} against each method (paired, final-epoch top-1)", data, display, notes)
