"""Run integrity with real processes and real files: one writer per run, corrupt files survived, safe loading,
a full or read-only disk diagnosed, stale code detected. No mocks of the file system or of torch."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kdbench.cli import main
from kdbench.engine.checkpoint import CHECKPOINT_NAME, MODEL_NAME, PREVIOUS_CHECKPOINT_NAME, file_sha256
from kdbench.tracking.lock import LOCK_NAME, FileLock, lock_holder
from kdbench.tracking.record import BACKUP_NAME, RECORD_NAME, RunRecord
from tests_support import REPO

pytestmark = pytest.mark.slow

# 1 teacher and 2 students (vanilla, kd) on tiny synthetic data; 3 epochs each, a few seconds per run.
GRID = {
    "name": "integrity",
    "datasets": [{"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 24,
                  "synthetic_test_per_class": 8}],
    "pairs": [{"teacher": "cnn_small", "student": "cnn_small"}],
    "methods": ["vanilla", "kd"],
    "seeds": [0],
    "recipe": {"epochs": 3, "batch_size": 16, "lr": 0.05, "milestones": [2], "eval_batch_size": 64},
    "executor": {"kind": "local", "device": "cpu"},
    "tracking": {"mlflow": False},
}


def write_grid(folder: Path, results: Path, **changes) -> Path:
    """A grid file in ``folder`` whose results go to ``results``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump({**GRID, "output": str(results), **changes}))
    return path


def kdbench(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m kdbench ARGS` in the repository, output captured."""
    return subprocess.run([sys.executable, "-m", "kdbench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m kdbench ARGS` started in the background."""
    return subprocess.Popen([sys.executable, "-m", "kdbench", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def records(runs_root: Path) -> dict[str, RunRecord]:
    """run id → record of every run folder that has one."""
    return {path.parent.name: RunRecord.model_validate_json(path.read_text())
            for path in sorted(runs_root.glob(f"*/{RECORD_NAME}"))}


def numbers(record: RunRecord) -> tuple:
    """What must be identical between an interrupted-and-resumed run and an uninterrupted one."""
    assert record.final is not None
    return (record.final.per_class_correct, [round(e.test_top1, 6) for e in record.history],
            [round(e.train["total"], 5) for e in record.history])


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def status_here(grid: Path, capsys) -> str:
    """`kdbench status GRID` in this process (no interpreter start-up): what it printed."""
    capsys.readouterr()
    main(["status", str(grid)])
    return capsys.readouterr().out


def no_traceback(*outputs: str) -> None:
    for output in outputs:
        assert "Traceback" not in output, output[-3000:]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, RunRecord]]:
    """The grid trained once, uninterrupted: its grid file and records (run id → record)."""
    folder = tmp_path_factory.mktemp("reference")
    grid = write_grid(folder, folder / "results")
    result = kdbench("run", str(grid))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = records(folder / "results" / "integrity" / "runs")
    assert len(found) == 3 and {r.status for r in found.values()} == {"done"}
    return grid, found


def teacher_id(found: dict[str, RunRecord]) -> str:
    return next(run_id for run_id, record in found.items() if record.stage == "teacher")


def test_two_concurrent_runs_train_every_run_exactly_once(tmp_path, reference):
    _, expected = reference
    grid = write_grid(tmp_path, tmp_path / "results", seeds=[0, 1, 2])  # 1 teacher, 6 students
    runs_root = tmp_path / "results" / "integrity" / "runs"
    first, second = start("run", str(grid)), start("run", str(grid))  # both race for the teacher
    tid = teacher_id(expected)
    wait_for(lambda: (runs_root / tid / RECORD_NAME).is_file(), 300, "the teacher's record")
    third = start("run", str(grid))  # joins while the students are being trained
    outputs = [process.communicate(timeout=600) for process in (first, second, third)]
    codes = [process.returncode for process in (first, second, third)]
    assert set(codes) <= {0, 1}, (codes, outputs)
    no_traceback(*(text for pair in outputs for text in pair))
    assert any("is running elsewhere:" in out and "pid" in out for out, _ in outputs), outputs
    found = records(runs_root)
    if len(found) < 7:  # a process that saw the teacher busy left its students blocked: one more run finishes
        final = kdbench("run", str(grid))
        assert final.returncode == 0, final.stdout[-3000:]
        found = records(runs_root)
    assert len(found) == 7 and {r.status for r in found.values()} == {"done"}
    for run_id in found:  # each run's log holds exactly one first epoch: nobody trained it twice
        log = (runs_root / run_id / "log.txt").read_text()
        assert log.count("epoch 1/3") == 1, (run_id, log)
        assert not list((runs_root / run_id).glob("record.failed-*")), run_id
    teacher = found[tid]
    assert file_sha256(runs_root / tid / MODEL_NAME) == teacher.model_sha256
    assert numbers(teacher) == numbers(expected[tid])


def test_corrupt_records_are_named_set_aside_restored_from_backup_or_trained_again(tmp_path, reference, capsys):
    grid_file, expected = reference
    results = tmp_path / "results"
    shutil.copytree(grid_file.parent / "results", results)
    grid = write_grid(tmp_path, results)
    runs_root = results / "integrity" / "runs"
    students = [run_id for run_id, record in expected.items() if record.stage == "student"]
    truncated, invalid = runs_root / students[0] / RECORD_NAME, runs_root / students[1] / RECORD_NAME
    truncated.write_bytes(truncated.read_bytes()[: len(truncated.read_bytes()) // 2])  # its backup is intact
    invalid.write_text(json.dumps({"run_id": students[1], "status": "done"}))
    (invalid.parent / BACKUP_NAME).write_text(truncated.with_name(BACKUP_NAME).read_text())  # a foreign copy

    report = kdbench("report", str(grid), "--format", "csv")
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    no_traceback(report.stdout, report.stderr)
    for path in (truncated, invalid):
        lines = [line for line in report.stdout.splitlines() if str(path) in line and "unreadable" in line]
        assert len(lines) == 1 and "unreadable record" in lines[0] and "moved aside" in lines[0], report.stdout
        assert len(list(path.parent.glob(f"{RECORD_NAME}.corrupt-*"))) == 1
    assert f"{truncated} restored from its backup" in report.stdout  # nothing to train again
    assert not invalid.exists()  # its backup is another run's record: no restore

    status = status_here(grid, capsys)
    assert "student runs: 2 (1 done, 0 failed, 0 running, 0 interrupted, 1 new)" in status, status
    rerun = kdbench("run", str(grid))
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "ran 1 runs" in rerun.stdout
    found = records(runs_root)
    assert {run_id: numbers(r) for run_id, r in found.items()} == {k: numbers(r) for k, r in expected.items()}


def test_truncated_checkpoint_costs_one_epoch_and_the_result_is_unchanged(tmp_path, reference, capsys):
    _, expected = reference
    grid = write_grid(tmp_path, tmp_path / "results")
    runs_root = tmp_path / "results" / "integrity" / "runs"
    killed = kdbench("run", str(grid), env={"KDBENCH_FAILPOINT": "after-checkpoint:2"})
    assert killed.returncode == -signal.SIGKILL
    tid = teacher_id(expected)
    checkpoint = runs_root / tid / CHECKPOINT_NAME
    assert checkpoint.is_file() and (runs_root / tid / PREVIOUS_CHECKPOINT_NAME).is_file()
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])

    status = status_here(grid, capsys)
    assert "teacher runs: 1 (0 done, 0 failed, 0 running, 1 interrupted, 0 new)" in status, status
    resumed = kdbench("run", str(grid))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    no_traceback(resumed.stdout, resumed.stderr)
    named = [line for line in resumed.stdout.splitlines() if str(checkpoint) in line]
    assert len(named) == 1 and "unreadable checkpoint" in named[0] and "moved aside" in named[0], resumed.stdout
    assert "resuming after epoch 1 from the previous checkpoint" in resumed.stdout
    found = records(runs_root)
    assert found[tid].provenance["resumed_after_epochs"] == [1]
    assert {k: numbers(r) for k, r in found.items()} == {k: numbers(r) for k, r in expected.items()}
    assert not list((runs_root / tid).glob("checkpoint*.pt"))  # a finished run keeps no checkpoint
    assert not list((runs_root / tid).glob(".*.tmp"))


def test_no_usable_checkpoint_restarts_from_scratch_and_a_planted_pickle_never_runs(tmp_path, reference):
    _, expected = reference
    grid = write_grid(tmp_path, tmp_path / "results")
    tid = teacher_id(expected)
    run_dir = tmp_path / "results" / "integrity" / "runs" / tid
    run_dir.mkdir(parents=True)
    marker = tmp_path / "planted-code-ran"

    class Planted:  # unpickling calls os.system: what weights_only=False would execute
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    with (run_dir / CHECKPOINT_NAME).open("wb") as handle:
        pickle.dump({"state": {"epoch": 2}, "student": Planted()}, handle)
    torch.save({"state": {"epoch": 1}}, run_dir / PREVIOUS_CHECKPOINT_NAME)  # loads, but is no full checkpoint
    result = kdbench("run", str(grid))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    no_traceback(result.stdout, result.stderr)
    assert not marker.exists()
    assert "training from scratch" in result.stdout
    for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
        assert sum(str(run_dir / name) in line for line in result.stdout.splitlines()) == 1, result.stdout
        assert len(list(run_dir.glob(f"{name}.corrupt-*"))) == 1
    found = records(run_dir.parent)
    assert numbers(found[tid]) == numbers(expected[tid])


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_stops_the_grid_with_one_line_and_a_later_run_completes_it(tmp_path, reference):
    _, expected = reference
    small = tmp_path / "small"
    if os.geteuid() != 0 or not _mount_tmpfs(small, "16m"):
        if os.environ.get("CI"):
            pytest.fail("mounting a tmpfs needs root; CI runs as root")
        pytest.skip("mounting a tmpfs needs root")
    try:
        results = small / "results"
        grid = write_grid(tmp_path / "grid", results)
        runs_root = results / "integrity" / "runs"
        process = start("run", str(grid))
        tid = teacher_id(expected)
        wait_for(lambda: (runs_root / tid / RECORD_NAME).is_file(), 300, "the teacher's record")
        with (small / "filler").open("wb") as filler:  # fill the disk while the first student trains
            try:
                while True:
                    filler.write(b"\0" * (1 << 16))
                    filler.flush()
            except OSError:
                pass
        out, err = process.communicate(timeout=300)
        assert process.returncode == 1, out[-3000:] + err[-3000:]
        no_traceback(out, err)
        lines = [line for line in err.splitlines() if "ENOSPC" in line]
        assert len(lines) == 1 and "no space left on device" in lines[0] and str(runs_root) in lines[0], err
        found = records(runs_root)
        assert set(found) == {tid}  # the queue was not consumed and nobody's failure was recorded
        started = [p for p in runs_root.iterdir() if p.is_dir() and p.name != ".index"]  # .index: the grid index
        assert len(started) == 2  # the last student never started

        (small / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        readonly = kdbench("run", str(grid))
        assert readonly.returncode == 1 and "read-only file system (EROFS)" in readonly.stderr, readonly.stderr
        no_traceback(readonly.stdout, readonly.stderr)
        subprocess.run(["mount", "-o", "remount,rw", str(small)], check=True)

        completed = kdbench("run", str(grid))
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        found = records(runs_root)
        assert {k: numbers(r) for k, r in found.items()} == {k: numbers(r) for k, r in expected.items()}
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


PLUGIN = '''
import torch.nn.functional as F
from kdbench.loss import DistillLoss, Needs, register_method

@register_method("plug")
class Plug(DistillLoss):
    """A plugin method for the stale-code test."""
    paper = "Plugin, 2026"
    needs = Needs(teacher_taps=())
    defaults = {"ce_weight": 1.0}
    def forward(self, student, teacher, batch, progress):
        return {"ce": self.hparams["ce_weight"] * F.cross_entropy(student["logits"], batch["target"])}
'''


def test_editing_a_plugin_marks_its_done_runs_stale_and_rerun_stale_retrains_exactly_those(tmp_path, capsys):
    plugin = tmp_path / "plug.py"
    plugin.write_text(PLUGIN)
    grid = write_grid(tmp_path, tmp_path / "results", methods=["plug", "kd"], plugins=["plug.py"],
                      recipe={**GRID["recipe"], "epochs": 1})
    first = kdbench("run", str(grid))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    plugin.write_text(PLUGIN.replace("* F.cross_entropy", "* 1.0 * F.cross_entropy"))

    status = status_here(grid, capsys)  # imports the edited plugin here; the hash is of the file on disk anyway
    assert "student runs: 2 (2 done (1 stale)" in status, status
    assert sum(line.strip().startswith("stale ") and "method code changed" in line
               for line in status.splitlines()) == 1, status
    again = kdbench("run", str(grid))
    warning = "1 done runs of 'plug' were trained by other code (method code changed); --rerun stale retrains them"
    assert again.returncode == 0 and again.stdout.count(warning) == 1 and "ran 0 runs" in again.stdout, again.stdout
    report = kdbench("report", str(grid), "--format", "csv")
    assert "stale: 1 done runs of 'plug'" in report.stdout, report.stdout

    retrained = kdbench("run", str(grid), "--rerun", "stale")
    assert retrained.returncode == 0 and "ran 1 runs" in retrained.stdout, retrained.stdout
    runs_root = tmp_path / "results" / "integrity" / "runs"
    archived = list(runs_root.glob("*/record.stale-*.json"))
    assert len(archived) == 1 and json.loads(archived[0].read_text())["method"] == "plug"
    assert "stale" not in status_here(grid, capsys)


def test_status_tells_running_from_interrupted(tmp_path, capsys):
    grid = write_grid(tmp_path, tmp_path / "results", methods=["vanilla"], recipe={**GRID["recipe"], "epochs": 400})
    process = start("run", str(grid))
    runs_root = tmp_path / "results" / "integrity" / "runs"
    try:
        wait_for(lambda: any(runs_root.glob(f"*/{CHECKPOINT_NAME}")), 300, "the first checkpoint")
        status = status_here(grid, capsys)
        assert "student runs: 1 (0 done, 0 failed, 1 running, 0 interrupted, 0 new)" in status, status
        assert f"pid {process.pid}, since" in status
    finally:
        process.kill()
        process.wait()
    status = status_here(grid, capsys)
    assert "student runs: 1 (0 done, 0 failed, 0 running, 1 interrupted, 0 new)" in status, status


def test_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    path = tmp_path / LOCK_NAME
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from kdbench.tracking.lock import FileLock; "
                               f"assert FileLock({str(path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        found = lock_holder(path)
        assert found is not None and found.pid == holder.pid
        assert not FileLock(path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(path) is None  # the kernel released it with the process: no stale lock
    mine, other = FileLock(path), FileLock(path)
    assert mine.acquire() and not other.acquire()  # two opens in one process exclude each other too
    mine.release()
    assert other.acquire()
    other.release()


def test_no_torch_load_outside_weights_only():
    offenders = [f"{path}:{number}" for folder in ("kdbench", "methods") for path in (REPO / folder).rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if "torch.load(" in line and "weights_only=True" not in line]
    assert not offenders, offenders


def test_resource_error_names_the_file_even_when_a_later_failure_does_not():
    import errno

    from kdbench.tracking.resources import ResourceError, as_resource_error

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/results/run/checkpoint.pt")
        finally:  # e.g. a log handler flushing while the first failure propagates
            raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as error:
        found = as_resource_error(error)
    assert isinstance(found, ResourceError)
    assert str(found) == "no space left on device (ENOSPC): /results/run/checkpoint.pt"
    assert str(pickle.loads(pickle.dumps(found))) == str(found)  # crosses the worker pool intact
    assert as_resource_error(RuntimeError("a bug")) is None
    read_only = as_resource_error(OSError(errno.EROFS, "Read-only file system", "/r"))
    assert str(read_only) == "read-only file system (EROFS): /r"
