"""Every plot renders from hand-built frames with the expected bars, lines, error bars, legend and colours."""

from __future__ import annotations

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from report_records import synthetic_records

from kdbench.report.figures import fix_layout, grid_colors, grid_plots, save_plot, slug
from kdbench.report.frames import frames_from_records
from kdbench.report.plots import (
    FIXED_COLORS,
    method_colors,
    method_order,
    plot_accuracy_vs_rho,
    plot_groups,
    plot_per_class,
    plot_top1_ci,
)
from kdbench.report.plots_curves import plot_training_curves

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
    hollow = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(hollow) == 1 and len(hollow[0].get_offsets()) == 1  # the hollow marker over the one n = 2 cell
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
    (steps,) = counts_ax.patches  # one step outline for all classes
    assert list(steps.get_data().values) == [50, 20, 10, 5]
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
            rows.append({"method": method, "epoch": epoch, "term": "test_top1", "mean": 50.0 + epoch, "std": 1.0})
            rows += [{"method": method, "epoch": epoch, "term": t, "mean": 1.0 / epoch, "std": 0.1} for t in terms]
    fig = plot_training_curves(pd.DataFrame(rows), COLORS, "grid: pair, digits",
                               term_titles={"ce": "ce, unweighted", "kd": "kd, unweighted"})
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["test top-1 (solid)", "total", "ce, unweighted", "kd, unweighted"]
    assert [len(ax.lines) for ax in visible] == [2, 2, 2, 1]  # only kd has a kd term
    assert visible[0].get_ylabel() == "top-1 (%)"
    assert _legend_labels(fig) == ["vanilla", "kd"]


def test_a_method_has_the_same_colour_in_every_figure():
    cells = _cells()
    top1 = _legend_colors(plot_top1_ci(cells, COLORS, "t"))
    rho_rows = cells.assign(rho=[1.0, 10.0] * 4).drop(columns="pair")
    rho = _legend_colors(plot_accuracy_vs_rho(rho_rows, COLORS, "t"))
    curves = pd.DataFrame([{"method": m, "epoch": 1, "term": "test_top1", "mean": 1.0, "std": np.nan} for m in METHODS])
    curve = _legend_colors(plot_training_curves(curves, COLORS, "t"))
    for method in METHODS:
        assert top1[method] == rho[method] == curve[method] == COLORS[method]


# --- the figures of a grid, from run records (kdbench.report.figures) ---------------------------------------------



@pytest.fixture(scope="module")
def lt_frames():
    """1 pair × {balanced, ρ=10, ρ=100} × {vanilla, kd, trg} × 3 seeds, 10 classes; the last run failed."""
    return frames_from_records(synthetic_records(rhos=(1.0, 10.0, 100.0), failed=1))


@pytest.fixture(scope="module")
def lt_plots(lt_frames):
    """Every plot of ``lt_frames`` (drawn once for the module)."""
    return list(grid_plots(lt_frames))


def test_a_grid_gets_each_kind_of_plot_per_dataset_and_pair(lt_plots):
    plots = lt_plots
    names = [plot.name for plot in plots]
    pair = "resnet56_to_resnet20"
    cell = ["per_class", "per_class_delta", "curves"]
    assert names == [
        "top1_cifar", "top1_cifar-lt-exp-10", "top1_cifar-lt-exp-100", f"rho_cifar_exp_{pair}",
        # the grid has trg: its paired differences come first; balanced: one group only, so no group bars
        f"paired_cifar_{pair}", *[f"{kind}_cifar_{pair}" for kind in cell],
        *[f"{kind}_cifar-lt-exp-{rho}_{pair}" for rho in (10, 100) for kind in ["paired", "groups", *cell]],
    ]
    by_name = {plot.name: plot.figure for plot in plots}
    # vanilla trains without a teacher (its record's pair is the student arch) and still sits in the pair's plots
    top1 = by_name["top1_cifar-lt-exp-100"].axes[0]
    series = [c for c in top1.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in series] == ["vanilla", "kd", "trg"]
    assert [len(c.lines[0].get_xdata()) for c in series] == [1, 1, 1]
    assert "hollow marker" in top1.get_title()  # the failed run leaves trg with 2 seeds at ρ=100
    assert [t.get_text() for t in by_name["top1_cifar"].legends[0].get_texts()][-1] == "teacher"
    rho = by_name[f"rho_cifar_exp_{pair}"].axes[0]
    assert [list(c.lines[0].get_xdata()) for c in rho.containers] == [[1.0, 10.0, 100.0]] * 3
    per_class = by_name[f"per_class_cifar-lt-exp-100_{pair}"]
    assert [line.get_label() for line in per_class.axes[0].lines] == ["vanilla", "kd", "trg", "teacher"]
    assert [len(line.get_xdata()) for line in per_class.axes[0].lines] == [10, 10, 10, 10]
    assert len(per_class.axes[1].patches[0].get_data().values) == 10
    groups = by_name[f"groups_cifar-lt-exp-10_{pair}"].axes[0]
    # ρ=10 on 10 classes (500 … 50 images): many > 100 and medium, no class below 20, so few is empty
    assert [t.get_text() for t in groups.get_xticklabels()] == ["many\n(7 classes)", "medium\n(3 classes)",
                                                                "few\n(empty)"]
    curves = by_name[f"curves_cifar_{pair}"]
    assert [ax.get_title() for ax in curves.axes if ax.get_visible()] == [
        "test top-1 (solid)", "total (weighted sum: the objective)", "ce, unweighted",
        "graph, as logged (no declared weight: trg)", "kd, unweighted"]


def test_grid_colours_are_the_same_in_every_figure(lt_frames, lt_plots):
    colors = grid_colors(lt_frames)
    for plot in lt_plots:
        for fig_legend in plot.figure.legends:
            for text, handle in zip(fig_legend.get_texts(), fig_legend.legend_handles, strict=True):
                method = text.get_text()
                if method in colors:
                    color = handle.get_color() if hasattr(handle, "get_color") else handle.get_facecolor()
                    assert mcolors.to_hex(color) == colors[method], (plot.name, method)


def test_save_plot_writes_png_and_pdf(tmp_path, lt_plots):
    plot = lt_plots[0]
    saved = save_plot(plot, tmp_path)
    assert saved.paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved.paths["pdf"].read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["top1_cifar.pdf", "top1_cifar.png"]


def test_slug_makes_file_names():
    assert slug("per_class", "cifar100-lt-exp-100", "resnet32x4->resnet8x4") == \
        "per_class_cifar100-lt-exp-100_resnet32x4_to_resnet8x4"
    assert slug("top1", "a b/c") == "top1_a_b_c"


def test_top1_plot_draws_the_teacher_of_each_known_pair_only():
    cells = _cells()
    teachers = pd.Series({"resnet56->resnet20": 75.0, "elsewhere": 90.0})
    ax = plot_top1_ci(cells, COLORS, "t", teachers).axes[0]
    (lines,) = [c for c in ax.collections if c.get_label() == "teacher"]
    (segment,) = lines.get_segments()
    assert segment[0][1] == segment[1][1] == 75.0 and segment[0][0] < 0 < segment[1][0]  # across the first pair
    unknown = plot_top1_ci(cells, COLORS, "t", pd.Series({"elsewhere": 90.0}))
    assert "teacher" not in _legend_labels(unknown)


def test_fix_layout_keeps_the_constrained_layout_for_every_format():
    def positions(fig):
        return [bound for ax in fig.axes for bound in ax.get_position().bounds]

    laid_out = plot_top1_ci(_cells(), COLORS, "grid: cifar100")
    laid_out.draw_without_rendering()  # constrained layout, as savefig would run it
    fixed = plot_top1_ci(_cells(), COLORS, "grid: cifar100")
    before = positions(fixed)
    fix_layout(fixed)
    assert positions(fixed) != pytest.approx(before)  # the layout did move the axes
    assert positions(fixed) == pytest.approx(positions(laid_out))
    fixed.draw_without_rendering()  # a later draw (another format) keeps them
    assert positions(fixed) == pytest.approx(positions(laid_out))
