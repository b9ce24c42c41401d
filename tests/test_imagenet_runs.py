"""End to end on a tiny ImageNet-LT: a teacher from a RepDistiller-format weight file, a KD student streamed through
DataLoader workers, killed in the middle of an epoch and resumed to exactly the uninterrupted result."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from imagefolder import write_image_folder, write_lt_splits

from kdbench.cli import main
from kdbench.config import load_grid
from kdbench.grid.preflight import preflight_problems
from kdbench.models import build_model
from kdbench.tracking import read_record
from tests_support import REPO


def _kdbench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "kdbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def lt_grid(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(grid file, teacher weight file, grid mapping): resnet8 teacher given by weights, a kd student, 2 epochs."""
    base = tmp_path_factory.mktemp("lt_runs")
    root = write_image_folder(base / "root")
    splits = write_lt_splits(root, base / "splits")
    torch.manual_seed(0)
    teacher = build_model("resnet8", 4)
    weights = base / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": teacher.state_dict(), "accuracy": 0.0}, weights)  # RepDistiller's layout
    raw = {
        "name": "lt_runs",
        "datasets": [{"name": "imagenet_lt", "root": str(root), "split_dir": str(splits), "image_size": 16}],
        "pairs": [{"teacher": {"arch": "resnet8", "weights": str(weights),
                               "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()},
                   "student": "resnet8"}],
        "methods": [{"name": "kd", "params": {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}}],
        "seeds": [0],
        "recipe": {"epochs": 2, "batch_size": 8, "milestones": [1], "eval_batch_size": 8, "lr_scaling": "linear",
                   "lr_reference_batch": 16},
        "executor": {"kind": "local", "device": "cpu", "loader_workers": 1},
        "tracking": {"mlflow": False},
    }
    grid = base / "lt_runs.yaml"
    grid.write_text(yaml.safe_dump(raw))
    return grid, weights, raw


def _numbers(record) -> tuple:
    return ([(e.epoch, e.lr, e.train) for e in record.history], record.final.top1, record.final.loss,
            record.final.per_class_correct)


@pytest.mark.slow
def test_teacher_from_weights_and_a_student_resumed_mid_epoch_equal_the_uninterrupted_run(lt_grid, tmp_path,
                                                                                          capsys):
    grid, weights, _ = lt_grid
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    killed = _kdbench("run", str(grid), "--results", str(cut), env={"KDBENCH_FAILPOINT": "mid-epoch:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    assert "imagenet_lt: 26 training images, 4 classes, 12 to 3 per class" in killed.stdout
    assert "teacher resnet8 imagenet_lt from weights (ckpt_epoch_240.pth) | evaluated: test" in killed.stdout
    assert main(["run", str(grid), "--results", str(whole)]) == 0  # in this process: no second interpreter start
    capsys.readouterr()
    assert main(["run", str(grid), "--results", str(cut)]) == 0
    resumed = capsys.readouterr().out
    assert "ran 1 runs" in resumed  # the student; the teacher was done

    records = {}
    for name, results in (("whole", whole), ("cut", cut)):
        runs = results / "lt_runs" / "runs"
        records[name] = {r.stage: r for r in (read_record(d) for d in runs.iterdir()) if r is not None}
    teacher, student = records["whole"]["teacher"], records["whole"]["student"]
    # the teacher stage only evaluated the given weights and kept them as its model
    assert teacher.history == [] and teacher.provenance["weights"]["source"] == str(weights)
    kept = torch.load(whole / "lt_runs" / "runs" / teacher.run_id / "model.pt", weights_only=True)
    given = torch.load(weights, weights_only=True)["model"]
    assert kept.keys() == given.keys() and all(torch.equal(kept[k], given[k]) for k in kept)
    assert student.teacher.sha256 == teacher.model_sha256 and student.teacher.top1 == teacher.final.top1
    assert student.history[0].lr == pytest.approx(0.05 * 8 / 16)  # lr_scaling: linear
    # killed in the middle of epoch 2 with a DataLoader worker running: resumed, and the same numbers exactly
    resumed_student = records["cut"]["student"]
    assert resumed_student.provenance["resumed_after_epochs"] == [1]
    assert _numbers(resumed_student) == _numbers(student)


def test_weight_file_problems_stop_the_grid_before_anything_runs(lt_grid, tmp_path, capsys):
    grid, weights, raw = lt_grid
    assert preflight_problems(load_grid(grid)) == []
    bad_sum = {**raw, "pairs": [{**raw["pairs"][0], "teacher": {**raw["pairs"][0]["teacher"], "sha256": "0" * 64}}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad_sum))
    [line] = preflight_problems(load_grid(tmp_path / "bad.yaml"))
    assert line.startswith(f"pairs[0].teacher.weights: {weights}: sha256 mismatch: expected 0000")
    wrong_arch = {**raw, "pairs": [{"teacher": {"arch": "resnet20", "weights": str(weights)}, "student": "resnet8"}]}
    (tmp_path / "arch.yaml").write_text(yaml.safe_dump(wrong_arch))
    [line] = preflight_problems(load_grid(tmp_path / "arch.yaml"))
    assert "keys do not fit" in line and "missing (first: 'layer1.1." in line and "resnet20" in line
    missing = {**raw, "pairs": [{"teacher": {"arch": "resnet8", "weights": "nowhere.pth"}, "student": "resnet8"}]}
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump(missing))
    assert preflight_problems(load_grid(tmp_path / "missing.yaml")) == [
        f"pairs[0].teacher.weights = '{tmp_path / 'nowhere.pth'}': no such file"]
    assert main(["run", str(tmp_path / "bad.yaml"), "--results", str(tmp_path / "r")]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err and not (tmp_path / "r").exists()
