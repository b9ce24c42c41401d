"""Every plot renders from hand-built frames with the expected bars, lines, error bars, legend and colours."""

from __future__ import annotations

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from kdbench.report.plots import (
    FIXED_COLORS,
    method_colors,
    method_order,
    plot_accuracy_vs_rho,
    plot_groups,
    plot_per_class,
    plot_top1_ci,
    plot_training_curves,
)

METHODS = ["trg", "kd", "vanilla", "dkd"]
COLORS = method_colors(METHODS)


def _legend_labels(fig) -> list[str]:
    assert len(fig.legends) == 1, "one figure legend, outside the axes"
    return [text.get_text() for text in fig.legends[0].get_texts()]


def _legend_colors(fig) -> dict[str, str]:
    legend = fig.legends[0]
    handles = legend.legend_handles
    colors = {}
    for text, handle in zip(legend.get_texts(), handles, strict=True):
        color = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
        colors[text.get_text()] = mcolors.to_hex(color)
    return colors


def _cells() -> pd.DataFrame:
    rows = []
    for i, pair in enumerate(["resnet56->resnet20", "wrn_40_2->wrn_16_2"]):
        for j, method in enumerate(METHODS):
            mean = 70.0 + i + j
            n = 2 if (pair, method) == ("wrn_40_2->wrn_16_2", "dkd") else 3
            rows.append({"pair": pair, "method": method, "mean": mean, "ci_low": mean - 1.0, "ci_high": mean + 1.5,
                         "n": n})
    return pd.DataFrame(rows)


def test_method_colors_fix_the_baselines_and_sort_the_rest():
    colors = method_colors(["zeta", "kd", "alpha", "vanilla"])
    assert colors["vanilla"] == FIXED_COLORS["vanilla"] and colors["kd"] == FIXED_COLORS["kd"]
    # the same method keeps its colour whatever else the list holds, as long as the grid's method set is the same
    assert method_colors(["alpha", "zeta"])["alpha"] == colors["alpha"]
    assert len(set(colors.values())) == 4
    assert method_order(["zeta", "kd", "alpha", "vanilla"]) == ["vanilla", "kd", "alpha", "zeta"]


def test_top1_plot_has_one_errorbar_series_per_method_with_the_intervals():
    cells = _cells()
    fig = plot_top1_ci(cells, COLORS, "grid: cifar100")
    ax = fig.axes[0]
    series = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in series] == ["vanilla", "kd", "dkd", "trg"]
    for container in series:
        line, _, (bars,) = container.lines
        assert len(line.get_xdata()) == 2  # one point per pair
        segments = bars.get_segments()
        # the error bar spans exactly the 95% interval of the cell: [mean - 1, mean + 1.5]
        assert all(seg[1][1] - seg[0][1] == pytest.approx(2.5) for seg in segments)
        assert mcolors.to_hex(line.get_color()) == COLORS[container.get_label()]
    assert _legend_labels(fig) == ["vanilla", "kd", "dkd", "trg"]
    assert "hollow marker: n < 3" in ax.get_title()
    assert len(ax.collections) >= 1  # the hollow marker over the n = 2 cell
    assert ax.get_ylabel() == "final-epoch top-1 (%)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["resnet56→\nresnet20", "wrn_40_2→\nwrn_16_2"]


def test_per_class_plot_sorts_classes_by_training_count():
    counts = [5, 50, 20, 10]  # classes 1, 2, 3, 0 from the largest down
    rows = [{"method": m, "class": c, "train_count": counts[c], "accuracy": 10.0 * c + j}
            for j, m in enumerate(["kd", "vanilla"]) for c in range(4)]
    fig = plot_per_class(pd.DataFrame(rows), COLORS, "grid: pair, lt")
    ax, counts_ax = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3", "0"]
    assert [line.get_label() for line in ax.lines] == ["vanilla", "kd"]
    vanilla = ax.lines[0]
    assert list(vanilla.get_ydata()) == [11.0, 21.0, 31.0, 1.0]  # accuracy follows the count order
    assert [p.get_height() for p in counts_ax.patches] == [50, 20, 10, 5]
    assert _legend_labels(fig) == ["vanilla", "kd", "train count"]
    assert "%" in ax.get_ylabel() and "training images" in counts_ax.get_ylabel()


def test_group_plot_has_a_bar_per_method_and_group_and_marks_an_empty_group():
    rows = []
    for method in ["kd", "vanilla", "trg"]:
        for group, mean, n_classes in [("many", 80.0, 4), ("medium", 60.0, 6), ("few", np.nan, 0)]:
            rows.append({"method": method, "group": group, "mean": mean, "std": 2.0, "n_classes": n_classes})
    fig = plot_groups(pd.DataFrame(rows), COLORS, "grid: pair, lt-10", "rule 'default'")
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ["vanilla", "kd", "trg"]
    assert all(len(c.patches) == 3 for c in bars)
    assert [p.get_height() for p in bars[0].patches] == [80.0, 60.0, 0.0]
    assert mcolors.to_hex(bars[2].patches[0].get_facecolor()) == COLORS["trg"]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["many\n(4 classes)", "medium\n(6 classes)", "few\n(empty)"]
    assert any("no classes" in t.get_text() for t in ax.texts)
    assert _legend_labels(fig) == ["vanilla", "kd", "trg"]


def test_rho_plot_has_a_line_per_method_on_a_log_axis():
    rows = [{"method": m, "rho": rho, "mean": 90.0 - rho / 10 - j, "ci_low": 88.0 - rho / 10 - j,
             "ci_high": 91.0 - rho / 10 - j} for j, m in enumerate(["kd", "trg"]) for rho in [1.0, 10.0, 100.0]]
    fig = plot_accuracy_vs_rho(pd.DataFrame(rows), COLORS, "grid: pair, cifar100")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    series = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in series] == ["kd", "trg"]
    assert [list(c.lines[0].get_xdata()) for c in series] == [[1.0, 10.0, 100.0]] * 2
    assert ax.get_xticklabels()[0].get_text() == "1\n(balanced)"
    assert _legend_colors(fig) == {"kd": COLORS["kd"], "trg": COLORS["trg"]}


def test_training_curves_have_a_panel_per_term_and_a_line_per_method():
    rows = []
    for method, terms in [("vanilla", ["ce", "total"]), ("kd", ["ce", "kd", "total"])]:
        for epoch in (1, 2, 3):
            rows.append({"method": method, "epoch": epoch, "term": "test_top1", "value": 50.0 + epoch})
            rows += [{"method": method, "epoch": epoch, "term": t, "value": 1.0 / epoch} for t in terms]
    fig = plot_training_curves(pd.DataFrame(rows), COLORS, "grid: pair, digits")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["test accuracy", "loss term: total", "loss term: ce",
                                                  "loss term: kd"]
    assert [len(ax.lines) for ax in visible] == [2, 2, 2, 1]  # only kd has a kd term
    assert visible[0].get_ylabel() == "test top-1 (%)"
    assert _legend_labels(fig) == ["vanilla", "kd"]


def test_a_method_has_the_same_colour_in_every_figure():
    cells = _cells()
    top1 = _legend_colors(plot_top1_ci(cells, COLORS, "t"))
    rho_rows = cells.assign(rho=[1.0, 10.0] * 4).drop(columns="pair")
    rho = _legend_colors(plot_accuracy_vs_rho(rho_rows, COLORS, "t"))
    curves = pd.DataFrame([{"method": m, "epoch": 1, "term": "test_top1", "value": 1.0} for m in METHODS])
    curve = _legend_colors(plot_training_curves(curves, COLORS, "t"))
    for method in METHODS:
        assert top1[method] == rho[method] == curve[method] == COLORS[method]
