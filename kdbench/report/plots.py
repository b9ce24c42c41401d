"""Figures of a grid's results: each function draws one matplotlib Figure from a tidy DataFrame and returns it.

The functions never read records and never compute statistics; :mod:`kdbench.report.figures` feeds them the
frames and statistics the report builds. Every figure colours a method the same way (:func:`method_colors`),
so a reader can carry a colour from one plot to the next. Figures are plain ``matplotlib.figure.Figure`` objects,
not pyplot ones: no window, no global state, the Agg renderer for PNG on any machine (servers, CI, Slurm nodes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdbench.report.groups import GROUPS
from kdbench.report.stats import MIN_SEEDS

#: Baselines keep one colour in every grid: vanilla grey, kd black.
FIXED_COLORS = {"vanilla": "#7f7f7f", "kd": "#000000"}
#: The other methods take these in the order of their sorted names (tab10 without grey and the teacher's brown,
#: then tab20's light tones).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#e377c2", "#bcbd22", "#17becf",
           "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"]
COUNT_COLOR = "#d9d9d9"
TEACHER_COLOR = "#8c564b"
#: Group bars carry their value as text when there are at most this many methods.
VALUE_LABELS_UP_TO = 6


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """One colour per method for every figure of a grid: vanilla and kd fixed, the rest by sorted name."""
    others = sorted(set(methods) - set(FIXED_COLORS))
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(others)}
    colors.update(FIXED_COLORS)
    return colors


def method_order(methods: Iterable[str]) -> list[str]:
    """Baselines first (vanilla, kd), then the other methods by name: the order of every legend."""
    names = set(methods)
    return [m for m in FIXED_COLORS if m in names] + sorted(names - set(FIXED_COLORS))


def _legend_outside(fig: Figure, axes: Iterable[Axes], methods: Iterable[str], title: str = "method") -> None:
    """One figure legend right of the plots, where it cannot cover data: methods in legend order, then the rest."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    ordered = [m for m in method_order(methods) if m in seen]
    labels = ordered + [label for label in seen if label not in ordered]
    if labels:
        fig.legend([seen[label] for label in labels], labels, title=title, loc="outside right upper", frameon=False,
                   fontsize="small")


def _new_figure(width: float, height: float) -> Figure:
    # Figure() directly (not pyplot): nothing registered globally, so thousands of figures do not pile up.
    return Figure(figsize=(width, height), layout="constrained")


def _percent_limits(ax: Axes, low: float, high: float) -> None:
    """Y limits around [low, high] with a margin, clipped to 0-100 %."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return
    margin = max(1.0, 0.08 * (high - low))
    ax.set_ylim(max(0.0, low - margin), min(100.0, high + margin))


def plot_top1_ci(cells: pd.DataFrame, colors: dict[str, str], title: str,
                 teacher_top1: pd.Series | None = None) -> Figure:
    """Top-1 (%) with its 95% t-interval per method, pairs side by side on the x axis.

    ``cells``: one row per (pair, method) with columns pair, method, mean, ci_low, ci_high, n. An interval that
    cannot be computed (n < 2: NaN bounds) is drawn as a bare point; cells with n < 3 get a hollow marker.
    ``teacher_top1`` (top-1 by pair) draws each pair's teacher as a dashed line across its group.
    """
    pairs = list(dict.fromkeys(cells["pair"]))
    methods = method_order(cells["method"])
    width = 0.8 / max(1, len(methods))
    fig = _new_figure(min(16.0, max(6.0, 3.5 + 0.35 * len(pairs) * len(methods) ** 0.5)), 4.2)
    ax = fig.add_subplot()
    indexed = cells.set_index(["pair", "method"])
    for k, method in enumerate(methods):
        xs, ys, lows, highs, few = [], [], [], [], []
        for i, pair in enumerate(pairs):
            if (pair, method) not in indexed.index:
                continue
            row = indexed.loc[(pair, method)]
            xs.append(i - 0.4 + width * (k + 0.5))
            ys.append(row["mean"])
            lows.append(row["mean"] - row["ci_low"] if pd.notna(row["ci_low"]) else 0.0)
            highs.append(row["ci_high"] - row["mean"] if pd.notna(row["ci_high"]) else 0.0)
            few.append(row["n"] < MIN_SEEDS)
        ax.errorbar(xs, ys, yerr=[lows, highs], fmt="o", color=colors[method], label=method, capsize=3,
                    markersize=5, elinewidth=1.5)
        if any(few):  # hollow marker over the filled one: too few seeds to trust the interval
            ax.scatter(np.array(xs)[few], np.array(ys)[few], s=22, facecolors="white", edgecolors=colors[method],
                       zorder=3, label="_nolegend_")
    known = [] if teacher_top1 is None else [(i, float(teacher_top1[pair])) for i, pair in enumerate(pairs)
                                             if pair in teacher_top1.index]
    if known:
        ax.hlines([y for _, y in known], [i - 0.45 for i, _ in known], [i + 0.45 for i, _ in known],
                  colors=TEACHER_COLOR, linestyles="dashed", linewidth=1.2, label="teacher")
        extra = [y for _, y in known]
    else:
        extra = []
    ax.set_xticks(range(len(pairs)), [pair.replace("->", "→\n") for pair in pairs], fontsize="small")
    ax.set_xlim(-0.6, len(pairs) - 0.4)
    ax.set_xlabel("teacher → student pair")
    ax.set_ylabel("final-epoch top-1 (%)")
    lows = cells["ci_low"].fillna(cells["mean"])
    highs = cells["ci_high"].fillna(cells["mean"])
    _percent_limits(ax, min([float(lows.min()), *extra]), max([float(highs.max()), *extra]))
    ax.grid(axis="y", alpha=0.3)
    flag = f"\nhollow marker: n < {MIN_SEEDS} seeds" if (cells["n"] < MIN_SEEDS).any() else ""
    ax.set_title(f"{title}\nmean over seeds with 95% t-interval{flag}", fontsize="medium")
    _legend_outside(fig, [ax], cells["method"])
    return fig


def plot_per_class(per_class: pd.DataFrame, colors: dict[str, str], title: str) -> Figure:
    """Per-class test accuracy (%) against class frequency: classes by training count (largest first).

    ``per_class``: one row per (method, class) with columns method, class, train_count, accuracy (mean over
    seeds, %). The training counts are grey bars on a secondary (right) axis; one line per method on the left.
    """
    counts = per_class.drop_duplicates("class").set_index("class")["train_count"]
    order = sorted(counts.index, key=lambda c: (-counts[c], c))
    position = {c: i for i, c in enumerate(order)}
    fig = _new_figure(min(11.0, max(7.0, 3.5 + 0.12 * len(order))), 4.2)
    ax = fig.add_subplot()
    counts_ax = ax.twinx()
    counts_ax.bar(range(len(order)), [counts[c] for c in order], color=COUNT_COLOR, width=0.85, label="train count")
    counts_ax.set_ylabel("training images per class", color="#666666")
    counts_ax.tick_params(axis="y", colors="#666666")
    ax.set_zorder(counts_ax.get_zorder() + 1)  # method lines above the count bars
    ax.patch.set_visible(False)
    marker = "o" if len(order) <= 30 else None
    for method in method_order(per_class["method"]):
        rows = per_class[per_class["method"] == method].sort_values("class", key=lambda s: s.map(position))
        ax.plot(rows["class"].map(position), rows["accuracy"], color=colors[method], label=method, marker=marker,
                markersize=4, linewidth=1.5)
    if len(order) <= 30:
        ax.set_xticks(range(len(order)), [str(c) for c in order], fontsize="small")
        ax.set_xlabel("class (sorted by training count, largest first)")
    else:
        ax.set_xlabel("class rank by training count (0 = largest)")
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(0, 101)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{title}\nper-class accuracy, mean over seeds; grey bars: training count", fontsize="medium")
    _legend_outside(fig, [ax, counts_ax], per_class["method"])
    return fig


def plot_groups(groups: pd.DataFrame, colors: dict[str, str], title: str, rule: str) -> Figure:
    """Many / medium / few accuracy (%) as grouped bars, one bar per method in each group, ± sample std.

    ``groups``: one row per (method, group) with columns method, group, mean, std and n_classes; an empty group
    has NaN mean and is labelled "empty" instead of a bar. ``rule`` is printed under the title.
    """
    methods = method_order(groups["method"])
    present = [g for g in GROUPS if g in set(groups["group"])]
    width = 0.8 / max(1, len(methods))
    fig = _new_figure(max(6.0, 3.0 + 0.25 * len(methods) * len(present)), 4.2)
    ax = fig.add_subplot()
    indexed = groups.set_index(["method", "group"])
    for k, method in enumerate(methods):
        rows = [indexed.loc[(method, g)] if (method, g) in indexed.index else None for g in present]
        means = [row["mean"] if row is not None and pd.notna(row["mean"]) else 0.0 for row in rows]
        stds = [row["std"] if row is not None and pd.notna(row["std"]) else 0.0 for row in rows]
        xs = np.arange(len(present)) - 0.4 + width * (k + 0.5)
        ax.bar(xs, means, width=width * 0.95, yerr=stds, color=colors[method], label=method, capsize=2,
               error_kw={"elinewidth": 1})
        if len(methods) <= VALUE_LABELS_UP_TO:  # the numbers themselves, above the error bar (0 % is no bar)
            for x, mean, std, row in zip(xs, means, stds, rows, strict=True):
                if row is not None and pd.notna(row["mean"]):
                    ax.text(x, mean + std + 1.0, f"{mean:.1f}", ha="center", va="bottom", fontsize="x-small")
    n_classes = groups.drop_duplicates("group").set_index("group")["n_classes"]
    labels = []
    for g in present:
        count = int(n_classes[g]) if pd.notna(n_classes[g]) else 0
        labels.append(f"{g}\n({count} class{'es' if count > 1 else ''})" if count else f"{g}\n(empty)")
        if not count:
            ax.text(present.index(g), 2, "no classes\nin group", ha="center", va="bottom", fontsize="small",
                    color="#666666")
    ax.set_xticks(range(len(present)), labels)
    ax.set_ylim(0, 108)
    ax.set_ylabel("group accuracy (%), mean of per-class")
    ax.set_xlabel("class group by training count")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{title}\nmany / medium / few, bars: mean ± sample std over seeds\n{rule}", fontsize="medium")
    _legend_outside(fig, [ax], groups["method"])
    return fig


def plot_accuracy_vs_rho(cells: pd.DataFrame, colors: dict[str, str], title: str) -> Figure:
    """Top-1 (%) against the imbalance ratio ρ (log axis, balanced data at ρ = 1), one line per method.

    ``cells``: one row per (method, rho) with columns method, rho, mean, ci_low, ci_high.
    """
    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    for method in method_order(cells["method"]):
        rows = cells[cells["method"] == method].sort_values("rho")
        low = (rows["mean"] - rows["ci_low"]).fillna(0.0)
        high = (rows["ci_high"] - rows["mean"]).fillna(0.0)
        ax.errorbar(rows["rho"], rows["mean"], yerr=[low, high], color=colors[method], label=method, marker="o",
                    markersize=5, capsize=3, linewidth=1.5)
    ax.set_xscale("log")
    rhos = sorted(set(cells["rho"]))
    ax.set_xticks(rhos, [("1\n(balanced)" if r == 1 else f"{r:g}") for r in rhos])
    ax.minorticks_off()
    ax.set_xlim(min(rhos) / 1.5, max(rhos) * 1.5)
    ax.set_xlabel("imbalance ratio ρ = n_max / n_min (log scale)")
    ax.set_ylabel("final-epoch top-1 (%)")
    _percent_limits(ax, float(cells["ci_low"].fillna(cells["mean"]).min()),
                    float(cells["ci_high"].fillna(cells["mean"]).max()))
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}\naccuracy against imbalance, mean with 95% t-interval", fontsize="medium")
    _legend_outside(fig, [ax], cells["method"])
    return fig


def plot_training_curves(history: pd.DataFrame, colors: dict[str, str], title: str) -> Figure:
    """Test top-1 and each training loss term against epoch, one panel each, one line per method (mean over seeds).

    ``history``: one row per (method, epoch, term) with columns method, epoch, term, value; term "test_top1" is
    the test accuracy in %, the others are mean training loss terms (a method only has its own terms).
    """
    terms = sorted(set(history["term"]) - {"test_top1"}, key=lambda t: (t != "total", t != "ce", t))
    panels = ["test_top1", *terms]
    columns = min(3, len(panels))
    rows_n = math.ceil(len(panels) / columns)
    fig = _new_figure(3.6 * columns + 1.8, 2.9 * rows_n + 0.6)
    axes = fig.subplots(rows_n, columns, squeeze=False).ravel()
    for ax, term in zip(axes, panels, strict=False):
        data = history[history["term"] == term]
        for method in method_order(data["method"]):
            rows = data[data["method"] == method].sort_values("epoch")
            ax.plot(rows["epoch"], rows["value"], color=colors[method], label=method, linewidth=1.5)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if term == "test_top1":
            ax.set_ylabel("test top-1 (%)")
            ax.set_title("test accuracy", fontsize="medium")
        else:
            ax.set_ylabel("mean train loss (weighted)")
            ax.set_title(f"loss term: {term}", fontsize="medium")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    _legend_outside(fig, axes[:len(panels)], history["method"])
    fig.suptitle(f"{title}: training curves, mean over seeds", fontsize="medium")
    return fig
