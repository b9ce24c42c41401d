"""Which figures a grid gets, built from its report frames, and the writer that saves them as PNG and PDF."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from kdbench.report.curves import (
    TOTAL,
    UnweightedCurves,
    curve_long,
    curve_summary,
    lr_drops,
    unweighted_curves,
)
from kdbench.report.deltas import (
    class_positions,
    delta_baseline,
    per_class_deltas,
    reference_differences,
    reference_label,
    summarise_differences,
)
from kdbench.report.frames import ReportFrames
from kdbench.report.groups import GROUPS, RULES, GroupRule
from kdbench.report.plots import (
    DPI,
    method_colors,
    plot_accuracy_vs_rho,
    plot_groups,
    plot_per_class,
    plot_top1_ci,
)
from kdbench.report.plots_curves import plot_training_curves
from kdbench.report.plots_delta import plot_paired_differences, plot_per_class_delta
from kdbench.report.stats import describe
from kdbench.report.tables import table_runs
from kdbench.tracking.atomic import atomic_write

PLOT_FORMATS = ("png", "pdf")
KINDS = ("top1", "paired", "rho", "groups", "per_class", "per_class_delta", "curves")


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
    whose student is its architecture, and a teacher run every pair it teaches, as in the tables)."""
    dropped = [c for c in placement.columns if c != "run_id" and c in frame.columns]
    return frame.drop(columns=dropped).merge(placement, on="run_id", how="inner")


def _by_cell(frame: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """``frame`` split by (dataset, pair) in one pass (slicing a large frame once per cell is slow)."""
    return {key: rows for key, rows in frame.groupby(["dataset", "pair"], sort=False)}


def grid_plots(frames: ReportFrames, rule: GroupRule = RULES["default"],
               colors: dict[str, str] | None = None) -> Iterator[Plot]:
    """Every figure of the grid's finished runs, one at a time (the caller saves and closes each).

    Order: top-1 per dataset variant; accuracy against ρ per dataset and pair (when ≥ 2 values of ρ); then per
    dataset variant and pair: the reference method (TRG) minus each other method (when the pair has it), the
    many/medium/few bars (when the rule gives ≥ 2 groups), per-class accuracy, per-class accuracy minus the
    baseline's (vanilla, else kd) and the training curves. Runs sit in pairs as in the tables
    (:func:`kdbench.report.tables.table_runs`), the pair's teacher included where it is a reference.
    ``colors`` defaults to :func:`grid_colors` (pass the unfiltered grid's map when slicing a grid).
    """
    colors = colors or grid_colors(frames)
    placed = table_runs(frames)
    students = placed[placed["stage"] == "student"]
    teachers = placed[placed["stage"] == "teacher"]
    grid = frames.grid
    datasets = list(dict.fromkeys(students.sort_values(["dataset_name", "imbalance_ratio"])["dataset"]))
    for dataset in datasets:
        runs = students[students["dataset"] == dataset]
        cells = describe(runs, ["pair", "method"], "top1")
        teacher_top1 = teachers[teachers["dataset"] == dataset].groupby("pair")["top1"].mean()
        yield Plot(slug("top1", dataset), "top1", f"Final-epoch top-1 with 95% t-intervals and each seed, {dataset}",
                   plot_top1_ci(cells, colors, f"{grid}: {dataset}", teacher_top1, runs[["pair", "method", "top1"]]))
    yield from _rho_plots(students, colors, grid)
    placement = placed[["run_id", "pair", "method", "dataset", "stage", "subset_seed"]].drop_duplicates()
    per_class = _by_cell(_placed(frames.per_class, placement))
    curves = _curve_cells(frames, placement[placement["stage"] == "student"], students)
    cells = students[["dataset", "pair"]].drop_duplicates()
    ordered = sorted(zip(cells["dataset"], cells["pair"], strict=True), key=lambda c: (datasets.index(c[0]), c[1]))
    by_cell = _by_cell(students)
    for dataset, pair in ordered:
        title = f"{grid}: {pair}, {dataset}"
        yield from _paired_plot(by_cell[(dataset, pair)], colors, title, dataset, pair)
        classes = per_class.get((dataset, pair))
        if classes is not None and not classes.empty and classes["train_count"].notna().all():
            yield from _class_plots(classes, colors, title, dataset, pair, rule)
        history = curves.get((dataset, pair))
        if history is not None and not history[0].empty:
            yield Plot(slug("curves", dataset, pair), "curves",
                       f"Training curves (loss terms unweighted), {pair}, {dataset}", _curves_figure(*history, colors,
                                                                                                   title))


def _paired_plot(runs: pd.DataFrame, colors: dict[str, str], title: str, dataset: str, pair: str) -> Iterator[Plot]:
    """The reference method (TRG) minus each other method of the pair, per seed; nothing without TRG."""
    reference = reference_label(runs)
    if reference is None:
        return
    differences = reference_differences(runs, reference)
    if differences.empty:
        return
    yield Plot(slug("paired", dataset, pair), "paired",
               f"{reference} minus each method on matched seeds (mean, 95% t-interval, each seed), {pair}, {dataset}",
               plot_paired_differences(differences, summarise_differences(differences), colors, title, reference))


def _class_plots(classes: pd.DataFrame, colors: dict[str, str], title: str, dataset: str, pair: str,
                 rule: GroupRule) -> Iterator[Plot]:
    """Many/medium/few bars (when ≥ 2 groups), per-class accuracy and per-class Δ vs the baseline of one cell."""
    groups = _group_accuracy(classes, rule)
    if (groups.drop_duplicates("group")["n_classes"] > 0).sum() >= 2:
        yield Plot(slug("groups", dataset, pair), "groups", f"Many / medium / few accuracy, {pair}, {dataset}",
                   plot_groups(groups, colors, title, _rule_text(rule)))
    yield Plot(slug("per_class", dataset, pair), "per_class",
               f"Per-class accuracy against training count, {pair}, {dataset}",
               plot_per_class(_per_class_means(classes), colors, title))
    students = classes[classes["stage"] == "student"]
    baseline = delta_baseline(students["method"])
    if baseline is None or students["method"].nunique() < 2:
        return
    deltas = per_class_deltas(students, baseline)
    if deltas.empty:
        return
    rows, facts = class_positions(deltas, rule)
    yield Plot(slug("per_class_delta", dataset, pair), "per_class_delta",
               f"Per-class accuracy minus {baseline}'s, {pair}, {dataset}",
               plot_per_class_delta(rows, facts, colors, title, baseline))


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


def _curve_cells(frames: ReportFrames, placement: pd.DataFrame,
                 students: pd.DataFrame) -> dict[tuple[str, str], tuple[pd.DataFrame, UnweightedCurves]]:
    """Per (dataset, pair): the curve rows of its student runs, loss terms unweighted, and what the unweighting
    found (shared by every cell)."""
    curves = frames.curves[frames.curves["run_id"].isin(set(placement["run_id"]))]
    if curves.empty:
        return {}
    unweighted = unweighted_curves(curves, students)
    return {key: (rows, unweighted) for key, rows in _by_cell(_placed(unweighted.frame, placement)).items()}


def _term_title(term: str, methods: set[str], unweighted: UnweightedCurves) -> str:
    if term == TOTAL:
        return "total (weighted sum: the objective)"
    logged = sorted(unweighted.as_logged.get(term, set()) & methods)
    if not logged:
        return f"{term}, unweighted"
    return f"{term}, as logged (no declared weight: {', '.join(logged)})"


def _curves_figure(history: pd.DataFrame, unweighted: UnweightedCurves, colors: dict[str, str], title: str) -> Figure:
    """The training-curves figure of one cell from its (unweighted) curve rows."""
    terms = [t for t in unweighted.terms if history[f"train_{t}"].notna().any()]
    long = curve_long(history, terms)
    methods = set(history["method"])
    notes = ["loss terms unweighted: each logged term divided by its weight from the run's hyper-parameters "
             "(a term of weight 0 is left out)",
             *sorted({note for method, note in unweighted.notes.items() if method in methods})]
    seeds = long[long["term"] != "val_top1"].sort_values(["run_id", "epoch"], kind="stable")
    return plot_training_curves(curve_summary(long), colors, title, seeds=seeds, milestones=lr_drops(history),
                                term_titles={t: _term_title(t, methods, unweighted) for t in terms}, notes=notes)


def fix_layout(figure: Figure) -> None:
    """Run the figure's constrained layout once and keep it: each savefig would lay out again (half its time)."""
    engine = figure.get_layout_engine()
    if engine is not None:
        engine.execute(figure)
        figure.set_layout_engine("none")


def save_plot(plot: Plot, out_dir: str | Path, formats: tuple[str, ...] = PLOT_FORMATS) -> SavedPlot:
    """Write ``plot`` as ``<out_dir>/<name>.<format>`` for each format (atomically)."""
    paths = {}
    fix_layout(plot.figure)
    for fmt in formats:
        path = Path(out_dir) / f"{plot.name}.{fmt}"
        atomic_write(path, lambda handle, fmt=fmt: plot.figure.savefig(handle, format=fmt, dpi=DPI))
        paths[fmt] = path
    # No figure.clear(): clearing re-initialises every Axes (slow), and a pyplot-free Figure is simply freed.
    return SavedPlot(plot.name, plot.kind, plot.caption, paths)


def write_plots(frames: ReportFrames, out_dir: str | Path, rule: GroupRule = RULES["default"],
                colors: dict[str, str] | None = None, formats: tuple[str, ...] = PLOT_FORMATS) -> list[SavedPlot]:
    """Draw and save every figure of the grid under ``out_dir``; the saved plots in drawing order."""
    return [save_plot(plot, out_dir, formats) for plot in grid_plots(frames, rule, colors)]
