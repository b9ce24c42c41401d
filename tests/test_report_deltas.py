"""Difference plots, seed points and the teacher, from hand-written records with chosen numbers: per-class Δ vs
vanilla, TRG minus each method per seed, top-1 seed dots, the teacher in the per-class and group plots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from report_support import make_record
from scipy import stats

from kdbench.report.deltas import CLASS_BINS, class_positions, per_class_deltas, reference_label
from kdbench.report.figures import grid_plots
from kdbench.report.frames import frames_from_records
from kdbench.report.plots import SEED_POINTS_UP_TO, method_colors, plot_top1_ci

COUNTS = [10, 40, 20, 30]  # training images per class: by count, classes 1, 3, 2, 0
ORDER = [1, 3, 2, 0]
TOTAL = [10, 10, 10, 10]
#: correct test images per class (of 10) for seeds 0, 1, 2, and top-1 per seed
CORRECT = {
    "vanilla": [[5, 5, 5, 5], [4, 6, 5, 5], [5, 5, 5, 5]],
    "kd": [[6, 7, 5, 4], [6, 6, 8, 5], [5, 5, 5, 5]],
    "trg": [[9, 8, 7, 6], [8, 8, 8, 8], [7, 7, 7, 7]],
}
TOP1 = {"vanilla": [70.0, 71.0, 69.0], "kd": [72.0, 72.0, 73.0], "trg": [75.0, 74.0, 76.0]}
TEACHER_CORRECT = [9, 10, 8, 9]


def _records(methods=("vanilla", "kd", "trg")):
    out = [make_record(m, seed, TOP1[m][seed], correct=CORRECT[m][seed], total=TOTAL, class_counts=COUNTS)
           for m in methods for seed in range(3)]
    out.append(make_record("vanilla", 0, 80.0, stage="teacher", correct=TEACHER_CORRECT, total=TOTAL,
                           class_counts=COUNTS))
    return out


@pytest.fixture(scope="module")
def plots():
    return {plot.kind: plot.figure for plot in grid_plots(frames_from_records(_records()))}


def _hand_delta(method: str) -> list[float]:
    """Mean over seeds of (method − vanilla) per class, in %, in the training-count order."""
    diff = (np.array(CORRECT[method]) - np.array(CORRECT["vanilla"])) * 100 / 10
    return diff.mean(axis=0)[ORDER].tolist()


def test_per_class_delta_bars_are_the_paired_differences_in_count_order(plots):
    figure = plots["per_class_delta"]
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["kd − vanilla (n = 3 paired seeds)",
                                                 "trg − vanilla (n = 3 paired seeds)"]
    for ax, method in zip(panels, ["kd", "trg"], strict=True):
        (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert [p.get_height() for p in bars.patches] == pytest.approx(_hand_delta(method))
        assert [p.get_x() + p.get_width() / 2 for p in bars.patches] == [0, 1, 2, 3]
        assert [line.get_ydata()[0] for line in ax.lines if line.get_linewidth() == 0.8][0] == 0  # the zero line
    assert [t.get_text() for t in panels[-1].get_xticklabels()] == ["1", "3", "2", "0"]
    # the group rule's boundary: class 0 (10 images) is 'few', the others 'medium'
    assert [t.get_text() for t in panels[0].texts] == ["medium", "few"]


def test_a_method_without_a_shared_seed_is_compared_by_means():
    classes = pd.DataFrame([
        *[{"method": "vanilla", "seed": s, "subset_seed": 0, "class": c, "train_count": 5, "accuracy": a}
          for s, accs in [(0, [50.0, 60.0]), (1, [70.0, 80.0])] for c, a in enumerate(accs)],
        *[{"method": "rkd", "seed": 7, "subset_seed": 0, "class": c, "train_count": 5, "accuracy": a}
          for c, a in enumerate([65.0, 75.0])],
    ])
    deltas = per_class_deltas(classes, "vanilla")
    assert deltas["delta"].tolist() == [5.0, 5.0]  # 65 − mean(50, 70), 75 − mean(60, 80)
    assert deltas["n_pairs"].tolist() == [0, 0] and not deltas["paired"].any()


def test_class_positions_keep_100_classes_and_bin_1000():
    for classes, positions in [(100, 100), (1000, CLASS_BINS)]:
        deltas = pd.DataFrame({"method": "kd", "class": range(classes), "train_count": range(classes, 0, -1),
                               "delta": np.arange(classes, dtype=float), "n_pairs": 3, "paired": True})
        rows, facts = class_positions(deltas)
        assert len(rows) == positions and facts["ticks"] is None
    # 1000 classes in 50 bins of 20: the first bin averages the 20 largest classes (deltas 0..19)
    assert rows["delta"].iloc[0] == pytest.approx(np.mean(np.arange(20)))
    assert facts["per_position"] == 20 and "bins of 20" in facts["xlabel"]


def test_trg_minus_each_method_per_seed_with_its_t_interval(plots):
    ax = plots["paired"].axes[0]
    dots = [sorted(c.get_offsets()[:, 1]) for c in ax.collections if c.get_gid() == "seeds"]  # in method order
    assert dots == [pytest.approx(sorted(np.subtract(TOP1["trg"], TOP1[m]))) for m in ("vanilla", "kd")]
    series = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert list(series) == ["vanilla", "kd"]
    differences = np.subtract(TOP1["trg"], TOP1["vanilla"])  # 5, 3, 7
    half = stats.t.ppf(0.975, 2) * differences.std(ddof=1) / np.sqrt(3)
    line, _, (bars,) = series["vanilla"].lines
    assert line.get_ydata()[0] == pytest.approx(differences.mean())
    (segment,) = bars.get_segments()
    assert [segment[0][1], segment[1][1]] == pytest.approx([differences.mean() - half, differences.mean() + half])
    assert any(line.get_ydata()[0] == 0 and line.get_xdata()[0] == 0 for line in ax.lines)  # zero line (axhline)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["vanilla\n(n=3)", "kd\n(n=3)"]
    assert ax.get_ylabel() == "trg − method, top-1 (pp)"


def test_no_paired_plot_without_trg_and_a_trg_label_is_the_reference():
    kinds = [plot.kind for plot in grid_plots(frames_from_records(_records(("vanilla", "kd"))))]
    assert "paired" not in kinds and "per_class_delta" in kinds
    runs = pd.DataFrame({"method": ["kd", "trg(k=4)", "trg(k=8)"], "method_name": ["kd", "trg", "trg"]})
    assert reference_label(runs) == "trg(k=4)"
    assert reference_label(runs.assign(method=["kd", "trg(k=4)", "trg"])) == "trg"


def test_top1_plot_shows_each_seed_beside_the_mean(plots):
    ax = plots["top1"].axes[0]
    seeds = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_gid() == "seeds"]
    assert [sorted(c.get_offsets()[:, 1]) for c in seeds] == [sorted(TOP1[m]) for m in ("vanilla", "kd", "trg")]
    # kd has two equal seeds (72, 72): drawn side by side, not on top of each other
    kd = seeds[1].get_offsets()
    assert len({round(x, 6) for x in kd[:, 0]}) == 3
    means = {c.get_label(): c.lines[0].get_xdata()[0] for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert max(kd[:, 0]) < means["kd"]  # dots left of the mean marker
    assert "dots: each seed" in ax.get_title().replace("\n", " ")


def test_more_seeds_than_points_collapse_to_a_range():
    n = SEED_POINTS_UP_TO + 1
    cells = pd.DataFrame([{"pair": "a->b", "method": "kd", "mean": 70.0, "ci_low": 69.0, "ci_high": 71.0, "n": n}])
    seeds = pd.DataFrame({"pair": "a->b", "method": "kd", "top1": np.linspace(60.0, 80.0, n)})
    ax = plot_top1_ci(cells, method_colors(["kd"]), "t", seeds=seeds).axes[0]
    assert not [c for c in ax.collections if c.get_gid() == "seeds"]
    (bar,) = [c for c in ax.collections if isinstance(c, LineCollection) and c.get_gid() == "seed_range"]
    (segment,) = bar.get_segments()
    assert [segment[0][1], segment[1][1]] == [60.0, 80.0]
    assert f"> {SEED_POINTS_UP_TO} seeds" in ax.get_title()


def test_the_teacher_is_in_the_per_class_and_group_plots(plots):
    per_class = plots["per_class"].axes[0]
    (teacher,) = [line for line in per_class.lines if line.get_label() == "teacher"]
    assert list(teacher.get_ydata()) == [10.0 * TEACHER_CORRECT[c] for c in ORDER]
    assert teacher.get_linestyle() == "--"
    groups = plots["groups"].axes[0]
    bars = {c.get_label(): c for c in groups.containers if isinstance(c, BarContainer)}
    assert list(bars) == ["vanilla", "kd", "trg", "teacher"]
    # many: no class (0, labelled empty); medium: classes 1, 3, 2 at 100, 90, 80 %; few: class 0 at 90 %
    assert [p.get_height() for p in bars["teacher"].patches] == pytest.approx([0.0, 90.0, 90.0])
