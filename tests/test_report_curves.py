"""Training curves from hand-written records: loss terms unweighted by the run's own weights, mean over seeds with a
±1 std band, each seed's line, the validation curve and the learning-rate drops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from report_support import make_record

from kdbench.report.curves import lr_drops, unweighted_curves
from kdbench.report.figures import grid_plots
from kdbench.report.frames import frames_from_records

LR = [0.1, 0.1, 0.01, 0.001]  # drops after epochs 2 and 3
EPOCHS = len(LR)


def _record(method: str, seed: int, params: dict, train: dict[str, list[float]], val: list[float] | None = None):
    """A 4-epoch record of ``method`` whose hyper-parameters are ``params`` and whose logged terms are ``train``."""
    record = make_record(method, seed, 70.0 + seed, seconds=(1.0,) * EPOCHS, best_val=60.0 if val else None)
    record.spec["params"] = params
    for i, entry in enumerate(record.history):
        entry.train = {term: values[i] for term, values in train.items()}
        entry.train["total"] = sum(entry.train.values())
        entry.lr = LR[i]
        entry.val_top1 = val[i] if val else None
    return record


def _logged(seed: int, scale: float) -> list[float]:
    return [scale * (seed + 1) / epoch for epoch in range(1, EPOCHS + 1)]


@pytest.fixture(scope="module")
def records():
    """vanilla (ce_weight 1), kd (ce 0.25, kd 0.5), dkd (α 2, β 8, warm-up 2 epochs) × seeds 0, 1, 2; kd logs
    ce = 0.25·x, vanilla ce = x: unweighted they are equal. vanilla has a validation curve."""
    out = []
    for seed in (0, 1, 2):
        x = _logged(seed, 1.0)
        out.append(_record("vanilla", seed, {"ce_weight": 1.0, "label_smoothing": 0.0}, {"ce": x},
                           val=[50.0 + seed + e for e in range(EPOCHS)]))
        out.append(_record("kd", seed, {"ce_weight": 0.25, "kd_weight": 0.5, "temperature": 4.0},
                           {"ce": [0.25 * v for v in x], "kd": [0.5 * 3 * v for v in x]}))
        warm = [min(e / 2.0, 1.0) for e in range(1, EPOCHS + 1)]
        out.append(_record("dkd", seed, {"ce_weight": 1.0, "alpha": 2.0, "beta": 8.0, "temperature": 4.0,
                                         "warmup": 2.0},
                           {"ce": x, "tckd": [w * 2.0 * 5 * v for w, v in zip(warm, x, strict=True)],
                            "nckd": [w * 8.0 * 7 * v for w, v in zip(warm, x, strict=True)]}))
    return out


@pytest.fixture(scope="module")
def frames(records):
    return frames_from_records(records)


def _column(curves: pd.DataFrame, frames, label: str, term: str) -> np.ndarray:
    runs = frames.runs.loc[frames.runs["method"] == label, "run_id"]
    rows = curves[curves["run_id"].isin(runs)].sort_values(["seed", "epoch"])
    return rows[f"train_{term}"].to_numpy(float)


def test_unweighted_terms_are_the_logged_ones_divided_by_the_run_s_weights(frames):
    result = unweighted_curves(frames.curves, frames.runs)
    expected = np.concatenate([_logged(seed, 1.0) for seed in (0, 1, 2)])
    assert _column(result.frame, frames, "vanilla", "ce") == pytest.approx(expected)
    assert _column(result.frame, frames, "kd", "ce") == pytest.approx(expected)  # 0.25·x / ce_weight 0.25
    assert _column(result.frame, frames, "kd", "kd") == pytest.approx(3 * expected)  # 0.5·3x / kd_weight 0.5
    # DKD: divided by α (β) and by the warm-up factor min(epoch / 2, 1) of each epoch
    assert _column(result.frame, frames, "dkd", "tckd") == pytest.approx(5 * expected)
    assert _column(result.frame, frames, "dkd", "nckd") == pytest.approx(7 * expected)
    # the objective stays as the optimiser saw it
    assert _column(result.frame, frames, "kd", "total") == pytest.approx(_column(frames.curves, frames, "kd", "total"))
    assert result.as_logged == {}
    assert set(result.notes) == {"dkd"} and "warm-up" in result.notes["dkd"]


def test_a_term_of_weight_zero_is_left_out_and_an_unknown_method_stays_as_logged():
    zero = _record("kd", 0, {"ce_weight": 1.0, "kd_weight": 0.0, "temperature": 4.0},
                   {"ce": [1.0] * 4, "kd": [0.0] * 4})
    plugin = _record("mystery", 0, {"w": 3.0}, {"ce": [2.0] * 4, "glue": [6.0] * 4})
    frames = frames_from_records([zero, plugin])
    result = unweighted_curves(frames.curves, frames.runs)
    assert "kd" not in result.terms and "train_kd" not in result.frame  # its only run has weight 0: left out
    assert _column(result.frame, frames, "kd", "ce").tolist() == [1.0] * 4
    assert _column(result.frame, frames, "mystery", "glue").tolist() == [6.0] * 4
    assert result.as_logged == {"ce": {"mystery"}, "glue": {"mystery"}}


def test_lr_drops_are_the_epochs_after_which_the_rate_fell():
    curves = pd.DataFrame({"run_id": ["a"] * 4 + ["b"] * 3, "epoch": [1, 2, 3, 4, 1, 2, 3],
                           "lr": [0.1, 0.1, 0.01, 0.001, 0.1, 0.1, 0.1]})
    assert lr_drops(curves) == [2, 3]
    many = pd.DataFrame({"run_id": ["c"] * 20, "epoch": range(1, 21), "lr": np.linspace(1, 0.01, 20)})
    assert lr_drops(many) == []  # not a step schedule: nothing is marked


@pytest.fixture(scope="module")
def curves_figure(frames):
    (plot,) = [plot for plot in grid_plots(frames) if plot.kind == "curves"]
    return plot.figure


def _panel(figure, title: str):
    (ax,) = [ax for ax in figure.axes if ax.get_visible() and ax.get_title().startswith(title)]
    return ax


def _gid(ax, gid: str):
    found = [a for a in [*ax.lines, *ax.collections] if a.get_gid() == gid]
    assert len(found) == 1, (gid, [a.get_gid() for a in [*ax.lines, *ax.collections]])
    return found[0]


def test_the_curves_figure_draws_unweighted_means_with_a_band_and_every_seed(curves_figure):
    titles = [ax.get_title() for ax in curves_figure.axes if ax.get_visible()]
    assert titles == ["test top-1 (solid), validation top-1 (dashed)", "total (weighted sum: the objective)",
                      "ce, unweighted", "kd, unweighted", "nckd, unweighted", "tckd, unweighted"]
    ce = _panel(curves_figure, "ce, unweighted")
    per_seed = np.array([_logged(seed, 1.0) for seed in (0, 1, 2)])
    mean, std = per_seed.mean(axis=0), per_seed.std(axis=0, ddof=1)
    for method in ("vanilla", "kd", "dkd"):  # unweighted, kd's CE is vanilla's, not a quarter of it
        line = _gid(ce, f"mean:ce:{method}")
        assert list(line.get_xdata()) == [1, 2, 3, 4]
        assert line.get_ydata() == pytest.approx(mean)
    band = _gid(ce, "band:ce:kd")
    assert isinstance(band, PolyCollection)
    vertices = band.get_paths()[0].vertices
    at_first_epoch = vertices[np.isclose(vertices[:, 0], 1.0), 1]
    assert {round(v, 9) for v in at_first_epoch} == {round(mean[0] - std[0], 9), round(mean[0] + std[0], 9)}
    seeds = [line for line in ce.lines if line.get_gid() == "seed_lines"]  # one NaN-separated line per method
    assert len(seeds) == 3
    for line in seeds:  # kd's unweighted seeds are vanilla's: each run's four epochs, then a break
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        runs = np.split(y, np.flatnonzero(np.isnan(x)))
        drawn = sorted((list(run[~np.isnan(run)]) for run in runs), key=lambda v: v[0])  # runs in run-id order
        assert drawn == [pytest.approx(list(v)) for v in per_seed]
    assert "unweighted" in curves_figure._suptitle.get_text()
    assert "warm-up factor" in curves_figure._suptitle.get_text()


def test_the_curves_figure_has_the_validation_curve_and_the_lr_drops(curves_figure):
    accuracy = _panel(curves_figure, "test top-1")
    validation = _gid(accuracy, "mean:val_top1:vanilla")
    assert validation.get_linestyle() == "--"
    assert list(validation.get_ydata()) == pytest.approx([51.0 + e for e in range(EPOCHS)])  # mean of 50, 51, 52 + e
    assert not [a for a in accuracy.lines if a.get_gid() == "mean:val_top1:kd"]  # kd has no validation set
    for ax in [a for a in curves_figure.axes if a.get_visible()]:
        drops = [line.get_xdata()[0] for line in ax.lines if line.get_gid() == "lr_drop"]
        assert drops == [2, 3]
    legend = [t.get_text() for t in curves_figure.legends[0].get_texts()]
    assert legend == ["vanilla", "kd", "dkd", "LR drop after epoch 2, 3"]
