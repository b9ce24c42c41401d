"""Many/medium/few groups on CIFAR-100-LT (kdbench's own long-tail construction) and the report's bad-input errors."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from report_support import dataset, make_record

from kdbench.cli import EXIT_BAD_INPUT, EXIT_OK, main
from kdbench.data.longtail import long_tailed_counts
from kdbench.report import ReportError, frames_from_records
from kdbench.report.build import build_tables
from kdbench.report.groups import RULES, check_splits, group_sizes
from kdbench.report.tables import head_tail_table
from kdbench.tracking.record import write_record


@pytest.mark.parametrize(("rho", "rule", "expected"), [
    (100, "default", {"many": 35, "medium": 35, "few": 30}),
    (100, "oltr", {"many": 35, "medium": 34, "few": 31}),
    (10, "default", {"many": 69, "medium": 31, "few": 0}),
    (10, "oltr", {"many": 70, "medium": 30, "few": 0}),
])
def test_cifar100_lt_group_sizes(rho, rule, expected):
    counts = long_tailed_counts(500, 100, rho, profile="exp")
    assert group_sizes(counts, RULES[rule]) == expected


def _lt_records(rho: float, seeds=(0, 1, 2), grid: str = "g"):
    counts = long_tailed_counts(500, 100, rho)
    correct = [10 - c // 10 for c in range(100)]  # accuracy falls with the class index, 100% .. 10%
    return [make_record("kd", seed, 60.0, grid=grid, data=dataset(rho=rho), correct=correct, total=[10] * 100,
                        class_counts=counts) for seed in seeds]


def test_empty_few_group_at_rho_10_is_nan_with_a_note():
    table = head_tail_table(frames_from_records(_lt_records(10)), RULES["default"])
    row = table.data.iloc[0]
    assert row["groups"] == "69/31/0"
    assert math.isnan(row["few"]) and math.isnan(row["gap"])  # never 0
    assert row["many"] == pytest.approx(sum(10 - c // 10 for c in range(69)) * 10 / 69)
    assert any("few group is empty" in note for note in table.notes)
    assert table.display.iloc[0]["few"] == "—"


def test_rule_that_leaves_one_group_is_an_error():
    with pytest.raises(ReportError, match="puts all 4 classes .* in the 'medium' group"):
        check_splits([50, 40, 30, 25], RULES["default"], "dataset 'x'")
    records = [make_record("kd", s, 50.0, data=dataset(rho=2), correct=[1] * 4, total=[2] * 4,
                           class_counts=[50, 40, 30, 25]) for s in range(3)]
    with pytest.raises(ReportError, match="at least two non-empty groups"):
        build_tables(frames_from_records(records), RULES["oltr"])


def test_no_finished_runs_and_mixed_grids_are_errors():
    failed = [make_record("kd", s, 0.0, status="failed") for s in range(2)]
    with pytest.raises(ReportError, match="no finished runs .*2 failed"):
        build_tables(frames_from_records(failed), RULES["default"])
    mixed = _lt_records(100, seeds=(0,), grid="g") + _lt_records(100, seeds=(1, 2), grid="h")
    with pytest.raises(ReportError, match=r"different grids are mixed: 'h' \(2 runs\), 'g' \(1 runs\)"):
        frames_from_records(mixed)


def _write(runs_root, records):
    for record in records:
        write_record(runs_root / record.run_id, record)


def test_cli_report_writes_every_format(tmp_path, capsys):
    runs = tmp_path / "g" / "runs"
    _write(runs, _lt_records(100) + [make_record("vanilla", s, 55.0, data=dataset(rho=100), correct=[5] * 100,
                                                   total=[10] * 100, class_counts=long_tailed_counts(500, 100, 100))
                                     for s in range(3)])
    assert main(["report", str(tmp_path / "g"), "--format", "all", "--group-rule", "oltr"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "35/34/31" in out and "group rule 'oltr'" in out and "Δ vs vanilla" in out
    written = sorted(p.name for p in (tmp_path / "g" / "report").iterdir())
    tables = ("main", "per_class", "head_tail", "cost")
    # `all` = every table format, the HTML page, the plots folder and the configuration and provenance (JSON)
    assert written == sorted([f"{t}.{e}" for t in tables for e in ("csv", "md", "tex")]
                             + ["report.md", "report.html", "plots", "provenance.json"])
    assert main(["report", str(runs), "--filter", "method=kd", "--format", "csv", "--out", str(tmp_path / "o")]) == 0
    assert pd.read_csv(tmp_path / "o" / "main.csv")["method"].tolist() == ["kd"]
    for group_by in ("method,imbalance_ratio", "dataset,method", "pair,method"):  # pooled cells still build
        assert main(["report", str(runs), "--group-by", group_by, "--format", "csv", "--out", str(tmp_path / "p")]) == 0
        assert pd.read_csv(tmp_path / "p" / "head_tail.csv")["groups"].str.contains("35/35/30").all()


@pytest.mark.parametrize(("records", "args", "message"), [
    ("empty", [], "neither a grid file"),
    ("failed", [], "no finished runs"),
    ("mixed", [], "different grids are mixed"),
    ("one_group", [], "puts all 4 classes"),
    ("ok", ["--filter", "colour=red"], "unknown column 'colour'"),
    ("ok", ["--filter", "method=crd"], "no runs of grid 'g' match --filter method=crd"),
    ("ok", ["--group-by", "dataset,pair"], "must include 'method'"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, records, args, message):
    runs = tmp_path / "g" / "runs"
    runs.mkdir(parents=True)
    chosen = {
        "failed": [make_record("kd", 0, 0.0, status="failed")],
        "mixed": _lt_records(100, seeds=(0,), grid="g") + _lt_records(100, seeds=(1,), grid="h"),
        "one_group": [make_record("kd", 0, 50.0, data=dataset(rho=2), correct=[1] * 4, total=[2] * 4,
                                  class_counts=[50, 40, 30, 25])],
        "ok": _lt_records(100, seeds=(0,)),
    }.get(records, [])
    _write(runs, chosen)
    assert main(["report", str(runs), *args]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err + captured.out


def test_two_grids_side_by_side(tmp_path, capsys):
    _write(tmp_path / "base" / "runs", [make_record("kd", s, 70.0 + s, grid="base") for s in range(3)]
           + [make_record("vanilla", s, 68.0 + s, grid="base") for s in range(3)])
    _write(tmp_path / "new" / "runs", [make_record("trg", s, 72.0 + s + (s == 2), grid="new") for s in range(3)]
           + [make_record("kd", s, 70.5 + s, grid="new") for s in range(3)])
    assert main(["report", str(tmp_path / "base"), str(tmp_path / "new"), "--format", "csv"]) == EXIT_OK
    main_csv = pd.read_csv(tmp_path / "base" / "report" / "vs-new" / "main.csv").set_index("method")
    assert set(main_csv.index) == {"vanilla", "kd", "kd [new]", "trg"}
    # trg (grid new) against kd of grid base on matched seeds: differences 2, 2, 3.
    assert main_csv.loc["trg", "delta_kd"] == pytest.approx(7.0 / 3) and main_csv.loc["trg", "delta_kd_n"] == 3
    _write(tmp_path / "other" / "runs", [make_record("kd", 0, 1.0, grid="other", data=dataset(name="cifar10"))])
    assert main(["report", str(tmp_path / "base"), str(tmp_path / "other")]) == EXIT_BAD_INPUT
    assert "share no (dataset, pair)" in capsys.readouterr().err
