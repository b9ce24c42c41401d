"""The focus table: the method under study against each other method, by paired differences on matched seeds."""

from __future__ import annotations

import numpy as np
import pytest
from report_support import make_record
from scipy import stats

from kdbench.report.build import build_tables
from kdbench.report.errors import ReportError
from kdbench.report.focus import focus_differences, focus_method
from kdbench.report.frames import frames_from_records
from kdbench.report.groups import RULES

TOP1 = {"vanilla": [70.0, 71.0, 69.5], "kd": [72.0, 72.5, 71.0], "dkd": [73.0, 74.0, 74.5],
        "trg": [73.5, 73.0, 75.0]}


def _frames(methods=TOP1):
    records = [make_record(method, seed, top1) for method, values in methods.items()
               for seed, top1 in enumerate(values)]
    records.append(make_record("vanilla", 0, 75.0, stage="teacher"))
    return frames_from_records(records)


def test_each_method_against_trg_is_the_paired_difference_of_matched_seeds():
    data = focus_differences(_frames(), "trg").set_index("method")
    assert set(data.index) == {"vanilla", "kd", "dkd"}  # the teacher and trg itself are not rows
    for method in ("vanilla", "kd", "dkd"):
        differences = np.array(TOP1["trg"]) - np.array(TOP1[method])
        test = stats.ttest_rel(TOP1["trg"], TOP1[method])
        low, high = stats.t.interval(0.95, len(differences) - 1, loc=differences.mean(),
                                     scale=stats.sem(differences))
        row = data.loc[method]
        assert row["delta"] == pytest.approx(differences.mean())
        assert row["p_value"] == pytest.approx(test.pvalue)
        assert (row["delta_ci_low"], row["delta_ci_high"]) == (pytest.approx(low), pytest.approx(high))
        assert row["delta_n"] == 3 and row["mean"] == pytest.approx(np.mean(TOP1[method]))
        assert row["focus_mean"] == pytest.approx(np.mean(TOP1["trg"]))


def test_the_table_is_last_and_names_the_focus_only_when_the_grid_has_it():
    report = build_tables(_frames(), RULES["default"])
    assert report.tables[-1].name == "focus" and "Δ trg − method" in report.tables[-1].display.columns
    without = {k: v for k, v in TOP1.items() if k != "trg"}
    assert focus_method(_frames(without)) is None
    assert "focus" not in {t.name for t in build_tables(_frames(without), RULES["default"]).tables}
    kd_focus = build_tables(_frames(), RULES["default"], focus="kd").tables[-1]
    assert set(kd_focus.data["method"]) == {"vanilla", "dkd", "trg"}
    with pytest.raises(ReportError, match="--focus rrd: no finished student runs of 'rrd'"):
        build_tables(_frames(), RULES["default"], focus="rrd")
