"""Which figures a grid gets, built from its report frames, and the writer that saves them as PNG and PDF."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from kdbench.report.frames import ReportFrames
from kdbench.report.groups import GROUPS, RULES, GroupRule
from kdbench.report.plots import (
    method_colors,
    plot_accuracy_vs_rho,
    plot_groups,
    plot_per_class,
    plot_top1_ci,
    plot_training_curves,
)
from kdbench.report.stats import describe
from kdbench.report.tables import table_runs
from kdbench.tracking.atomic import atomic_write

PLOT_FORMATS = ("png", "pdf")
KINDS = ("top1", "rho", "groups", "per_class", "curves")
#: Training-loop columns of the curves frame that are not loss terms.
_NOT_LOSS = {"train_top1"}


@dataclass(frozen=True)
class Plot:
    """One figure of the report: its file stem, kind (one of KINDS), a caption and the matplotlib Figure."""

    name: str
    kind: str
    caption: str
    figure: Figure


@dataclass(frozen=True)
class SavedPlot:
    """A figure written to disk: name, kind, caption and the path of each format."""

    name: str
    kind: str
    caption: str
    paths: dict[str, Path]


def slug(*parts: str) -> str:
    """A file-name-safe stem from labels: 'a->b' becomes 'a_to_b', anything outside [A-Za-z0-9.-] becomes '_'."""
    text = "_".join(part.replace("->", "_to_") for part in parts)
    return re.sub(r"[^A-Za-z0-9.\-_]+", "_", text).strip("_")


def grid_colors(frames: ReportFrames) -> dict[str, str]:
    """The method → colour map of a grid: every student method of every run, finished or not."""
    return method_colors(frames.runs.loc[frames.runs["stage"] == "student", "method"])


def _placed(frame: pd.DataFrame, placement: pd.DataFrame) -> pd.DataFrame:
    """Per-class or curve rows under the table pair(s) of their run (a teacher-less vanilla run joins every pair
    whose student is its architecture, as in the tables)."""
    return frame.drop(columns=["pair", "method", "dataset"]).merge(placement, on="run_id", how="inner")


def grid_plots(frames: ReportFrames, rule: GroupRule = RULES["default"],
               colors: dict[str, str] | None = None) -> Iterator[Plot]:
    """Every figure of the grid's finished student runs, one at a time (the caller saves and closes each).

    Order: top-1 per dataset variant; accuracy against ρ per dataset and pair (when ≥ 2 values of ρ); then per
    dataset variant and pair the many/medium/few bars (when the rule gives ≥ 2 groups), per-class accuracy and
    training curves. Runs sit in pairs as in the tables (:func:`kdbench.report.tables.table_runs`).
    ``colors`` defaults to :func:`grid_colors` (pass the unfiltered grid's map when slicing a grid).
    """
    colors = colors or grid_colors(frames)
    placed = table_runs(frames)
    students = placed[placed["stage"] == "student"]
    teachers = placed[placed["stage"] == "teacher"]
    grid = frames.grid
    datasets = list(dict.fromkeys(students.sort_values(["dataset_name", "imbalance_ratio"])["dataset"]))
    for dataset in datasets:
        cells = describe(students[students["dataset"] == dataset], ["pair", "method"], "top1")
        teacher_top1 = teachers[teachers["dataset"] == dataset].groupby("pair")["top1"].mean()
        yield Plot(slug("top1", dataset), "top1", f"Final-epoch top-1 with 95% t-intervals, {dataset}",
                   plot_top1_ci(cells, colors, f"{grid}: {dataset}", teacher_top1))
    yield from _rho_plots(students, colors, grid)
    placement = students[["run_id", "pair", "method", "dataset"]].drop_duplicates()
    per_class = _placed(frames.per_class, placement)
    curves = _placed(frames.curves, placement)
    cells = students[["dataset", "pair"]].drop_duplicates()
    ordered = sorted(zip(cells["dataset"], cells["pair"], strict=True), key=lambda c: (datasets.index(c[0]), c[1]))
    for dataset, pair in ordered:
        title = f"{grid}: {pair}, {dataset}"
        classes = per_class[(per_class["dataset"] == dataset) & (per_class["pair"] == pair)]
        if not classes.empty and classes["train_count"].notna().all():
            groups = _group_accuracy(classes, rule)
            if (groups.drop_duplicates("group")["n_classes"] > 0).sum() >= 2:
                yield Plot(slug("groups", dataset, pair), "groups",
                           f"Many / medium / few accuracy, {pair}, {dataset}", plot_groups(groups, colors, title,
                                                                                          _rule_text(rule)))
            yield Plot(slug("per_class", dataset, pair), "per_class",
                       f"Per-class accuracy against training count, {pair}, {dataset}",
                       plot_per_class(_per_class_means(classes), colors, title))
        history = curves[(curves["dataset"] == dataset) & (curves["pair"] == pair)]
        if not history.empty:
            yield Plot(slug("curves", dataset, pair), "curves", f"Training curves, {pair}, {dataset}",
                       plot_training_curves(_curve_means(history), colors, title))


def _rule_text(rule: GroupRule) -> str:
    many, few = (">=", "<=") if rule.inclusive else (">", "<")
    return f"rule '{rule.name}': many {many} {rule.many_threshold}, few {few} {rule.few_threshold} train images"


def _rho_plots(students: pd.DataFrame, colors: dict[str, str], grid: str) -> Iterator[Plot]:
    """Accuracy against ρ per (dataset name, long-tail profile, pair); balanced runs join every profile at ρ = 1."""
    for (name, pair), runs in students.groupby(["dataset_name", "pair"], sort=True):
        profiles = sorted(set(runs["lt_profile"]) - {"balanced"})
        for profile in profiles:
            series = runs[runs["lt_profile"].isin(["balanced", profile])]
            if series["imbalance_ratio"].nunique() < 2:
                continue
            cells = describe(series, ["method", "imbalance_ratio"], "top1").rename(columns={"imbalance_ratio": "rho"})
            label = f"{name} ({profile} long tail)"
            yield Plot(slug("rho", name, profile, pair), "rho", f"Top-1 against imbalance ratio ρ, {pair}, {label}",
                       plot_accuracy_vs_rho(cells, colors, f"{grid}: {pair}, {label}"))


def _per_class_means(classes: pd.DataFrame) -> pd.DataFrame:
    """Mean per-class accuracy over seeds per (method, class), with the class's training count."""
    table = classes.groupby(["method", "class"], sort=True).agg(accuracy=("accuracy", "mean"),
                                                                 train_count=("train_count", "mean"))
    return table.reset_index()


def _group_accuracy(classes: pd.DataFrame, rule: GroupRule) -> pd.DataFrame:
    """Per (method, group): mean and sample std over runs of the group accuracy (mean of per-class accuracies)."""
    classes = classes.assign(group=rule.assign(classes["train_count"].to_numpy(float)))
    per_run = classes.groupby(["method", "run_id", "group"], sort=False)["accuracy"].mean().reset_index()
    table = per_run.groupby(["method", "group"])["accuracy"].agg(mean="mean", std=lambda s: s.std(ddof=1))
    table = table.reset_index()
    # Group sizes from one run per method (every run of a dataset variant has the same training counts).
    first_runs = classes.drop_duplicates("method")["run_id"]
    sizes = classes[classes["run_id"].isin(first_runs)].groupby(["method", "group"]).size().rename("n_classes")
    full = pd.MultiIndex.from_product([sorted(set(classes["method"])), GROUPS], names=["method", "group"])
    table = table.set_index(["method", "group"]).join(sizes).reindex(full).reset_index()
    table["n_classes"] = table["n_classes"].fillna(0).astype(int)
    return table


def _curve_means(history: pd.DataFrame) -> pd.DataFrame:
    """Long (method, epoch, term, value) frame: test top-1 and each training loss term, mean over seeds."""
    terms = [c for c in history.columns if c.startswith("train_") and c not in _NOT_LOSS]
    long = history.melt(id_vars=["method", "epoch"], value_vars=["test_top1", *terms], var_name="term")
    long = long.dropna(subset=["value"])
    long["term"] = long["term"].str.removeprefix("train_")
    return long.groupby(["method", "epoch", "term"], sort=True)["value"].mean().reset_index()


def save_plot(plot: Plot, out_dir: str | Path, formats: tuple[str, ...] = PLOT_FORMATS) -> SavedPlot:
    """Write ``plot`` as ``<out_dir>/<name>.<format>`` for each format (atomically) and close its figure."""
    paths = {}
    for fmt in formats:
        path = Path(out_dir) / f"{plot.name}.{fmt}"
        atomic_write(path, lambda handle, fmt=fmt: plot.figure.savefig(handle, format=fmt, dpi=110))
        paths[fmt] = path
    plot.figure.clear()
    return SavedPlot(plot.name, plot.kind, plot.caption, paths)


def write_plots(frames: ReportFrames, out_dir: str | Path, rule: GroupRule = RULES["default"],
                colors: dict[str, str] | None = None, formats: tuple[str, ...] = PLOT_FORMATS) -> list[SavedPlot]:
    """Draw and save every figure of the grid under ``out_dir``; the saved plots in drawing order."""
    return [save_plot(plot, out_dir, formats) for plot in grid_plots(frames, rule, colors)]
