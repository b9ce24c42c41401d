"""The training-curves figure: accuracy and each loss term against epoch, mean over seeds with a ±1 std band."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from kdbench.report.plots import SEED_POINTS_UP_TO, color_of, legend_outside, method_order, new_figure, wrapped

ACCURACY = ("test_top1", "val_top1")
MILESTONE_COLOR = "#555555"


def _term_order(terms: set[str]) -> list[str]:
    return sorted(terms, key=lambda t: (t != "total", t != "ce", t))


def _seed_lines(ax: Axes, seeds: pd.DataFrame, color: str) -> None:
    """One thin line per run (rows sorted by run_id, epoch), drawn as a single NaN-separated Line2D: one path is
    much cheaper to render (PNG and PDF) than a collection of one path per run."""
    runs = seeds["run_id"].to_numpy()
    x, y = seeds["epoch"].to_numpy(float), seeds["value"].to_numpy(float)
    cuts = np.flatnonzero(runs[1:] != runs[:-1]) + 1
    ax.plot(np.insert(x, cuts, np.nan), np.insert(y, cuts, np.nan), color=color, linewidth=0.6, alpha=0.45,
            zorder=1, label="_nolegend_", gid="seed_lines")


def _draw_term(ax: Axes, summary: pd.DataFrame, seeds: pd.DataFrame | None, term: str, colors: dict[str, str],
               dashed: bool = False) -> None:
    rows = summary[summary["term"] == term]
    by_method = dict(tuple(seeds[seeds["term"] == term].groupby("method", sort=False))) if seeds is not None else {}
    for method in method_order(rows["method"]):
        data = rows[rows["method"] == method]
        color = color_of(colors, method)
        x, mean, std = data["epoch"].to_numpy(float), data["mean"].to_numpy(float), data["std"].to_numpy(float)
        ax.plot(x, mean, color=color, linewidth=1.6, linestyle="--" if dashed else "-",
                label="_nolegend_" if dashed else method, zorder=3,
                gid=f"mean:{term}:{method}")
        if np.isfinite(std).any():
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0, zorder=2,
                            gid=f"band:{term}:{method}")
        runs = by_method.get(method)
        if runs is not None and not dashed and runs["run_id"].nunique() <= SEED_POINTS_UP_TO:
            _seed_lines(ax, runs, color)


def plot_training_curves(summary: pd.DataFrame, colors: dict[str, str], title: str, *,
                         seeds: pd.DataFrame | None = None, milestones: list[int] | None = None,
                         term_titles: dict[str, str] | None = None, notes: list[str] | None = None) -> Figure:
    """Test (and validation) top-1 and each loss term against epoch, one panel each, one colour per method.

    ``summary``: one row per (method, term, epoch) with columns method, term, epoch, mean, std (sample std over
    seeds, NaN for one seed) — term "test_top1"/"val_top1" in %, the others loss terms. Each mean is a line with a
    ±1 std band; ``seeds`` (method, run_id, term, epoch, value; sorted by run_id, epoch) adds one thin line per
    run for methods of at most SEED_POINTS_UP_TO runs. Validation is dashed in the accuracy panel.
    ``milestones``: epochs after which the learning rate dropped (dotted vertical lines in every panel).
    ``term_titles``: panel title per loss term (e.g. "ce, unweighted"); ``notes``: lines under the title.
    """
    terms = _term_order(set(summary["term"]) - set(ACCURACY))
    panels = ["accuracy", *terms]
    columns = min(3, len(panels))
    rows_n = math.ceil(len(panels) / columns)
    fig = new_figure(3.8 * columns + 2.2, 3.0 * rows_n + 0.6 + 0.18 * len(notes or []))
    axes = fig.subplots(rows_n, columns, squeeze=False).ravel()
    has_val = (summary["term"] == "val_top1").any()
    for ax, panel in zip(axes, panels, strict=False):
        if panel == "accuracy":
            _draw_term(ax, summary, seeds, "test_top1", colors)
            if has_val:
                _draw_term(ax, summary, seeds, "val_top1", colors, dashed=True)
            ax.set_ylabel("top-1 (%)")
            ax.set_title("test top-1 (solid)" + (", validation top-1 (dashed)" if has_val else ""),
                         fontsize="medium")
        else:
            _draw_term(ax, summary, seeds, panel, colors)
            ax.set_ylabel("mean train loss")
            ax.set_title(wrapped([(term_titles or {}).get(panel, panel)], 3.6), fontsize="medium")
        for epoch in milestones or []:
            ax.axvline(epoch, color=MILESTONE_COLOR, linestyle=":", linewidth=1.0, zorder=0, gid="lr_drop")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if milestones:
        axes[0].plot([], [], color=MILESTONE_COLOR, linestyle=":", linewidth=1.0,
                     label=f"LR drop after epoch {', '.join(map(str, milestones))}")
    legend_outside(fig, axes[:len(panels)], summary["method"])
    shown = "; thin lines: each seed" if seeds is not None and len(seeds) else ""
    if "n" in summary:
        counts = summary.groupby("method")["n"].max()
        low, high = int(counts.min()), int(counts.max())
        shown += f" ({low}{'' if low == high else f'–{high}'} seed{'' if high == 1 else 's'} per method)"
    lines = [f"{title}: training curves, mean over seeds, band ±1 std (sample){shown}", *(notes or [])]
    fig.suptitle(wrapped(lines, fig.get_figwidth() - 0.4), fontsize="medium")
    return fig
