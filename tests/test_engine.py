"""train_run for real on CPU: records, teacher handling, failures, and resume after a kill."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdbench.config import parse_grid
from kdbench.engine import RunJob, train_run
from kdbench.engine.checkpoint import CHECKPOINT_NAME, MODEL_NAME, load_checkpoint
from kdbench.grid import expand_grid
from kdbench.tracking import read_record

pytestmark = pytest.mark.slow


def _specs(raw: dict):
    return expand_grid(parse_grid(raw))


def _job(spec, runs_root: Path) -> RunJob:
    return RunJob(spec=spec, runs_root=runs_root, grid="tiny", device="cpu")


def test_teacher_then_student_records(tiny_grid_raw, tmp_path):
    specs = _specs(tiny_grid_raw)
    teacher = next(s for s in specs if s.stage == "teacher" and s.dataset.long_tail is None)
    student = next(s for s in specs if s.method == "kd" and s.teacher.run_id == teacher.run_id)
    runs = tmp_path / "runs"
    t_record = train_run(_job(teacher, runs))
    assert t_record.status == "done", t_record.traceback
    assert (runs / teacher.run_id / MODEL_NAME).is_file()
    assert not (runs / teacher.run_id / CHECKPOINT_NAME).exists()
    s_record = train_run(_job(student, runs))
    assert s_record.status == "done", s_record.traceback
    on_disk = json.loads((runs / student.run_id / "record.json").read_text())
    assert on_disk["status"] == "done"
    final = on_disk["final"]
    assert sum(final["per_class_total"]) == final["num_images"] == 4 * 8
    assert final["top1"] == pytest.approx(100 * sum(final["per_class_correct"]) / final["num_images"])
    assert 0 <= final["top1"] <= final["top5"] <= 100
    assert on_disk["teacher"]["run_id"] == teacher.run_id and on_disk["teacher"]["top1"] == t_record.final.top1
    assert [h["epoch"] for h in on_disk["history"]] == [1, 2]
    assert set(on_disk["history"][0]["train"]) >= {"ce", "kd", "total", "top1"}
    assert on_disk["extra_params"] == 0 and on_disk["student_params"] > 0
    assert on_disk["provenance"]["versions"]["torch"] == torch.__version__
    assert on_disk["class_counts"] == [24, 24, 24, 24]


def test_long_tailed_run_records_counts_and_best_val(tiny_grid_raw, tmp_path):
    spec = next(s for s in _specs(tiny_grid_raw) if s.stage == "teacher" and s.dataset.long_tail)
    record = train_run(_job(spec, tmp_path / "runs"))
    assert record.status == "done", record.traceback
    assert record.class_counts == [24, 15, 9, 6]  # floor(24 · 4^(-c/3))
    assert record.final_val is not None and record.final_val.per_class_total == [0, 2, 2, 2]  # class 0 discards none
    assert record.best_val is not None and 1 <= record.best_val.epoch <= 2


def test_student_refuses_a_teacher_whose_weights_changed(tiny_grid_raw, tmp_path):
    specs = _specs(tiny_grid_raw)
    teacher = next(s for s in specs if s.stage == "teacher")
    student = next(s for s in specs if s.teacher and s.teacher.run_id == teacher.run_id)
    runs = tmp_path / "runs"
    assert train_run(_job(teacher, runs)).status == "done"
    weights = runs / teacher.run_id / MODEL_NAME
    state = torch.load(weights, weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, weights)
    record = train_run(_job(student, runs))
    assert record.status == "failed" and "do not match the sha256" in record.reason


def test_student_without_finished_teacher_fails_clearly(tiny_grid_raw, tmp_path):
    student = next(s for s in _specs(tiny_grid_raw) if s.method == "kd")
    record = train_run(_job(student, tmp_path / "runs"))
    assert record.status == "failed" and "has not finished" in record.reason


def test_non_finite_loss_fails_the_run_with_reason(tiny_grid_raw, tmp_path):
    raw = copy.deepcopy(tiny_grid_raw)
    raw["recipe"]["lr"] = 1e30  # diverges at once
    spec = next(s for s in _specs(raw) if s.stage == "teacher")
    record = train_run(_job(spec, tmp_path / "runs"))
    assert record.status == "failed"
    assert "NonFiniteLossError" in record.reason and "epoch 1" in record.reason
    assert read_record(tmp_path / "runs" / spec.run_id).status == "failed"


def test_finished_record_is_never_overwritten(tiny_grid_raw, tmp_path):
    spec = next(s for s in _specs(tiny_grid_raw) if s.stage == "teacher")
    runs = tmp_path / "runs"
    first = train_run(_job(spec, runs))
    before = (runs / spec.run_id / "record.json").read_bytes()
    again = train_run(_job(spec, runs))
    assert again == first and (runs / spec.run_id / "record.json").read_bytes() == before


_KILLABLE = """
import sys, time, json
from pathlib import Path
from kdbench.config import parse_grid
from kdbench.grid import expand_grid
from kdbench.engine import RunJob, train_run
import kdbench.engine.loop as loop
import kdbench.engine.run as run

original = loop.train_epoch
def slow_epoch(parts, epoch):
    result = original(parts, epoch)
    time.sleep(0.4)  # leaves time to be killed between and inside epochs
    return result
run.train_epoch = slow_epoch
raw, run_id, runs_root = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
spec = next(s for s in expand_grid(parse_grid(raw)) if s.run_id == run_id)
train_run(RunJob(spec=spec, runs_root=runs_root, grid="tiny", device="cpu"))
"""


def _kill_after_epoch(raw: dict, spec, runs_root: Path, epoch: int) -> None:
    """Start the run in another process and SIGKILL it once its checkpoint holds ``epoch``."""
    process = subprocess.Popen([sys.executable, "-c", _KILLABLE, json.dumps(raw), spec.run_id, str(runs_root)])
    checkpoint = runs_root / spec.run_id / CHECKPOINT_NAME
    deadline = time.time() + 300
    seen = None
    while time.time() < deadline:
        # load only a checkpoint not seen yet: reading it every 50 ms took CPU from the run being waited for
        stamp = (checkpoint.stat().st_mtime_ns, checkpoint.stat().st_ino) if checkpoint.is_file() else None
        if stamp is not None and stamp != seen:
            seen = stamp
            saved = load_checkpoint(checkpoint)
            if saved is not None and saved["state"]["epoch"] >= epoch:
                break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert read_record(runs_root / spec.run_id) is None, "killed too late: the run had finished"


_TEACHERS: dict[str, Path] = {}


def _finished_teacher(spec, tmp_path_factory) -> Path:
    """A runs root holding ``spec``'s finished run, trained on first use (the run id pins everything it computes)."""
    if spec.run_id not in _TEACHERS:
        root = tmp_path_factory.mktemp("teacher")
        assert train_run(_job(spec, root)).status == "done"
        _TEACHERS[spec.run_id] = root
    return _TEACHERS[spec.run_id]


# dropout in the teacher run: resume must also restore the global RNG stream; crd_kd and rrd carry state
# (memory banks and Z, a queue and its pointer) that the checkpoint must restore
@pytest.mark.parametrize("method", ["teacher", "crd_kd", "rrd"])
def test_resume_after_kill_matches_uninterrupted_run(tiny_grid_raw, tmp_path, tmp_path_factory, method):
    raw = copy.deepcopy(tiny_grid_raw)
    raw["recipe"].update(epochs=5, milestones=[3, 4])
    raw["pairs"] = [{"teacher": {"arch": "mlp_800x2", "kwargs": {"dropout": 0.3}}, "student": "mlp_800x2"}]
    raw["methods"] = [{"name": "crd_kd", "params": {"nce_k": 8}}, {"name": "rrd", "params": {"queue_size": 16}}]
    raw["datasets"], raw["seeds"] = raw["datasets"][:1], [0]
    specs = _specs(raw)
    teacher = next(s for s in specs if s.stage == "teacher")
    spec = teacher if method == "teacher" else next(s for s in specs if s.method == method)
    roots = [tmp_path / "uninterrupted", tmp_path / "killed"]
    if spec is not teacher:  # the same finished teacher run in both roots, trained once per session
        trained = _finished_teacher(teacher, tmp_path_factory)
        for root in roots:
            shutil.copytree(trained / teacher.run_id, root / teacher.run_id)
    reference = train_run(_job(spec, roots[0]))
    assert reference.status == "done", reference.traceback

    _kill_after_epoch(raw, spec, roots[1], epoch=2)
    resumed = train_run(_job(spec, roots[1]))
    assert resumed.status == "done", resumed.traceback
    assert resumed.provenance["resumed_after_epochs"] and resumed.provenance["resumed_after_epochs"][0] >= 2
    assert resumed.final.model_dump() == reference.final.model_dump()
    assert [h.test_top1 for h in resumed.history] == [h.test_top1 for h in reference.history]
    assert [h.train for h in resumed.history] == [h.train for h in reference.history]
    assert resumed.model_sha256 == reference.model_sha256


def test_bf16_autocast_run_trains(tiny_grid_raw, tmp_path):
    raw = copy.deepcopy(tiny_grid_raw)
    raw["recipe"]["precision"] = "bf16"
    spec = next(s for s in _specs(raw) if s.stage == "teacher")
    record = train_run(_job(spec, tmp_path / "runs"))
    assert record.status == "done", record.traceback
    assert spec.recipe.precision == "bf16" and record.final.num_images == 32


def test_threads_follow_slurm_cpus_per_task(monkeypatch):
    from kdbench.engine.environment import configure_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    try:
        assert configure_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_atomic_writes_get_the_umask_mode_not_owner_only(tmp_path):
    from kdbench.tracking.atomic import FILE_MODE, atomic_write_json

    previous = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == FILE_MODE
    assert FILE_MODE & 0o044  # group and others can read results (0o644 under the usual umask 022)
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary file left behind
