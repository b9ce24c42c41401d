"""Stopping `kdbench run` with a process pool: real processes and real signals (Linux: reads /proc).

Ctrl-C or SIGTERM to the main process: exit 130 within 10 s, one line, no traceback, no worker left, no queued
run started, no temporary file left, and the same command then finishes the grid from the checkpoints.
kill -9 of the main process: its workers die too. stdout closed by its reader (`| head`): a quiet exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests_support import REPO

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads processes from /proc (Linux)")]

SEEDS = 5
WORKERS = 3
# Five runs on three workers (two where nothing resumes): the others wait in the queue. A run takes seconds (12
# short epochs, a checkpoint after each), so runs still train when the signal follows the first checkpoint.
GRID = {
    "name": "stop",
    "datasets": [{"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 8,
                  "synthetic_test_per_class": 4}],
    "pairs": [{"teacher": "cnn_small", "student": "cnn_small"}],
    "methods": ["vanilla"],
    "seeds": list(range(SEEDS)),
    "recipe": {"epochs": 12, "batch_size": 32, "lr": 0.05, "milestones": [8], "eval_batch_size": 64},
    "executor": {"kind": "local", "device": "cpu", "workers": WORKERS},
    "tracking": {"mlflow": False},
}
START_TIMEOUT_S = 300  # a loaded machine may take long to import torch in four processes: generous
STOP_LIMIT_S = 10  # what the issue asks: exit, and workers gone, within 10 s of the signal
RERUN_HINT = "re-run the same command to resume"


def _grid_file(tmp_path: Path, workers: int = WORKERS) -> Path:
    path = tmp_path / "stop.yaml"
    if not path.is_file():
        executor = {**GRID["executor"], "workers": workers}
        path.write_text(yaml.safe_dump({**GRID, "executor": executor, "output": str(tmp_path / "results")}))
    return path


def _runs_root(tmp_path: Path) -> Path:
    return tmp_path / "results" / "stop" / "runs"


def _run_folders(tmp_path: Path) -> set[str]:
    """The run folders started so far (the grid index's .index folder is none)."""
    return {path.name for path in _runs_root(tmp_path).iterdir() if not path.name.startswith(".")}


def _kdbench(*args: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdbench", *args], cwd=REPO, text=True, **popen)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"kdbench exited ({process.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of ``pid`` from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                children = [int(word) for word in task.read_text().split()]
            except OSError:
                continue
            found.extend(children)
            todo.extend(children)
    return found


def _alive(pid: int) -> bool:
    """Running or sleeping: not gone and not a zombie (a dead child its new parent has not reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _start_grid(tmp_path: Path, workers: int = WORKERS, **popen: object) -> tuple[subprocess.Popen, list[int]]:
    """Start `kdbench run` and wait until a run has written its first checkpoint; returns it and its processes."""
    process = _kdbench("run", str(_grid_file(tmp_path, workers)), **popen)
    runs = _runs_root(tmp_path)
    try:
        _wait_for(lambda: any(runs.glob("*/checkpoint.pt")), START_TIMEOUT_S, "a first checkpoint", process)
        pids = _descendants(process.pid)  # every worker starts before any job does
        assert len(pids) >= min(workers, SEEDS), pids  # the workers (and multiprocessing's resource tracker)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    return process, pids


def _temp_files(tmp_path: Path) -> list[Path]:
    return list(_runs_root(tmp_path).rglob(".*.tmp"))


def _records(tmp_path: Path) -> list[Path]:
    return list(_runs_root(tmp_path).glob("*/record.json"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_pool_at_once_and_the_grid_resumes(tmp_path, signum):
    process, workers = _start_grid(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = _run_folders(tmp_path)
    sent = time.monotonic()
    process.send_signal(signum)  # the main process only, as `kill -INT <pid>` (a terminal reaches every worker too)
    try:
        _, stderr = process.communicate(timeout=STOP_LIMIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"kdbench still running {STOP_LIMIT_S} s after {signum.name}") from None
    exited = time.monotonic() - sent
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert RERUN_HINT in stderr.strip().splitlines()[-1], stderr
    _wait_for(lambda: not any(_alive(pid) for pid in workers), max(0.1, STOP_LIMIT_S - exited), "the workers to end")

    assert _run_folders(tmp_path) == started  # no queued run started
    assert not _temp_files(tmp_path)
    assert len(_records(tmp_path)) < SEEDS, "the grid ended before the signal: nothing was stopped"
    if signum != signal.SIGINT:
        return  # resuming does not depend on the signal: checked once, after SIGINT (keeps the file short)

    again = _kdbench("run", str(_grid_file(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    records = [json.loads(path.read_text()) for path in _records(tmp_path)]
    assert len(records) == SEEDS and {record["status"] for record in records} == {"done"}
    assert any(record["provenance"]["resumed_after_epochs"] for record in records)  # from a checkpoint
    assert not list(_runs_root(tmp_path).glob("*/checkpoint.pt")) and not _temp_files(tmp_path)


def test_ctrl_c_in_a_terminal_reaches_every_process_and_none_prints_a_traceback(tmp_path):
    # A terminal sends SIGINT to its whole foreground process group: the main process and every worker at once.
    process, workers = _start_grid(tmp_path, 2, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    started = _run_folders(tmp_path)
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=STOP_LIMIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"kdbench still running {STOP_LIMIT_S} s after Ctrl-C") from None
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert RERUN_HINT in stderr.strip().splitlines()[-1], stderr
    remaining = max(0.1, STOP_LIMIT_S - (time.monotonic() - sent))
    _wait_for(lambda: not any(_alive(pid) for pid in workers), remaining, "the workers to end")
    assert _run_folders(tmp_path) == started
    assert not _temp_files(tmp_path)


def test_kill_9_of_the_main_process_ends_its_workers(tmp_path):
    process, workers = _start_grid(tmp_path, 2, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    _wait_for(lambda: not any(_alive(pid) for pid in workers), STOP_LIMIT_S, "the workers to die with their parent")
    assert not _temp_files(tmp_path)


def test_closed_stdout_ends_quietly(tmp_path):
    process = _kdbench("run", str(_grid_file(tmp_path, 2)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout.readline()  # `| head -1`: one line, then the reader is gone
        workers = _descendants(process.pid)
        process.stdout.close()
        _, stderr = process.communicate(timeout=START_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    _wait_for(lambda: not any(_alive(pid) for pid in workers), STOP_LIMIT_S, "the workers to end")

    status = _kdbench("status", str(_grid_file(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    status.stdout.close()  # nobody reads: the first write meets a closed pipe
    _, stderr = status.communicate(timeout=300)
    assert status.returncode == 141 and "Traceback" not in stderr, stderr


def test_an_interrupted_atomic_write_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path):
    from kdbench.tracking.atomic import atomic_write, remove_temp_files

    target = tmp_path / "checkpoint.pt"
    atomic_write(target, lambda handle: handle.write(b"epoch 1"))

    def interrupted(handle):
        handle.write(b"half of epoch 2")
        raise KeyboardInterrupt  # as WorkerInterrupted, raised by SIGTERM in the middle of torch.save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_bytes() == b"epoch 1" and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]

    left = tmp_path / ".checkpoint.pt.x1y2.tmp"  # what a SIGKILL in the middle of a write leaves
    left.write_bytes(b"partial")
    assert remove_temp_files(tmp_path) == [left] and target.is_file()
