"""Difference figures: per-class accuracy minus a baseline's, and a reference method minus each other method."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kdbench.report.plots import SEED_POINTS_UP_TO, color_of, method_order, new_figure, spread_offsets, wrapped
from kdbench.report.stats import MIN_SEEDS

#: Up to this many x positions a panel draws one bar per class; beyond, one filled step outline (one artist).
BARS_UP_TO = 30


def _symmetric_limit(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return 1.1 * max(1.0, float(np.abs(finite).max())) if finite.size else 1.0


def plot_per_class_delta(rows: pd.DataFrame, facts: dict, colors: dict[str, str], title: str,
                         baseline: str) -> Figure:
    """One panel per method: its per-class accuracy minus the baseline's (pp), bars above / below a zero line.

    ``rows``: method, position (x, from :func:`kdbench.report.deltas.class_positions`), delta, n_pairs, paired.
    ``facts``: xlabel, ticks (labels per position or None), per_position and group_edges [(position, group)],
    drawn as dashed separators labelled with the group. Panels share both axes (symmetric around 0).
    """
    methods = method_order(rows["method"])
    columns = 1 if len(methods) <= 4 else 2
    rows_n = max(1, math.ceil(len(methods) / columns))
    positions = int(rows["position"].max()) + 1 if len(rows) else 1
    width = min(16.0, max(6.5, 3.0 + 0.09 * positions) * (1 if columns == 1 else 1.6))
    fig = new_figure(width, 1.7 * rows_n + 1.3)
    axes = fig.subplots(rows_n, columns, squeeze=False, sharex=True, sharey=True).ravel()
    limit = _symmetric_limit(rows["delta"].to_numpy(float))
    for ax, method in zip(axes, methods, strict=False):
        data = rows[rows["method"] == method].sort_values("position")
        x, delta = data["position"].to_numpy(float), data["delta"].to_numpy(float)
        color = color_of(colors, method)
        if positions <= BARS_UP_TO:
            ax.bar(x, delta, width=0.8, color=color, label=method, gid="delta_bars")
        else:
            ax.fill_between(x, 0, delta, step="mid", color=color, alpha=0.85, linewidth=0, label=method,
                            gid="delta_steps")
        ax.axhline(0, color="#333333", linewidth=0.8)
        for position, group in facts.get("group_edges", []):
            if position > 0:
                ax.axvline(position - 0.5, color="#888888", linestyle="--", linewidth=0.8)
            ax.text(position - 0.4, limit * 0.95, group, fontsize="x-small", color="#666666", va="top")
        pairs = int(data["n_pairs"].min()) if len(data) else 0
        paired = bool(data["paired"].all()) if len(data) else False
        how = f"n = {pairs} paired seed{'s' if pairs != 1 else ''}" if paired else "no shared seed: means"
        flag = " †" if paired and pairs < MIN_SEEDS else ""
        ax.set_title(f"{method} − {baseline} ({how}){flag}", fontsize="small", color=color)
        ax.set_ylim(-limit, limit)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    for k, ax in enumerate(axes[:len(methods)]):
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel("Δ acc. (pp)")
        if k + columns >= len(methods):  # the lowest panel of its column
            ax.set_xlabel(facts.get("xlabel", "class"))
            ax.tick_params(labelbottom=True)
    ticks = facts.get("ticks")
    if ticks is not None:
        axes[0].set_xticks(range(len(ticks)), ticks, fontsize="x-small")
    axes[0].set_xlim(-0.6, positions - 0.4)
    note = f"; † fewer than {MIN_SEEDS} paired seeds" if (rows["paired"] & (rows["n_pairs"] < MIN_SEEDS)).any() else ""
    fig.suptitle(wrapped([title, f"per-class test accuracy minus {baseline}'s, percentage points, mean over seeds "
                          f"paired with {baseline}'s (same seed){note}"], fig.get_figwidth() - 0.4), fontsize="medium")
    return fig


def plot_paired_differences(differences: pd.DataFrame, summary: pd.DataFrame, colors: dict[str, str], title: str,
                            reference: str, value: str = "top-1") -> Figure:
    """``reference`` minus each other method on the same seed: each seed a dot, mean with its 95% t-interval.

    ``differences``: method, difference (one row per matched seed); ``summary``: method, mean, ci_low, ci_high, n
    (NaN interval for n < 2). Methods on the x axis in legend order; a zero line; a cell of more than
    SEED_POINTS_UP_TO seeds shows a min–max bar instead of dots.
    """
    methods = method_order(summary["method"])
    fig = new_figure(max(5.5, 2.5 + 0.75 * len(methods)), 4.4)
    ax = fig.add_subplot()
    indexed = summary.set_index("method")
    by_method = {m: rows["difference"].to_numpy(float) for m, rows in differences.groupby("method")}
    collapsed = False
    for i, method in enumerate(methods):
        color = color_of(colors, method)
        values = np.sort(by_method.get(method, np.array([])))
        if len(values) > SEED_POINTS_UP_TO:
            collapsed = True
            ax.vlines([i - 0.15], [values.min()], [values.max()], colors=color, linewidth=2, alpha=0.45,
                      gid="seed_range")
        elif len(values):
            ax.scatter(i - 0.15 + spread_offsets(len(values), 0.18), values, s=14, color=color, alpha=0.6,
                       linewidths=0, zorder=2, gid="seeds")
        row = indexed.loc[method]
        low = row["mean"] - row["ci_low"] if pd.notna(row["ci_low"]) else 0.0
        high = row["ci_high"] - row["mean"] if pd.notna(row["ci_high"]) else 0.0
        ax.errorbar([i + 0.12], [row["mean"]], yerr=[[low], [high]], fmt="D", color=color, markersize=6,
                    capsize=4, elinewidth=1.6, label=method, zorder=3,
                    markerfacecolor="white" if row["n"] < MIN_SEEDS else color)
    ax.axhline(0, color="#333333", linewidth=1.0, zorder=1)
    ax.set_xticks(range(len(methods)), [f"{m}\n(n={int(indexed.loc[m, 'n'])})" for m in methods], fontsize="small")
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylabel(f"{reference} − method, {value} (pp)")
    ax.set_xlabel("compared method (n = seeds paired with " + reference + ")")
    ax.grid(axis="y", alpha=0.3)
    spread = np.concatenate([[0.0], differences["difference"].to_numpy(float), summary["ci_low"].to_numpy(float),
                             summary["ci_high"].to_numpy(float)])
    low, high = np.nanmin(spread), np.nanmax(spread)
    margin = max(0.5, 0.08 * (high - low))
    ax.set_ylim(low - margin, high + margin)  # zero always in view
    ax.text(0.01, 0.98, f"above 0: {reference} better", transform=ax.transAxes, va="top", fontsize="x-small",
            color="#555555")
    lines = [title, f"{reference} minus each method on the same seed; dots: seeds, diamond: mean with 95% "
             "t-interval"]
    if collapsed:
        lines.append(f"> {SEED_POINTS_UP_TO} seeds: thin bar = min–max of the seeds")
    if (summary["n"] < MIN_SEEDS).any():
        lines.append(f"hollow diamond: n < {MIN_SEEDS} paired seeds")
    ax.set_title(wrapped(lines, fig.get_figwidth() - 0.8), fontsize="medium")
    return fig
