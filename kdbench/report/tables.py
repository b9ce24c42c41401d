"""The four report tables (docs/protocol.md): main comparison, per-class, head/medium/tail, cost.

Each builder takes :class:`~kdbench.report.frames.ReportFrames` (already filtered) and returns a :class:`Table`:
``data`` holds the numbers (CSV), ``display`` the formatted cells (terminal, LaTeX), ``notes`` what a reader must
know (grouping rule, empty groups, n < 3 flags, where the published numbers come from).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kdbench.pairs import listed_pairs
from kdbench.report.errors import ReportError
from kdbench.report.frames import ReportFrames
from kdbench.report.groups import GROUPS, GroupRule, check_splits
from kdbench.report.published import published_numbers
from kdbench.report.stats import MATCH_COLUMNS, MIN_SEEDS, describe, paired_differences

DEFAULT_GROUP_BY = ("dataset", "pair", "method")
BASELINES = ("kd", "vanilla")
TEACHER_LABEL = "teacher"


@dataclass
class Table:
    """One report table: numbers, formatted cells and notes."""

    name: str
    title: str
    data: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def _method_key(method: str) -> str:
    """Sort key of a method label: teacher, vanilla, kd first, then the rest alphabetically."""
    first = {TEACHER_LABEL: "0", "vanilla": "1", "kd": "2"}
    return first.get(method, "3") + str(method)


def sort_rows(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows sorted by ``keys``, methods in table order."""
    if frame.empty:
        return frame.reset_index(drop=True)
    return frame.sort_values(keys, key=lambda s: s.map(_method_key) if s.name == "method" else s,
                             ignore_index=True)


def table_runs(frames: ReportFrames) -> pd.DataFrame:
    """Finished runs placed in the pairs they belong to in a table (:func:`place_runs` of the finished runs)."""
    return place_runs(frames.finished())


def place_runs(done: pd.DataFrame) -> pd.DataFrame:
    """Runs (rows of the runs frame) once per pair they are listed under (:func:`kdbench.pairs.listed_pairs`).

    A student trained without a teacher (e.g. ``vanilla``; one run shared by every pair with that student) is
    repeated in each pair whose student is its architecture, and a teacher run appears as method 'teacher' in each
    pair it teaches; both on the same dataset. Runs with no such pair keep their own pair. ``run_pair`` keeps
    the pair the run was recorded under.
    """
    done = done.copy()
    done["run_pair"] = done["pair"]
    if done.empty:
        return done.reset_index(drop=True)
    listed = listed_pairs(done)
    placed = done.iloc[listed["row"].to_numpy()].reset_index(drop=True)
    placed["pair"] = listed["pair"].to_numpy()
    # Teacher runs are labelled 'teacher' (possibly 'teacher [grid]' when two grids are compared).
    teachers = placed["stage"] == "teacher"
    placed.loc[teachers, "method"] = placed.loc[teachers, "method"].where(
        placed.loc[teachers, "method"].str.startswith(TEACHER_LABEL), TEACHER_LABEL)
    return placed


def format_mean_std(mean: pd.Series, std: pd.Series, n: pd.Series, flag: bool = True) -> pd.Series:
    """Cells "mean ± std" (2 decimals; "—" without a spread), † where n < MIN_SEEDS and ``flag``."""
    cells = []
    for m, s, k in zip(mean, std, n, strict=True):
        if not np.isfinite(m):
            cells.append("—")
            continue
        spread = f"{s:.2f}" if k >= 2 and np.isfinite(s) else "—"
        cells.append(f"{m:.2f} ± {spread}" + (" †" if flag and k < MIN_SEEDS else ""))
    return pd.Series(cells, index=mean.index, dtype=object)


def _format_interval(low: pd.Series, high: pd.Series) -> pd.Series:
    return pd.Series([f"[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else "—" for lo, hi in zip(low, high, strict=True)],
                     index=low.index, dtype=object)


def _format_delta(delta: pd.Series, p_value: pd.Series, n: pd.Series) -> pd.Series:
    cells = []
    for d, p, k in zip(delta, p_value, n, strict=True):
        if not np.isfinite(d):
            cells.append("")
        else:
            p_text = f"p={p:.3f}" if np.isfinite(p) else "p=—"
            cells.append(f"{d:+.2f} ({p_text}, n={int(k)})")
    return pd.Series(cells, index=delta.index, dtype=object)


def _check_group_by(group_by: tuple[str, ...], runs: pd.DataFrame) -> list[str]:
    unknown = [c for c in group_by if c not in runs.columns]
    if unknown:
        raise ReportError(f"--group-by {','.join(unknown)}: unknown column(s); allowed: {', '.join(runs.columns)}")
    if "method" not in group_by:
        raise ReportError(f"--group-by {','.join(group_by)}: must include 'method' (tables compare methods)")
    return list(group_by)


def main_table(frames: ReportFrames, group_by: tuple[str, ...] = DEFAULT_GROUP_BY) -> Table:
    """Final-epoch top-1 per cell: mean ± std, 95% t-interval, n; best-on-validation; Δ vs kd / vanilla; published."""
    runs = table_runs(frames)
    keys = _check_group_by(group_by, runs)
    cell = [k for k in keys if k != "method"]
    stats = describe(runs, keys, "top1")
    notes = [f"top-1 (%) on the test set at the final epoch, over seeds: mean ± sample std (ddof=1), 95% t-interval; "
             f"† marks cells with n < {MIN_SEEDS} seeds"]
    if runs["has_val"].any():
        best = describe(runs[runs["has_val"]], keys, "best_val_test_top1")
        best = best[[*keys, "mean", "std", "n"]].rename(columns={"mean": "best_val_mean", "std": "best_val_std",
                                                                 "n": "best_val_n"})
        stats = stats.merge(best, on=keys, how="left")
        notes.append("best-val: test top-1 at the epoch with the best validation top-1 (never selected on test)")
    # Paired differences pool over the key columns left out of --group-by (pair, dataset), never across them.
    match = tuple(dict.fromkeys([*MATCH_COLUMNS, *[c for c in ("dataset", "pair") if c not in cell]]))
    students = runs[runs["stage"] == "student"]
    for baseline in BASELINES:
        deltas = paired_differences(students, cell, "method", baseline, "top1", match=match)
        deltas = deltas[[*cell, "method", "delta", "delta_n", "p_value"]].rename(columns={
            "delta": f"delta_{baseline}", "delta_n": f"delta_{baseline}_n", "p_value": f"p_{baseline}"})
        stats = stats.merge(deltas, on=[*cell, "method"], how="left")
        stats[f"delta_{baseline}_n"] = stats[f"delta_{baseline}_n"].fillna(0).astype(int)
    notes.append("Δ vs kd / vs vanilla: mean of paired differences on matched seeds (same data subset and training "
                 "seed), two-sided paired t-test p-value, n = matched pairs")
    stats = _add_published(stats, runs, keys, notes)
    if stats["published_top1"].notna().any():
        best_test = describe(runs, keys, "best_test_top1")[[*keys, "mean", "n"]].rename(
            columns={"mean": "best_test_mean", "n": "best_test_n"})
        stats = stats.merge(best_test, on=keys, how="left")
        stats.loc[stats["published_top1"].isna(), "best_test_mean"] = np.nan  # only beside a published number
        notes.append("best test epoch: the highest test top-1 over the epochs, mean over seeds; selected on the test "
                     "set as published CIFAR tables are, so shown only beside a published number, to compare with it "
                     "(never a result)")
    stats = sort_rows(stats, keys)
    display = stats[keys].copy()
    display["top-1 (%)"] = format_mean_std(stats["mean"], stats["std"], stats["n"])
    display["95% CI"] = _format_interval(stats["ci_low"], stats["ci_high"])
    display["n"] = stats["n"]
    if "best_val_mean" in stats:
        display["best-val top-1"] = format_mean_std(stats["best_val_mean"], stats["best_val_std"],
                                                     stats["best_val_n"].fillna(0))
    for baseline in BASELINES:
        display[f"Δ vs {baseline}"] = _format_delta(stats[f"delta_{baseline}"], stats[f"p_{baseline}"],
                                                   stats[f"delta_{baseline}_n"])
    if stats["published_top1"].notna().any():
        display["best test epoch (as published; selected on test)"] = [
            f"{v:.2f}" if np.isfinite(v) else "" for v in stats["best_test_mean"]]
        display["published"] = [f"{t:.2f} ({p})" if np.isfinite(t) else "" for t, p in
                                zip(stats["published_top1"], stats["published_protocol"], strict=True)]
    return Table("main", "Final-epoch top-1 accuracy (%)", stats, display, notes)


def _add_published(stats: pd.DataFrame, runs: pd.DataFrame, keys: list[str], notes: list[str]) -> pd.DataFrame:
    """Published top-1, protocol and source beside rows of a balanced dataset whose (dataset, teacher, student,
    method) is in the reference; only when the cells are single (dataset, pair)s, not pooled by --group-by."""
    columns = ["published_top1", "published_protocol", "published_source"]
    if not {"dataset", "pair", "method"} <= set(keys):
        stats[columns[0]], stats[columns[1]], stats[columns[2]] = np.nan, None, None
        return stats
    info = runs.groupby(keys, dropna=False).agg(_dataset=("dataset_name", "first"),
                                                _balanced=("lt_profile", lambda s: bool((s == "balanced").all())))
    info = info.reset_index()
    parts = info["pair"].str.split("->", n=1)  # the table pair names teacher and student (vanilla, teacher rows too)
    info["_teacher"] = np.where(parts.str.len() == 2, parts.str[0], None)
    info["_student"] = parts.str[-1]
    reference = published_numbers().rename(columns={
        "dataset": "_dataset", "teacher": "_teacher", "student": "_student", "top1": "published_top1",
        "protocol": "published_protocol", "source": "published_source"})
    reference = reference.drop_duplicates(["_dataset", "_teacher", "_student", "method"])
    info = info.merge(reference, on=["_dataset", "_teacher", "_student", "method"], how="left")
    info.loc[~info["_balanced"], columns] = None
    stats = stats.merge(info[[*keys, *columns]], on=keys, how="left")
    stats["published_top1"] = stats["published_top1"].astype(float)
    sources = sorted(set(stats["published_source"].dropna()))
    if sources:
        notes.append("published: top-1 (%) from the literature with its protocol; sources: " + "; ".join(sources))
    return stats


def per_class_table(frames: ReportFrames, group_by: tuple[str, ...] = DEFAULT_GROUP_BY) -> Table:
    """Per-class final-epoch accuracy (%) per method (mean over seeds) with each class's training count."""
    runs = table_runs(frames)
    keys = _check_group_by(group_by, runs)
    cell = [k for k in keys if k != "method"]
    placement = runs[["run_id", *keys]].drop_duplicates()
    per_class = frames.per_class.drop(columns=[c for c in keys if c != "run_id"], errors="ignore")
    per_class = per_class.merge(placement, on="run_id", how="inner")
    if per_class.empty:
        raise ReportError("no per-class counts in the finished runs' records; the per-class table needs them")
    counts = per_class.groupby([*cell, "class"], dropna=False)["train_count"].first().rename("train_count")
    data = per_class.groupby([*cell, "class", "method"], dropna=False)["accuracy"].agg(
        accuracy="mean", std="std", n="count").reset_index()
    data = data.merge(counts.reset_index(), on=[*cell, "class"], how="left")
    data = data[[*cell, "class", "train_count", "method", "accuracy", "std", "n"]]
    wide = data.pivot(index=[*cell, "class", "train_count"], columns="method", values="accuracy").reset_index()
    wide.columns.name = None
    method_columns = sorted(set(data["method"]), key=_method_key)
    wide = wide.sort_values([*cell, "train_count", "class"], ascending=[True] * len(cell) + [False, True],
                            ignore_index=True)
    display = wide[[*cell, "class", "train_count"]].copy()
    display["train_count"] = display["train_count"].astype("Int64")
    for method in method_columns:
        display[method] = [f"{v:.1f}" if np.isfinite(v) else "—" for v in wide[method]]
    notes = ["per-class test accuracy (%) at the final epoch, mean over seeds; classes sorted by training count"]
    return Table("per_class", "Per-class accuracy (%) by training count", data, display, notes)


def head_tail_table(frames: ReportFrames, rule: GroupRule, group_by: tuple[str, ...] = DEFAULT_GROUP_BY) -> Table:
    """Many / medium / few accuracy, worst class and head–tail gap per method (mean ± std over seeds).

    Datasets whose classes all fall in one group are left out with a note when balanced, and are a ReportError
    when long-tailed (the rule cannot split them). An empty group is NaN with a note, never 0.
    """
    runs = table_runs(frames)
    keys = _check_group_by(group_by, runs)
    placement = runs[["run_id", "lt_profile", *dict.fromkeys([*keys, "dataset"])]].drop_duplicates()
    per_class = frames.per_class[["run_id", "class", "train_count", "accuracy"]].merge(placement, on="run_id")
    notes = [rule.describe(), "group accuracy = mean of the per-class accuracies (%) in the group, per run, then "
             "mean ± std over seeds; worst = lowest per-class accuracy; gap = many − few"]
    kept, sizes_text = [], {}
    for dataset, counts in per_class.drop_duplicates(["dataset", "class"]).groupby("dataset")["train_count"]:
        balanced = set(placement.loc[placement["dataset"] == dataset, "lt_profile"]) == {"balanced"}
        try:
            sizes = check_splits(counts.to_numpy(), rule, f"dataset '{dataset}'")
        except ReportError:
            if balanced:
                notes.append(f"dataset '{dataset}' is balanced: every class is in one group; left out")
                continue
            raise
        kept.append(dataset)
        sizes_text[dataset] = "/".join(str(sizes[g]) for g in GROUPS)
        for group in GROUPS:
            if sizes[group] == 0:
                notes.append(f"dataset '{dataset}': the {group} group is empty under rule '{rule.name}'; "
                             f"its accuracy is NaN (not 0)")
    if not kept:
        raise ReportError(f"no dataset in this report splits into many/medium/few groups under {rule.describe()}; "
                          "the head/medium/tail table needs a long-tailed dataset")
    per_class = per_class[per_class["dataset"].isin(kept)].copy()
    per_class["group"] = rule.assign(per_class["train_count"].to_numpy(float))
    per_run = per_class.pivot_table(index="run_id", columns="group", values="accuracy", aggfunc="mean")
    per_run = per_run.reindex(columns=list(GROUPS))
    per_run["worst"] = per_class.groupby("run_id")["accuracy"].min()
    per_run["gap"] = per_run["many"] - per_run["few"]
    per_run = placement[["run_id", *keys]].merge(per_run.reset_index(), on="run_id", how="inner")
    data = None
    for metric in [*GROUPS, "worst", "gap"]:
        described = describe(per_run, keys, metric)[[*keys, "mean", "std", "n"]]
        described = described.rename(columns={"mean": metric, "std": f"{metric}_std", "n": f"{metric}_n"})
        data = described if data is None else data.merge(described, on=keys, how="outer")
    data["n"] = per_run.groupby(keys, dropna=False)["run_id"].count().reindex(
        pd.MultiIndex.from_frame(data[keys])).to_numpy()
    if "dataset" in data:
        data["groups"] = data["dataset"].map(sizes_text)
    else:  # datasets pooled by --group-by: list each one's split
        data["groups"] = "; ".join(f"{name}: {text}" for name, text in sizes_text.items())
    data = sort_rows(data.drop(columns=[f"{m}_n" for m in [*GROUPS, "worst", "gap"]]), keys)
    display = data[keys].copy()
    display["classes many/med/few"] = data["groups"]
    for metric in [*GROUPS, "worst", "gap"]:
        display[metric] = format_mean_std(data[metric], data[f"{metric}_std"], data["n"], flag=False)
    display["n"] = data["n"]
    return Table("head_tail", "Many / medium / few accuracy (%)", data, display, notes)


def cost_table(frames: ReportFrames, group_by: tuple[str, ...] = DEFAULT_GROUP_BY) -> Table:
    """Extra trainable parameters, seconds per epoch, images/s and peak memory per method (students)."""
    runs = table_runs(frames)
    keys = _check_group_by(group_by, runs)
    students = runs[runs["stage"] == "student"].copy()
    if students.empty:
        raise ReportError("no finished student runs: the cost table compares methods")
    students["peak_memory_mb"] = students["peak_memory_bytes"].astype(float) / 2**20
    students["extra_params"] = students["extra_params"].astype(float)
    students["student_params"] = students["student_params"].astype(float)
    grouped = students.groupby(keys, dropna=False)
    data = grouped.agg(extra_params=("extra_params", "max"), student_params=("student_params", "max"),
                       seconds_per_epoch=("seconds_per_epoch", "mean"),
                       seconds_per_epoch_std=("seconds_per_epoch", "std"),
                       images_per_s=("images_per_s", "mean"), peak_memory_mb=("peak_memory_mb", "max"),
                       n=("run_id", "count")).reset_index()
    data = sort_rows(data, keys)
    display = data[keys].copy()
    display["extra params"] = [f"{int(v):,}" if np.isfinite(v) else "—" for v in data["extra_params"]]
    display["s/epoch"] = format_mean_std(data["seconds_per_epoch"], data["seconds_per_epoch_std"], data["n"],
                                          flag=False)
    display["images/s"] = [f"{v:,.0f}" if np.isfinite(v) else "—" for v in data["images_per_s"]]
    display["peak memory (MiB)"] = [f"{v:,.0f}" if np.isfinite(v) else "—" for v in data["peak_memory_mb"]]
    display["n"] = data["n"]
    notes = ["extra params: trainable parameters the method adds (projectors, embeddings); s/epoch: mean ± std "
             "of training-epoch wall time; images/s: training throughput; peak memory: max over runs (CUDA: "
             "allocator peak; CPU: the process's max RSS, which includes the framework)"]
    return Table("cost", "Cost per method", data, display, notes)
