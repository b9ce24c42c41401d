"""The Slurm tests' grids, submitted once per session before any other test (see conftest.slurm_submitted).

Their jobs mostly wait (sleeping steps, a time limit to reach), so submitting them first lets that waiting overlap
the rest of the suite; each test in test_slurm.py then checks one promise on its grid.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from kdbench.config import load_grid
from kdbench.grid.slurm_submit import submit_grid
from tests_support import REPO

PLUGIN = str(REPO / "tests" / "slurm_plugins.py")
SLEEP_ENV = "KDBENCH_TEST_SLEEP_PER_STEP"
DATA = {"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 24, "synthetic_test_per_class": 8}
CLUSTER = {"profile": "local", "array_parallelism": 4, "time": 10}
BASE = {
    "datasets": [DATA, {**DATA, "long_tail": {"profile": "exp", "imbalance_ratio": 4}, "val_per_class": 2}],
    "pairs": [{"teacher": "cnn_small", "student": "cnn_small"}],
    "methods": ["vanilla", "kd"],
    "seeds": [0, 1],
    "recipe": {"epochs": 2, "batch_size": 16, "lr": 0.05, "milestones": [1], "eval_batch_size": 64},
    "executor": {"kind": "slurm", "device": "cpu"},
    "cluster": CLUSTER,
}


def grid_for(tmp: Path, name: str, **changes):
    """Write the grid file tmp/<name>.yaml (the CLI tests use it) and load it."""
    raw = copy.deepcopy(BASE)
    raw.update(name=name, output=str(tmp / "results"), **changes)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_grid(path)


def _imagenet_lt_grid(tmp: Path):
    """`experiments/imagenet_lt.yaml`'s code path at toy size: image files through DataLoader workers in Slurm
    tasks, a teacher given by a RepDistiller-format weight file, a KD student."""
    import torch
    from imagefolder import write_image_folder, write_lt_splits

    from kdbench.models import build_model

    root = write_image_folder(tmp / "imagenet")
    splits = write_lt_splits(root, tmp / "imagenet_lt_splits")
    weights = tmp / "resnet8_teacher.pth"
    torch.manual_seed(0)
    torch.save({"model": build_model("resnet8", 4).state_dict(), "epoch": 240}, weights)
    return grid_for(tmp, "slurm_imagenet_lt", seeds=[0],
                    datasets=[{"name": "imagenet_lt", "root": str(root), "split_dir": str(splits), "image_size": 16}],
                    pairs=[{"teacher": {"arch": "resnet8", "weights": str(weights)}, "student": "resnet8"}],
                    methods=[{"name": "kd", "params": {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}}],
                    recipe={**BASE["recipe"], "epochs": 1, "batch_size": 8},
                    executor={**BASE["executor"], "loader_workers": 1})


def submit_all(tmp: Path) -> tuple[dict, dict]:
    """Submit the main grid, a grid with a failing run, one that must be requeued, one to kill and a 2-task run."""
    grids = {
        "main": grid_for(tmp, "slurm_main"),
        "fails": grid_for(tmp, "slurm_fails", plugins=[PLUGIN], methods=["explodes", "vanilla"], seeds=[0],
                          datasets=[DATA]),
        # 30 epochs × 6 steps × 1 s of sleep in the first attempt: past the signal of a 3-minute limit with a 30 s
        # delay (Slurm sends it up to a minute early: 90–150 s in, after the first epochs even on a loaded machine);
        # the requeued attempt does not sleep and resumes from its last epoch.
        "requeue": grid_for(tmp, "slurm_requeue", plugins=[PLUGIN], methods=["slow_ce"], seeds=[0], datasets=[DATA],
                            recipe={**BASE["recipe"], "epochs": 30, "milestones": [10]},
                            cluster={**CLUSTER, "time": 3, "signal_delay_s": 30, "max_requeues": 6}),
        # Sleeps 20 s per step in its first attempt (an hour in all): still running whenever the test comes to kill
        # it hard, however long the rest of the suite takes; the resubmitted attempt does not sleep.
        "killed": grid_for(tmp, "slurm_killed", plugins=[PLUGIN],
                           methods=[{"name": "slow_ce", "params": {"sleep_s": 20.0}}], seeds=[1], datasets=[DATA],
                           recipe={**BASE["recipe"], "epochs": 30, "milestones": [10]},
                           cluster={**CLUSTER, "time": 90}),
        # One run as two Slurm tasks (DDP over gloo): a student without BatchNorm, 15 images per batch (shards 8/7).
        "ddp": grid_for(tmp, "slurm_ddp", methods=["vanilla"], seeds=[0], datasets=[DATA],
                        pairs=[{"teacher": "cnn_small", "student": "mlp_800x2"}],
                        recipe={**BASE["recipe"], "batch_size": 15}, cluster={**CLUSTER, "tasks_per_node": 2}),
    }
    grids["imagenet_lt"] = _imagenet_lt_grid(tmp)
    os.environ[SLEEP_ENV] = "1"  # captured by sbatch with the submitting environment
    try:
        outcomes = {key: submit_grid(grid, f"# {key}") for key, grid in grids.items()}
    finally:
        del os.environ[SLEEP_ENV]
    return grids, outcomes
