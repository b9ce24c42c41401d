"""The demo grid end to end through the CLI, as `make demo` runs it, shortened to 2 seeds × 2 epochs: the same
datasets, models, methods, executor (`workers: auto`) and commands; then again (which must train nothing), then
`kdbench report --format all`, which must end with the TRG comparison table and the HTML report's path."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from kdbench.report import load_records, summary_table
from tests_support import REPO

pytestmark = pytest.mark.slow

DEMO_METHODS = {"vanilla", "kd", "dkd", "crd", "rkd", "mlkd", "trg"}


def _kdbench(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


@pytest.mark.timeout(3600)
def test_demo_grid_end_to_end(tmp_path):
    grid = yaml.safe_load((REPO / "experiments" / "demo.yaml").read_text())
    assert {m if isinstance(m, str) else m["name"] for m in grid["methods"]} == DEMO_METHODS
    assert grid["executor"]["workers"] == "auto"
    grid.update(seeds=[0, 1], recipe={**grid["recipe"], "epochs": 2, "milestones": [1]})
    grid_file = tmp_path / "demo.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    results = tmp_path / "results"
    started = time.perf_counter()
    first = _kdbench("run", str(grid_file), "--results", str(results))
    print(f"shortened demo took {time.perf_counter() - started:.0f} s")
    output = first.stdout + first.stderr  # pool workers log their epochs on stderr
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[30/30]" in output and "epoch 2/2" in output  # progress while it runs
    assert "mean ± sample std" in first.stdout and f"records: {results / 'demo' / 'runs'}" in first.stdout
    assert f"MLflow:  sqlite:///{results / 'mlflow.db'}" in first.stdout

    records = load_records(results / "demo" / "runs")
    assert len(records) == 30 and set(records["status"]) == {"done"}
    students = summary_table(records)
    students = students[students["stage"] == "student"]
    assert sorted(set(students["dataset"])) == ["digits", "digits-lt-exp-10"]
    assert set(students["method"]) == DEMO_METHODS and set(students["n"]) == {2}

    again = _kdbench("run", str(grid_file), "--results", str(results), timeout=600)
    assert again.returncode == 0 and "ran 0 runs" in again.stdout and "30 already done" in again.stdout

    # make demo's second step: the full report, every table in every format, ending with TRG against each method
    report = _kdbench("report", str(grid_file), "--results", str(results), "--format", "all", timeout=900)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    for title in ("Final-epoch top-1", "Per-class accuracy", "Many / medium / few", "Cost per method",
                  "trg against each method"):
        assert title in report.stdout
    focus = report.stdout[report.stdout.index("trg against each method"):]
    for method in DEMO_METHODS - {"trg"}:
        assert f"| {method} " in focus
    report_dir = results / "demo" / "report"
    assert report.stdout.rstrip().endswith(f"HTML report: {report_dir / 'report.html'}")
    written = {p.name for p in report_dir.iterdir()}
    expected = {"main.csv", "focus.csv", "head_tail.csv", "per_class.csv", "cost.csv", "report.md", "report.html"}
    assert expected <= written
    assert "group rule 'default'" in report.stdout and "dataset 'digits' is balanced" in report.stdout
    # every plot as PNG and PDF: top-1 ×2, ρ, groups (ρ=10 only), and per (dataset, pair) the curves, per-class,
    # per-class minus vanilla and TRG minus each method
    kinds = ["top1", "rho", "groups", "curves", "per_class", "per_class_delta", "paired"]
    plots = sorted(p.stem for p in (report_dir / "plots").glob("*.png"))
    assert len(plots) == 2 + 1 + 1 + 4 * 2 and {p.stem for p in (report_dir / "plots").glob("*.pdf")} == set(plots)
    assert all(any(p.startswith(kind) for p in plots) for kind in kinds), plots
