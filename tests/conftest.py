"""Shared fixtures: a tiny synthetic grid that really trains on CPU in seconds."""

from __future__ import annotations

import copy
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

from kdbench.plugins import import_plugins
from kdbench.tracking.atomic import atomic_write_bytes
from kdbench.tracking.lock import FileLock
from tests_support import REPO  # noqa: E402

MNIST_RAW = REPO.parent / "shared" / "data" / "MNIST" / "raw"

TINY_GRID = {
    "name": "tiny",
    "datasets": [
        {"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 24, "synthetic_test_per_class": 8},
        {"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 24, "synthetic_test_per_class": 8,
         "long_tail": {"profile": "exp", "imbalance_ratio": 4}, "val_per_class": 2},
    ],
    "pairs": [{"teacher": "cnn_small", "student": "cnn_small"}],
    "methods": ["vanilla", "kd"],
    "seeds": [0, 1],
    "recipe": {"epochs": 2, "batch_size": 16, "lr": 0.05, "milestones": [1], "eval_batch_size": 64},
    "executor": {"kind": "local", "device": "cpu"},
}


@pytest.fixture
def tiny_grid_raw(tmp_path: Path) -> dict:
    """A grid of 2 datasets × 1 pair × {vanilla, kd} × 2 seeds on tiny synthetic data, results under tmp_path."""
    raw = copy.deepcopy(TINY_GRID)
    raw["output"] = str(tmp_path / "results")
    return raw


@pytest.fixture(autouse=True)
def _private_kdbench_cache(tmp_path_factory, monkeypatch):
    """Each test (and the kdbench processes it starts) gets its own empty kdbench.diskcache, never ~/.cache."""
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path_factory.mktemp("kdbench-cache")))


@pytest.fixture(scope="session")
def slurm_submitted(tmp_path_factory):
    """The Slurm tests' grids, submitted once per test session (tests/slurm_grids.py).

    Under pytest-xdist every worker is a session of its own: the first worker to get here submits into the folder
    all workers share and leaves the outcome there; the worker that runs tests/test_slurm.py reads it.
    """
    from slurm_grids import submit_all

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return submit_all(tmp_path_factory.mktemp("slurm"))
    shared = tmp_path_factory.getbasetemp().parent  # one folder per `pytest -n` session, beside each worker's
    outcome = shared / "slurm-submitted.pickle"
    lock = FileLock(shared / "slurm-submitted.lock")
    lock.acquire(wait=True)
    try:
        if not outcome.exists():
            folder = shared / "slurm"
            folder.mkdir()
            atomic_write_bytes(outcome, pickle.dumps(submit_all(folder)))
        grids, outcomes = pickle.loads(outcome.read_bytes())
    finally:
        lock.release()
    for grid in grids.values():  # their methods register in this process too, as loading the grids did in gw0's
        import_plugins(grid.plugins, REPO)
    return grids, outcomes


@pytest.fixture(scope="session", autouse=True)
def _slurm_grids_first(request):
    """Submit the Slurm grids before the first test when test_slurm.py runs: their jobs mostly wait (sleeps, a
    time limit), and that waiting then overlaps the rest of the suite instead of adding to it. Under pytest-xdist
    the first worker submits them."""
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
        return
    if any(item.path.name == "test_slurm.py" for item in request.session.items):
        request.getfixturevalue("slurm_submitted")


def pytest_sessionfinish(session, exitstatus):
    """Cancel the Slurm jobs this session submitted that are still queued or running (a failed Slurm test can
    leave one that sleeps for an hour): those whose output file lies under the session's temporary folder. Under
    pytest-xdist the controller does it, after every worker has finished."""
    if os.environ.get("PYTEST_XDIST_WORKER") or shutil.which("squeue") is None:
        return
    try:
        root = str(session.config._tmp_path_factory.getbasetemp())
        listing = subprocess.run(["squeue", "-h", "-r", "-O", "JobID:40,STDOUT:4096"], capture_output=True,
                                 text=True, timeout=60).stdout
        ours = [fields[0] for fields in map(str.split, listing.splitlines())
                if len(fields) == 2 and fields[1].startswith(root + os.sep)]
        if ours:
            subprocess.run(["scancel", *ours], capture_output=True, timeout=60)
    except (AttributeError, OSError, subprocess.SubprocessError):
        pass  # tidying up only: never a reason for the session to fail
