"""Golden report: hand-written records, every number checked against arithmetic done by hand in this file.

Closed forms used instead of scipy: Student's t with 2 degrees of freedom has CDF 1/2 + t / (2 sqrt(2 + t²)),
so its two-sided p-value is 1 − |t| / sqrt(2 + t²) and its 0.975 quantile is a·sqrt(2 / (1 − a²)) with a = 0.95;
with 1 degree of freedom (Cauchy) p = 1 − (2/π)·atan|t| and the 0.975 quantile is tan(0.475 π).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd
import pytest
from report_support import dataset, make_record

import kdbench.report
from kdbench.report import frames_from_records
from kdbench.report.build import build_tables
from kdbench.report.groups import RULES
from kdbench.report.render import latex, markdown
from kdbench.report.tables import cost_table, head_tail_table, main_table, per_class_table

T2 = 0.95 * math.sqrt(2.0 / (1.0 - 0.95**2))  # t_{0.975, df=2} = 4.3027
T1 = math.tan(0.475 * math.pi)  # t_{0.975, df=1} = 12.706

TOP1 = {"vanilla": [70.0, 72.0, 71.0], "kd": [73.0, 74.0, 75.0], "dkd": [75.0, 78.0, 76.0], "rkd": [74.0, 77.0]}
KD_BEST_VAL = [72.0, 73.0, 74.0]


def p_df2(t: float) -> float:
    return 1.0 - abs(t) / math.sqrt(2.0 + t * t)


def p_df1(t: float) -> float:
    return 1.0 - 2.0 / math.pi * math.atan(abs(t))


@pytest.fixture
def golden_frames():
    records = [make_record("teacher", 0, 72.5, stage="teacher")]
    for method, values in TOP1.items():
        for seed, top1 in enumerate(values):
            best = KD_BEST_VAL[seed] if method == "kd" else None
            records.append(make_record(method, seed, top1, best_val=best, extra_params=500 if method == "rkd" else 0))
    records.append(make_record("kd", 3, 0.0, status="failed"))  # failed runs never enter a mean
    return frames_from_records(records)


def _published(method: str) -> float:
    path = Path(kdbench.report.__file__).parent / "reference" / "published_cifar100.csv"
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if (row["teacher"], row["student"], row["method"]) == ("resnet56", "resnet20", method):
                return float(row["top1"])
    raise KeyError(method)


def test_main_table_numbers(golden_frames):
    table = main_table(golden_frames)
    data = table.data.set_index("method")
    assert list(data.index) == ["teacher", "vanilla", "kd", "dkd", "rkd"]  # table order
    assert set(data["pair"]) == {"resnet56->resnet20"}  # vanilla (no teacher) and the teacher join the pair

    kd = data.loc["kd"]
    assert (kd["mean"], kd["std"], kd["n"]) == (pytest.approx(74.0), pytest.approx(1.0), 3)
    assert kd["ci_low"] == pytest.approx(74.0 - T2 / math.sqrt(3))
    assert kd["ci_high"] == pytest.approx(74.0 + T2 / math.sqrt(3))
    dkd = data.loc["dkd"]
    assert dkd["mean"] == pytest.approx(229.0 / 3) and dkd["std"] == pytest.approx(math.sqrt(7.0 / 3))
    rkd = data.loc["rkd"]  # two seeds: flagged, interval from the df=1 quantile
    assert (rkd["mean"], rkd["std"], rkd["n"]) == (pytest.approx(75.5), pytest.approx(math.sqrt(4.5)), 2)
    assert rkd["ci_high"] - rkd["mean"] == pytest.approx(T1 * math.sqrt(4.5) / math.sqrt(2))
    assert bool(rkd["few_seeds"]) and not bool(kd["few_seeds"]) and bool(data.loc["teacher", "few_seeds"])
    assert math.isnan(data.loc["teacher", "std"]) and math.isnan(data.loc["teacher", "ci_low"])

    # Paired differences on matched seeds, vs kd: vanilla [-3,-2,-4], dkd [2,4,1], rkd [1,3] (seeds 0, 1).
    assert data.loc["vanilla", "delta_kd"] == pytest.approx(-3.0)
    assert data.loc["vanilla", "p_kd"] == pytest.approx(p_df2(-3.0 * math.sqrt(3)))
    assert data.loc["dkd", "delta_kd"] == pytest.approx(7.0 / 3)
    assert data.loc["dkd", "p_kd"] == pytest.approx(1.0 - math.sqrt(7.0) / 3.0)  # t = sqrt(7)
    assert data.loc["rkd", "delta_kd"] == pytest.approx(2.0) and data.loc["rkd", "delta_kd_n"] == 2
    assert data.loc["rkd", "p_kd"] == pytest.approx(p_df1(2.0))
    # vs vanilla: kd [3,2,4] (t = 3√3), dkd [5,6,5] (t = 16), rkd [4,5] (t = 9, df = 1).
    assert data.loc["kd", "p_vanilla"] == pytest.approx(p_df2(3.0 * math.sqrt(3)))
    assert data.loc["dkd", "delta_vanilla"] == pytest.approx(16.0 / 3)
    assert data.loc["dkd", "p_vanilla"] == pytest.approx(p_df2(16.0))
    assert data.loc["rkd", "p_vanilla"] == pytest.approx(p_df1(9.0))
    assert math.isnan(data.loc["kd", "delta_kd"]) and data.loc["kd", "delta_kd_n"] == 0
    assert math.isnan(data.loc["teacher", "delta_kd"])  # the teacher is not a paired comparison

    assert data.loc["kd", "best_val_mean"] == pytest.approx(73.0) and data.loc["kd", "best_val_n"] == 3
    assert math.isnan(data.loc["dkd", "best_val_mean"])
    for method in ("teacher", "vanilla", "kd", "dkd", "rkd"):
        assert data.loc[method, "published_top1"] == pytest.approx(_published(method))
    assert data.loc["kd", "published_protocol"] == "last-epoch"
    assert data.loc["dkd", "published_protocol"] == "not stated"

    shown = table.display.set_index("method")
    assert shown.loc["kd", "top-1 (%)"] == "74.00 ± 1.00"
    assert shown.loc["rkd", "top-1 (%)"] == "75.50 ± 2.12 †"
    assert shown.loc["dkd", "Δ vs kd"] == f"+2.33 (p={1 - math.sqrt(7) / 3:.3f}, n=3)"
    assert shown.loc["kd", "published"] == "70.66 (last-epoch)"
    assert any("n < 3" in note for note in table.notes)


def test_balanced_grid_has_no_published_on_long_tail_and_no_head_tail_table(golden_frames):
    report = build_tables(golden_frames, RULES["default"])
    assert [t.name for t in report.tables] == ["main", "per_class", "cost"]
    assert "balanced" in report.skipped[0]
    lt = frames_from_records([make_record("kd", s, 50.0 + s, data=dataset(rho=100)) for s in range(3)])
    assert lt.runs["imbalance_ratio"].tolist() == [100.0] * 3 and set(lt.runs["lt_profile"]) == {"exp"}
    assert main_table(lt).data["published_top1"].isna().all()  # published CIFAR-100 numbers are balanced


def test_cost_table(golden_frames):
    data = cost_table(golden_frames).data.set_index("method")
    assert "teacher" not in data.index
    assert data.loc["rkd", "extra_params"] == 500 and data.loc["kd", "extra_params"] == 0
    # Epochs of 2 s and 4 s at 100 and 200 images/s: 3 s per epoch; (200 + 800) images / 6 s.
    assert data.loc["kd", "seconds_per_epoch"] == pytest.approx(3.0)
    assert data.loc["kd", "images_per_s"] == pytest.approx(1000.0 / 6.0)
    assert data.loc["kd", "peak_memory_mb"] == pytest.approx(1024.0)


COUNTS = [200, 100, 50, 20, 10, 5]
CORRECT = {0: [9, 8, 6, 5, 2, 1], 1: [10, 8, 6, 4, 3, 1]}  # out of 10 test images per class


@pytest.fixture
def long_tail_frames():
    data = dataset(rho=40)
    return frames_from_records([make_record("kd", seed, 55.0, data=data, correct=correct, total=[10] * 6,
                                            class_counts=COUNTS) for seed, correct in CORRECT.items()])


def test_head_tail_numbers_default_rule(long_tail_frames):
    table = head_tail_table(long_tail_frames, RULES["default"])
    row = table.data.iloc[0]
    # many = {200}, medium = {100, 50, 20}, few = {10, 5}; run 0: 90 / 63.33 / 15, run 1: 100 / 60 / 20.
    assert row["groups"] == "1/3/2" and row["n"] == 2
    assert row["many"] == pytest.approx(95.0) and row["many_std"] == pytest.approx(math.sqrt(50.0))
    assert row["medium"] == pytest.approx((190.0 / 3 + 60.0) / 2)
    assert row["few"] == pytest.approx(17.5) and row["worst"] == pytest.approx(10.0)
    assert row["gap"] == pytest.approx((75.0 + 80.0) / 2)
    assert "many = train count > 100, few = train count < 20" in table.notes[0]


def test_head_tail_numbers_oltr_rule(long_tail_frames):
    row = head_tail_table(long_tail_frames, RULES["oltr"]).data.iloc[0]
    # many = {200, 100}, medium = {50}, few = {20, 10, 5}; run 0: 85 / 60 / 26.67, run 1: 90 / 60 / 26.67.
    assert row["groups"] == "2/1/3"
    assert row["many"] == pytest.approx(87.5) and row["medium"] == pytest.approx(60.0)
    assert row["few"] == pytest.approx(80.0 / 3) and row["gap"] == pytest.approx(87.5 - 80.0 / 3)


def test_per_class_table_sorted_by_count(long_tail_frames):
    table = per_class_table(long_tail_frames)
    assert table.display["train_count"].tolist() == COUNTS
    assert table.display["kd"].tolist() == ["95.0", "80.0", "60.0", "45.0", "25.0", "10.0"]
    data = table.data.set_index("class")
    assert data.loc[3, "std"] == pytest.approx(math.sqrt(50.0)) and data.loc[3, "n"] == 2


def test_renderers_show_every_row(golden_frames):
    table = main_table(golden_frames)
    text = markdown(table)
    assert text.count("\n| ") == 1 + len(table.display)  # header + rows
    tex = latex(table)
    assert r"\toprule" in tex and r"\bottomrule" in tex and tex.count(r" \\") >= 1 + len(table.display)
    assert r"74.00 $\pm$ 1.00" in tex and "resnet56->resnet20" in tex


def test_csv_round_trip(golden_frames, tmp_path):
    from kdbench.report.render import write_table

    table = main_table(golden_frames)
    [path] = write_table(table, tmp_path, ("csv",))
    back = pd.read_csv(path)
    assert back["mean"].tolist() == pytest.approx(table.data["mean"].tolist())


def test_paired_t_degenerate_cases():
    from kdbench.report.stats import paired_t, t_interval

    p = paired_t([0.0, 2.0, 2.0, 1.0], [0.0, 0.0, float("nan"), 1.0], [3, 3, 1, 3])
    assert p[0] == 1.0 and p[1] == 0.0 and math.isnan(p[2])  # all-equal differences; a single pair
    assert p[3] == pytest.approx(p_df2(math.sqrt(3)))
    low, high = t_interval([5.0], [2.0], [3])
    assert (low[0], high[0]) == (pytest.approx(5.0 - T2 * 2 / math.sqrt(3)), pytest.approx(5.0 + T2 * 2 / math.sqrt(3)))


def test_t_quantiles_and_p_values_are_scipy_stats_bit_for_bit():
    """The report takes Student's t from scipy.special (a cheaper import): the very values of scipy.stats.t."""
    import numpy as np
    from scipy import stats

    from kdbench.report.stats import paired_t, t_interval

    rng = np.random.default_rng(0)
    n = rng.integers(1, 300, 2000).astype(float)
    mean, std = rng.normal(size=2000) * 3, rng.random(2000) * 2
    several = n >= 2
    quantile = np.full(n.shape, np.nan)
    quantile[several] = stats.t.ppf(0.975, n[several] - 1)
    low, high = t_interval(mean, std, n)
    assert np.array_equal(low, mean - quantile * std / np.sqrt(n), equal_nan=True)
    assert np.array_equal(high, mean + quantile * std / np.sqrt(n), equal_nan=True)
    expected = np.full(n.shape, np.nan)
    expected[several] = 2.0 * stats.t.sf(np.abs(mean / (std / np.sqrt(n)))[several], n[several] - 1)
    assert np.array_equal(paired_t(mean, std, n), expected, equal_nan=True)


def test_published_imagenet_numbers_stand_beside_ours():
    records = []
    for method, values in (("kd", [70.0, 71.0, 72.0]), ("dkd", [71.0, 72.0, 73.0])):
        for seed, top1 in enumerate(values):
            record = make_record(method, seed, top1, data=dataset(name="imagenet"))
            records.append(record.model_copy(update={"pair": "resnet34->resnet18", "arch": "resnet18"}))
    data = main_table(frames_from_records(records)).data.set_index("method")
    assert data.loc["kd", "published_top1"] == pytest.approx(71.03)  # DKD paper, via mdistiller's README
    assert data.loc["dkd", "published_top1"] == pytest.approx(71.70)
    assert set(data["published_protocol"]) == {"not stated"}


def test_best_test_epoch_stands_only_beside_published_numbers():
    records = []
    for method in ("kd", "kd(T=2)"):
        for seed, top1 in enumerate([73.0, 74.0, 75.0]):
            record = make_record(method, seed, top1, seconds=(2.0, 2.0, 2.0))
            peaked = [entry.model_copy(update={"test_top1": top1 + 2.0 + seed}) if entry.epoch == 2 else entry
                      for entry in record.history]  # epoch 2 beats the final epoch by 2, 3, 4 points
            records.append(record.model_copy(update={"history": peaked}))
    table = main_table(frames_from_records(records))
    data, shown = table.data.set_index("method"), table.display.set_index("method")
    assert data.loc["kd", "best_test_mean"] == pytest.approx(74.0 + 3.0)  # mean of 75, 77, 79
    assert data.loc["kd", "mean"] == pytest.approx(74.0)  # the result stays the final epoch
    column = "best test epoch (as published; selected on test)"
    assert shown.loc["kd", column] == "77.00" and shown.loc["kd", "published"] == "70.66 (last-epoch)"
    assert shown.loc["kd(T=2)", column] == "" and shown.loc["kd(T=2)", "published"] == ""  # no published number
    assert any("never a result" in note for note in table.notes)
