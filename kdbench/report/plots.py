"""Figures of a grid's results: each function draws one matplotlib Figure from a tidy DataFrame and returns it.

The functions never read records and never compute statistics; :mod:`kdbench.report.figures` feeds them the
frames and statistics the report builds. Every figure colours a method the same way (:func:`method_colors`),
so a reader can carry a colour from one plot to the next. Figures are plain ``matplotlib.figure.Figure`` objects,
not pyplot ones: no window, no global state, the Agg renderer for PNG on any machine (servers, CI, Slurm nodes).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

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
#: Resolution of the saved PNGs; figures are made at it, so the layout's text measurements serve the PNG too.
DPI = 110
#: A cell shows each seed as a point up to this many seeds; beyond, a min–max bar (thousands of dots say nothing).
SEED_POINTS_UP_TO = 50


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """One colour per method for every figure of a grid: vanilla and kd fixed, the rest by sorted name."""
    others = sorted(set(methods) - set(FIXED_COLORS))
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(others)}
    colors.update(FIXED_COLORS)
    return colors


def is_teacher(method: str) -> bool:
    """Whether a label is a teacher row ('teacher', or 'teacher [grid]' when two grids are compared)."""
    return method.startswith("teacher")


def color_of(colors: dict[str, str], method: str) -> str:
    """A method's colour from the grid's map; every teacher label is brown."""
    return TEACHER_COLOR if is_teacher(method) else colors[method]


def method_order(methods: Iterable[str]) -> list[str]:
    """Baselines first (vanilla, kd), then the other methods by name, teachers last: the order of every legend."""
    names = set(methods)
    teachers = sorted(m for m in names if is_teacher(m))
    rest = names - set(teachers) - set(FIXED_COLORS)
    return [m for m in FIXED_COLORS if m in names] + sorted(rest) + teachers


def legend_outside(fig: Figure, axes: Iterable[Axes], methods: Iterable[str], title: str = "method") -> None:
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


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout Figure of this size (inches), not registered with pyplot."""
    # Figure() directly (not pyplot): nothing registered globally, so thousands of figures do not pile up.
    return Figure(figsize=(width, height), layout="constrained", dpi=DPI)


def percent_limits(ax: Axes, low: float, high: float) -> None:
    """Y limits around [low, high] with a margin, clipped to 0-100 %."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return
    margin = max(1.0, 0.08 * (high - low))
    ax.set_ylim(max(0.0, low - margin), min(100.0, high + margin))


def wrapped(lines: Iterable[str], width_inches: float) -> str:
    """Title lines joined, each broken to fit about ``width_inches`` at the medium font size."""
    chars = max(24, int(width_inches * 12.5))
    return "\n".join(textwrap.fill(line, chars, break_long_words=False) for line in lines)


def title_width(fig: Figure) -> float:
    """Inches a title over the axes may take: the figure less the legend column on the right."""
    return fig.get_figwidth() - 1.6


def spread_offsets(n: int, width: float) -> np.ndarray:
    """``n`` distinct x offsets within ``width`` (centred on 0), in an order unrelated to the values they go with
    (golden-ratio steps), so equal seeds sit side by side and sorted values do not draw a slope."""
    if n <= 1:
        return np.zeros(max(n, 0))
    return ((np.arange(n) * 0.6180339887) % 1.0 - 0.5) * width


def plot_top1_ci(cells: pd.DataFrame, colors: dict[str, str], title: str,
                 teacher_top1: pd.Series | None = None, seeds: pd.DataFrame | None = None) -> Figure:
    """Top-1 (%) with its 95% t-interval per method, pairs side by side on the x axis, each seed beside it.

    ``cells``: one row per (pair, method) with columns pair, method, mean, ci_low, ci_high, n. An interval that
    cannot be computed (n < 2: NaN bounds) is drawn as a bare point; cells with n < 3 get a hollow marker.
    ``teacher_top1`` (top-1 by pair) draws each pair's teacher as a dashed line across its group.
    ``seeds`` (columns pair, method, top1: one row per run) puts each run as a small dot left of its cell's
    mean, spread sideways so equal values stay apart; a cell of more than SEED_POINTS_UP_TO runs gets a thin
    min–max line there instead.
    """
    pairs = list(dict.fromkeys(cells["pair"]))
    methods = method_order(cells["method"])
    width = 0.8 / max(1, len(methods))
    fig = new_figure(min(16.0, max(6.0, 3.5 + 0.35 * len(pairs) * len(methods) ** 0.5)), 4.2)
    ax = fig.add_subplot()
    indexed = cells.set_index(["pair", "method"])
    pair_index = {pair: i for i, pair in enumerate(pairs)}
    by_cell = {} if seeds is None else {key: rows["top1"].to_numpy(float)
                                        for key, rows in seeds.dropna(subset=["top1"]).groupby(["pair", "method"])}
    shift = 0.22 * width if by_cell else 0.0  # the mean and interval right of centre, the seeds left of it
    collapsed = False
    extra: list[float] = []
    for k, method in enumerate(methods):
        xs, ys, lows, highs, few = [], [], [], [], []
        dots_x, dots_y, ranges = [], [], []
        for pair in pairs:
            if (pair, method) not in indexed.index:
                continue
            row = indexed.loc[(pair, method)]
            centre = pair_index[pair] - 0.4 + width * (k + 0.5)
            xs.append(centre + shift)
            ys.append(row["mean"])
            lows.append(row["mean"] - row["ci_low"] if pd.notna(row["ci_low"]) else 0.0)
            highs.append(row["ci_high"] - row["mean"] if pd.notna(row["ci_high"]) else 0.0)
            few.append(row["n"] < MIN_SEEDS)
            values = by_cell.get((pair, method))
            if values is None or not len(values):
                continue
            extra += [float(values.min()), float(values.max())]
            if len(values) > SEED_POINTS_UP_TO:
                ranges.append((centre - shift, values.min(), values.max()))
            else:
                dots_x += list(centre - shift + spread_offsets(len(values), 0.3 * width))
                dots_y += list(np.sort(values))
        color = color_of(colors, method)
        ax.errorbar(xs, ys, yerr=[lows, highs], fmt="o", color=color, label=method, capsize=3,
                    markersize=5, elinewidth=1.5)
        if any(few):  # hollow marker over the filled one: too few seeds to trust the interval
            ax.scatter(np.array(xs)[few], np.array(ys)[few], s=22, facecolors="white", edgecolors=color,
                       zorder=3, label="_nolegend_", gid="few_seeds")
        if dots_x:
            ax.scatter(dots_x, dots_y, s=11, color=color, alpha=0.75, linewidths=0, zorder=2, label="_nolegend_",
                       gid="seeds")
        if ranges:
            collapsed = True
            ax.vlines([r[0] for r in ranges], [r[1] for r in ranges], [r[2] for r in ranges], colors=color,
                      linewidth=2, alpha=0.45, label="_nolegend_", gid="seed_range")
    known = [] if teacher_top1 is None else [(i, float(teacher_top1[pair])) for i, pair in enumerate(pairs)
                                             if pair in teacher_top1.index]
    if known:
        ax.hlines([y for _, y in known], [i - 0.45 for i, _ in known], [i + 0.45 for i, _ in known],
                  colors=TEACHER_COLOR, linestyles="dashed", linewidth=1.2, label="teacher")
        extra += [y for _, y in known]
    ax.set_xticks(range(len(pairs)), [pair.replace("->", "→\n") for pair in pairs], fontsize="small")
    ax.set_xlim(-0.6, len(pairs) - 0.4)
    ax.set_xlabel("teacher → student pair")
    ax.set_ylabel("final-epoch top-1 (%)")
    lows = cells["ci_low"].fillna(cells["mean"])
    highs = cells["ci_high"].fillna(cells["mean"])
    percent_limits(ax, min([float(lows.min()), *extra]), max([float(highs.max()), *extra]))
    ax.grid(axis="y", alpha=0.3)
    lines = ["mean over seeds with 95% t-interval" + ("; dots: each seed" if by_cell else "")]
    if collapsed:
        lines.append(f"cells of > {SEED_POINTS_UP_TO} seeds: thin bar = seed min–max")
    if (cells["n"] < MIN_SEEDS).any():
        lines.append(f"hollow marker: n < {MIN_SEEDS} seeds")
    ax.set_title(wrapped([title, *lines], title_width(fig)), fontsize="medium")
    legend_outside(fig, [ax], cells["method"])
    return fig


def plot_per_class(per_class: pd.DataFrame, colors: dict[str, str], title: str) -> Figure:
    """Per-class test accuracy (%) against class frequency: classes by training count (largest first).

    ``per_class``: one row per (method, class) with columns method, class, train_count, accuracy (mean over
    seeds, %); a teacher label ('teacher') is drawn dashed in brown. The training counts are grey bars on a
    secondary (right) axis; one line per method on the left.
    """
    counts = per_class.drop_duplicates("class").set_index("class")["train_count"]
    order = sorted(counts.index, key=lambda c: (-counts[c], c))
    position = {c: i for i, c in enumerate(order)}
    fig = new_figure(min(11.0, max(7.0, 3.5 + 0.12 * len(order))), 4.2)
    ax = fig.add_subplot()
    counts_ax = ax.twinx()
    # one step outline for all classes (one artist, not a Rectangle per class)
    counts_ax.stairs([counts[c] for c in order], np.arange(len(order) + 1) - 0.5, fill=True, color=COUNT_COLOR,
                     label="train count")
    counts_ax.set_ylabel("training images per class", color="#666666")
    counts_ax.tick_params(axis="y", colors="#666666")
    ax.set_zorder(counts_ax.get_zorder() + 1)  # method lines above the count bars
    ax.patch.set_visible(False)
    marker = "o" if len(order) <= 30 else None
    for method in method_order(per_class["method"]):
        rows = per_class[per_class["method"] == method].sort_values("class", key=lambda s: s.map(position))
        teacher = is_teacher(method)
        ax.plot(rows["class"].map(position), rows["accuracy"], color=color_of(colors, method), label=method,
                marker=marker, markersize=4, linewidth=1.2 if teacher else 1.5, linestyle="--" if teacher else "-")
    if len(order) <= 30:
        ax.set_xticks(range(len(order)), [str(c) for c in order], fontsize="small")
        ax.set_xlabel("class (sorted by training count, largest first)")
    else:
        ax.set_xlabel("class rank by training count (0 = largest)")
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylim(0, 101)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(wrapped([title, "per-class accuracy, mean over seeds; grey bars: training count"], title_width(fig)),
                 fontsize="medium")
    legend_outside(fig, [ax, counts_ax], per_class["method"])
    return fig


def plot_groups(groups: pd.DataFrame, colors: dict[str, str], title: str, rule: str) -> Figure:
    """Many / medium / few accuracy (%) as grouped bars, one bar per method in each group, ± sample std.

    ``groups``: one row per (method, group) with columns method, group, mean, std and n_classes; an empty group
    has NaN mean and is labelled "empty" instead of a bar. A teacher label is the last, hatched bar of each
    group. ``rule`` is printed under the title.
    """
    methods = method_order(groups["method"])
    present = [g for g in GROUPS if g in set(groups["group"])]
    width = 0.8 / max(1, len(methods))
    fig = new_figure(max(6.0, 3.0 + 0.25 * len(methods) * len(present)), 4.2)
    ax = fig.add_subplot()
    indexed = groups.set_index(["method", "group"])
    for k, method in enumerate(methods):
        rows = [indexed.loc[(method, g)] if (method, g) in indexed.index else None for g in present]
        means = [row["mean"] if row is not None and pd.notna(row["mean"]) else 0.0 for row in rows]
        stds = [row["std"] if row is not None and pd.notna(row["std"]) else 0.0 for row in rows]
        xs = np.arange(len(present)) - 0.4 + width * (k + 0.5)
        ax.bar(xs, means, width=width * 0.95, yerr=stds, color=color_of(colors, method), label=method, capsize=2,
               error_kw={"elinewidth": 1}, hatch="//" if is_teacher(method) else None,
               edgecolor="white" if is_teacher(method) else None)
        if len(methods) <= VALUE_LABELS_UP_TO:  # the numbers themselves, above the error bar (0 % is no bar)
            digits = 1 if len(methods) <= 4 else 0  # "100.0" is wider than a bar of five
            for x, mean, std, row in zip(xs, means, stds, rows, strict=True):
                if row is not None and pd.notna(row["mean"]):
                    ax.text(x, mean + std + 1.0, f"{mean:.{digits}f}", ha="center", va="bottom", fontsize="x-small")
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
    ax.set_title(wrapped([title, "many / medium / few, bars: mean ± sample std over seeds", rule], title_width(fig)),
                 fontsize="medium")
    legend_outside(fig, [ax], groups["method"])
    return fig


def plot_accuracy_vs_rho(cells: pd.DataFrame, colors: dict[str, str], title: str) -> Figure:
    """Top-1 (%) against the imbalance ratio ρ (log axis, balanced data at ρ = 1), one line per method.

    ``cells``: one row per (method, rho) with columns method, rho, mean, ci_low, ci_high.
    """
    fig = new_figure(6.5, 4.2)
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
    percent_limits(ax, float(cells["ci_low"].fillna(cells["mean"]).min()),
                    float(cells["ci_high"].fillna(cells["mean"]).max()))
    ax.grid(alpha=0.3)
    ax.set_title(wrapped([title, "accuracy against imbalance, mean with 95% t-interval"], title_width(fig)),
                 fontsize="medium")
    legend_outside(fig, [ax], cells["method"])
    return fig
