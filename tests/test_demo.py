"""The demo grid end to end through the CLI (as `make demo` runs it, on two worker processes), then again (which
must train nothing), then `kdbench report --format all`."""

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


@pytest.mark.timeout(3600)  # about 2 minutes on an idle 2-core machine; far more when it is shared
def test_demo_grid_end_to_end(tmp_path):
    # experiments/demo.yaml as it is, but with two single-threaded worker processes: the same runs and code path
    # (plus the process pool), in about a third of the time of one process whose two threads spin on tiny CNNs.
    grid = yaml.safe_load((REPO / "experiments" / "demo.yaml").read_text())
    grid["executor"] = {**grid.get("executor", {}), "workers": 2}
    grid_file = tmp_path / "demo.yaml"
    grid_file.write_text(yaml.safe_dump(grid))
    results = tmp_path / "results"
    command = [sys.executable, "-m", "kdbench", "run", str(grid_file), "--results", str(results)]
    started = time.perf_counter()
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3000, env=dict(os.environ))
    seconds = time.perf_counter() - started
    print(f"demo took {seconds:.0f} s")
    output = first.stdout + first.stderr  # pool workers log their epochs on stderr
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[14/14]" in output and "epoch 20/20" in output  # progress while it runs
    assert "mean ± sample std" in first.stdout and f"records: {results / 'demo' / 'runs'}" in first.stdout
    assert f"MLflow:  sqlite:///{results / 'mlflow.db'}" in first.stdout

    records = load_records(results / "demo" / "runs")
    assert len(records) == 14 and set(records["status"]) == {"done"}
    table = summary_table(records)
    students = table[table["stage"] == "student"]
    assert sorted(set(students["dataset"])) == ["digits", "digits-lt-exp-10"]
    assert set(students["method"]) == {"vanilla", "kd"} and set(students["n"]) == {3}
    balanced = students[students["dataset"] == "digits"].set_index("method")
    # distillation from a 98%-accurate teacher must help this 8k-parameter student on balanced digits
    assert balanced.loc["kd", "mean"] > balanced.loc["vanilla", "mean"]

    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert again.returncode == 0 and "ran 0 runs" in again.stdout and "14 already done" in again.stdout

    # make demo's second step: the full report, every table in every format
    report_command = [sys.executable, "-m", "kdbench", "report", str(grid_file), "--results", str(results),
                      "--format", "all"]
    report = subprocess.run(report_command, cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    for title in ("Final-epoch top-1", "Per-class accuracy", "Many / medium / few", "Cost per method"):
        assert title in report.stdout
    # digits keeps ~120 images per class (one group, left out); its exp rho=10 subset (116 .. 11) splits 1/6/3
    assert "group rule 'default'" in report.stdout and "dataset 'digits' is balanced" in report.stdout
    assert "| 1/6/3 " in report.stdout
    written = {p.name for p in (results / "demo" / "report").iterdir()}
    assert {"main.csv", "main.tex", "head_tail.csv", "per_class.csv", "cost.csv", "report.md"} <= written
    # --format all also writes the HTML page and every plot (PNG + PDF): top-1 x2, rho, groups (rho=10 only),
    # per-class x2, per-class minus vanilla x2, curves x2 (no trg in the demo: no paired-difference plot)
    assert "report.html" in written
    plots = sorted(p.name for p in (results / "demo" / "report" / "plots").glob("*.png"))
    assert len(plots) == 10 and len(list((results / "demo" / "report" / "plots").glob("*.pdf"))) == 10, plots
