"""The kdbench command: exit codes, one-line errors without tracebacks, plan, status, report, listings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests_support import REPO


def _kdbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "kdbench", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=env, timeout=600)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"methods": ["vanila"]}, "methods[0].name: unknown method 'vanila' (did you mean 'vanilla'?)"),
        ({"pairs": [{"teacher": "cnn_larg", "student": "cnn_small"}]}, "did you mean 'cnn_large'"),
        ({"recipe": {"epochs": 0}}, "recipe.epochs = 0"),
        ({"datasets": [{"name": "synthetic", "long_tail": {"imbalance_ratio": 0.1}}]}, "imbalance_ratio = 0.1"),
        ({"datasets": [{"name": "cifar100", "root": "/no/such/folder"}]}, "/no/such/folder"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(tiny_grid_raw, tmp_path, change, expected):
    grid = tmp_path / "bad.yaml"
    grid.write_text(yaml.safe_dump({**tiny_grid_raw, **change}))
    result = _kdbench("run", str(grid))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert not (tmp_path / "results").exists(), "nothing may run or be written on bad input"


def test_unreadable_yaml_exits_2(tmp_path):
    grid = tmp_path / "broken.yaml"
    grid.write_text("datasets: [\n")
    result = _kdbench("run", str(grid))
    assert result.returncode == 2 and "unreadable YAML" in result.stderr and "Traceback" not in result.stderr


def test_methods_and_models_listings():
    methods = _kdbench("methods")
    assert methods.returncode == 0 and "kd: Hinton" in methods.stdout and "vanilla:" in methods.stdout
    assert "teacher taps: none" in methods.stdout
    models = _kdbench("models")
    assert models.returncode == 0
    for name in ("resnet8x4", "resnet32x4", "wrn_40_2", "MobileNetV2", "ShuffleV2", "mlp_1200x2", "cnn_small",
                 "vit_cifar_tiny"):
        assert name in models.stdout


@pytest.mark.slow
def test_dry_run_then_run_status_report(tiny_grid_raw, tmp_path):
    raw = {**tiny_grid_raw, "datasets": tiny_grid_raw["datasets"][:1], "seeds": [0, 1]}
    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(raw))
    dry = _kdbench("run", str(grid), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "teacher runs: 1 (0 done, 0 failed, 0 running, 0 interrupted, 1 new)" in dry.stdout
    assert "student runs: 4 (0 done" in dry.stdout
    assert "plan: 5 runs by stage × method × pair × dataset" in dry.stdout and "est. GPU-h" in dry.stdout
    assert not (Path(raw["output"]) / "tiny" / "runs").exists()

    run = _kdbench("run", str(grid))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "epoch 2/2" in run.stdout  # progress while it runs
    epoch_line = next(line for line in run.stdout.splitlines() if "epoch 2/2" in line)
    assert "| elapsed " in epoch_line and epoch_line.endswith("ETA 0:00")  # the run's last epoch
    assert "runs 5/5 done, elapsed " in run.stdout  # the grid's progress after each run
    assert "mean ± sample std" in run.stdout and "kd" in run.stdout and "MLflow:" in run.stdout
    assert "records: " in run.stdout

    status = _kdbench("status", str(grid))
    assert status.returncode == 0 and "student runs: 4 (4 done" in status.stdout
    again = _kdbench("run", str(grid))
    assert again.returncode == 0 and "ran 0 runs" in again.stdout and "5 already done" in again.stdout
    report = _kdbench("report", str(grid))
    assert report.returncode == 0 and "± " in report.stdout
    record = next((Path(raw["output"]) / "tiny" / "runs").glob("*/record.json"))
    assert json.loads(record.read_text())["status"] == "done"


@pytest.mark.slow
def test_failed_runs_give_exit_code_1(tiny_grid_raw, tmp_path):
    raw = {**tiny_grid_raw, "datasets": tiny_grid_raw["datasets"][:1], "seeds": [0], "methods": ["vanilla"]}
    raw["recipe"] = {**raw["recipe"], "lr": 1e30}
    grid = tmp_path / "diverges.yaml"
    grid.write_text(yaml.safe_dump(raw))
    result = _kdbench("run", str(grid))
    assert result.returncode == 1 and "failed:" in result.stdout and "NonFiniteLossError" in result.stdout


@pytest.mark.parametrize(("rank", "prints"), [("0", True), ("1", False)])
def test_only_rank_0_of_a_launched_grid_prints(tiny_grid_raw, tmp_path, monkeypatch, capsys, rank, prints):
    from kdbench.cli import main

    grid = tmp_path / "tiny.yaml"
    grid.write_text(yaml.safe_dump(tiny_grid_raw))
    for name, value in {"RANK": rank, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)  # what torchrun sets in each process
    assert main(["run", str(grid), "--dry-run"]) == 0
    assert ("teacher runs:" in capsys.readouterr().out) is prints
