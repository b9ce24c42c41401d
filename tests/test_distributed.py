"""Multi-process runs: the sharding rule, launcher environments, and two real gloo processes against one."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import GLOBAL_BATCH, RankMarker, stateful_step

from kdbench.config import parse_grid
from kdbench.data import ImageSet, iterate_batches
from kdbench.data.batches import check_shardable, shard_bounds, training_batches
from kdbench.engine import RunJob, train_run
from kdbench.engine.distributed import (
    SLURM_PORT_BASE,
    SLURM_PORT_SPAN,
    DistributedSetupError,
    all_gather_rows,
    all_reduce_sum,
    average_gradients,
    dist_info_from_env,
    first_host,
    init_distributed,
)
from kdbench.grid import expand_grid
from kdbench.tracking import read_record
from tests_support import REPO

WORKER = Path(__file__).with_name("distributed_worker.py")


# --- the sharding rule -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_contiguous_balanced_and_cover_the_batch(world):
    for size in range(0, 23):
        bounds = [shard_bounds(size, rank, world) for rank in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == size
        assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:], strict=False))
        sizes = [stop - start for start, stop in bounds]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_bad_rank_and_too_small_global_batch_are_refused():
    with pytest.raises(ValueError, match="rank 2 is not in a world of size 2"):
        shard_bounds(8, 2, 2)
    with pytest.raises(ValueError, match=r"recipe.batch_size=3 .* 2 processes; it must be >= 4"):
        check_shardable(3, 2)
    check_shardable(4, 2)


def _images(count: int = 23, classes: int = 4) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 8, 8), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.arange(count) % classes)


@pytest.mark.parametrize(("views", "contrast_k"), [("single", 3), ("rotations4", None), ("weak_strong", None)])
@pytest.mark.parametrize("world", [2, 3])
def test_shards_of_all_ranks_are_the_one_process_batches(views, contrast_k, world):
    images = _images()
    args = dict(shuffle=True, seed=5, epoch=2, augmentation="crop_flip", mean=(0.5,) * 3, std=(0.25,) * 3,
                device="cpu", views=views, contrast_k=contrast_k)
    whole = list(iterate_batches(images, 8, **args))
    shards = [list(iterate_batches(images, 8, shard=(rank, world), **args)) for rank in range(world)]
    assert {len(batches) for batches in shards} == {len(whole)} == {training_batches(len(images), 8, world)}
    for step, batch in enumerate(whole):
        parts = [ranks[step] for ranks in shards]
        for key in ("target", "index", *(["contrast_index"] if contrast_k else [])):
            assert torch.equal(torch.cat([part[key] for part in parts]), batch[key])
        copies = batch["input"].shape[0] // batch["target"].shape[0]
        by_view = [part["input"].view(copies, -1, *part["input"].shape[1:]) for part in parts]
        assert torch.equal(torch.cat(by_view, dim=1).flatten(0, 1), batch["input"])


def test_last_global_batch_too_small_for_every_rank_is_dropped():
    images = _images(count=19)  # batches of 8, 8 and 3: 3 < 2·2 rows
    assert training_batches(19, 8, 1) == 3 and training_batches(19, 8, 2) == 2
    args = dict(shuffle=True, seed=0, epoch=1, augmentation="none", mean=(0.5,) * 3, std=(0.25,) * 3, device="cpu")
    assert len(list(iterate_batches(images, 8, shard=(1, 2), **args))) == 2
    assert len(list(iterate_batches(images, 8, **args))) == 3


# --- launcher environments ---------------------------------------------------------------------------------------


def test_torch_launcher_variables():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29500",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    info = dist_info_from_env(env)
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port, info.source) == (
        3, 4, 1, "node7", 29500, "torch")
    assert not info.is_main and info.distributed


def test_slurm_variables_give_rank_host_and_port_from_the_job_id():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
           "SLURM_JOB_NODELIST": "gpu[07-09,12],cpu1", "SLURM_STEP_NUM_TASKS": "8"}
    info = dist_info_from_env(env)
    assert (info.rank, info.world_size, info.local_rank, info.source) == (5, 8, 1, "slurm")
    assert info.master_port == SLURM_PORT_BASE + 123456 % SLURM_PORT_SPAN
    assert info.master_addr == "gpu07"
    explicit = dist_info_from_env(env | {"MASTER_ADDR": "head", "MASTER_PORT": "4000"})
    assert (explicit.master_addr, explicit.master_port) == ("head", 4000)


def test_one_process_needs_nothing():
    assert not dist_info_from_env({}).distributed
    assert not dist_info_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1",
                                   "SLURM_JOB_NODELIST": "x"}).distributed
    # an sbatch script (the batch step, not an srun step) has these too, and is one process
    assert not dist_info_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7",
                                   "SLURM_JOB_NODELIST": "x"}).distributed
    assert dist_info_from_env({"RANK": "0", "WORLD_SIZE": "1"}).is_main


def test_bad_environments_name_the_variable():
    with pytest.raises(DistributedSetupError, match="MASTER_ADDR, MASTER_PORT is not set"):
        dist_info_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(DistributedSetupError, match=r"SLURM_NTASKS='two' must be an integer"):
        dist_info_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "two", "SLURM_STEP_NUM_TASKS": "2"})
    with pytest.raises(DistributedSetupError, match="rank 2 is not in a world of size 2"):
        dist_info_from_env({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"})


@pytest.mark.parametrize(("nodelist", "host"), [("node1", "node1"), ("gpu[007-009]", "gpu007"),
                                                ("a[3,5-6],b[1-2]", "a3"), ("rack[2-3]-n[10-11]", "rack2-n10"),
                                                ("h-1,h-2", "h-1")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host
    if shutil.which("scontrol"):  # the real expander agrees where it can run without a cluster config
        done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if done.returncode == 0:
            assert done.stdout.split()[0] == host


def test_one_process_joins_no_group_and_the_helpers_return_their_input():
    info = init_distributed(torch.device("cpu"), env={})
    assert not info.distributed and info.is_main and not torch.distributed.is_initialized()
    rows = torch.arange(6.0).view(3, 2)
    assert all_gather_rows(rows) is rows and all_reduce_sum(rows) is rows
    layer = torch.nn.Linear(2, 1)
    layer(rows).sum().backward()
    before = layer.weight.grad.clone()
    average_gradients(layer.parameters())
    assert torch.equal(layer.weight.grad, before)


# --- two real processes (gloo) against one -----------------------------------------------------------------------

GRID = {
    "name": "ddp",
    "datasets": [{"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 24,
                  "synthetic_test_per_class": 10}],
    # the student has no BatchNorm: two shards of a batch then give exactly the batch's gradient (see below)
    "pairs": [{"teacher": "cnn_small", "student": "mlp_800x2"}],
    "methods": [{"name": "crd", "params": {"nce_k": 8, "feat_dim": 16}}],
    "seeds": [0],
    # an odd global batch: shards of 8 and 7 images, so the loss scaling by shard size matters
    "recipe": {"epochs": 2, "batch_size": 15, "lr": 0.02, "milestones": [1], "eval_batch_size": 64},
    "executor": {"kind": "local", "device": "cpu"},
    "tracking": {"mlflow": False},
}


def _free_slurm_port() -> int:
    """A free port the Slurm rule (base + job id mod span) can produce; returns the job id giving it."""
    for _ in range(200):
        port = random.randrange(SLURM_PORT_BASE, SLURM_PORT_BASE + SLURM_PORT_SPAN)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port - SLURM_PORT_BASE + 3 * SLURM_PORT_SPAN  # a job id of realistic size
    raise RuntimeError("no free port")


def _slurm_task_env(rank: int, job_id: int) -> dict[str, str]:
    """What srun gives each of 2 tasks on one node (no torch launcher variables)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SLURM_") and key not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT"}}
    return env | {"SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2",
                  "SLURM_LOCALID": str(rank), "SLURM_STEP_ID": "0",
                  "SLURM_JOB_ID": str(job_id), "SLURM_JOB_NODELIST": "localhost", "SLURM_CPUS_PER_TASK": "1",
                  "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])}


def _run_two_tasks(jobs: list[RunJob], tmp_path: Path, out: Path) -> int:
    """Train ``jobs`` in 2 Slurm-style tasks of one gloo group (distributed_worker.py); returns the job id used."""
    (tmp_path / "jobs.pkl").write_bytes(pickle.dumps(jobs))
    job_id = _free_slurm_port()
    tasks = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "jobs.pkl"), str(out)],
                              env=_slurm_task_env(rank, job_id), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in range(2)]
    outputs = [task.communicate(timeout=240)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], "\n".join(outputs)
    return job_id


class StopAfterFirstEpoch:
    """A run observer that interrupts the run once its first epoch is checkpointed (as a kill would)."""

    def on_start(self, run_id, run_name, spec, resumed_epoch) -> None:
        pass

    def on_epoch(self, entry) -> None:
        raise RuntimeError("interrupted after epoch 1 on purpose")

    def on_end(self, record) -> None:
        pass


def _assert_trains_like(one, other) -> None:
    """``other`` has ``one``'s per-epoch loss terms and final metrics within the tolerance explained below."""
    # Tolerance: the student has no BatchNorm, so the two ranks' shard losses, scaled by shard size and averaged,
    # give the global batch's gradient; the CRD banks, Z and contrast indices are the global batch's too. What
    # remains is float summation order (two half-batch sums + an all-reduce instead of one sum), ~1e-7 relative
    # per step; over 14 SGD steps that stays far below 1e-3 on the loss terms, and cannot move top-1 by more
    # than one of the 40 test images (a logit tie broken differently).
    for a, b in zip(one.history, other.history, strict=True):
        assert a.train.keys() == b.train.keys()
        for name in a.train:
            tolerance = 100 / 96 + 1e-9 if name == "top1" else 1e-4  # train top-1: one of 96 images
            assert b.train[name] == pytest.approx(a.train[name], rel=1e-3, abs=tolerance), name
    assert abs(other.final.top1 - one.final.top1) <= 100 / 40 + 1e-9
    assert other.final.per_class_total == one.final.per_class_total and other.final.num_images == 40
    assert other.final.loss == pytest.approx(one.final.loss, rel=1e-3)


@pytest.mark.slow
def test_two_gloo_processes_train_like_one(tmp_path):
    """2 Slurm-style tasks: one record, rank 0 alone observed, metrics and CRD/RRD state as one process's; a run
    interrupted in one process resumes on two from its checkpoint and ends as the uninterrupted run."""
    specs = expand_grid(parse_grid(GRID))
    teacher = next(s for s in specs if s.stage == "teacher")
    student = next(s for s in specs if s.stage == "student")
    single_root, multi_root, resume_root = tmp_path / "single", tmp_path / "multi", tmp_path / "resume"
    out = tmp_path / "out"
    out.mkdir()
    assert train_run(RunJob(spec=teacher, runs_root=single_root, grid="ddp", device="cpu")).status == "done"
    shutil.copytree(single_root / teacher.run_id, multi_root / teacher.run_id)
    shutil.copytree(single_root / teacher.run_id, resume_root / teacher.run_id)
    one = train_run(RunJob(spec=student, runs_root=single_root, grid="ddp", device="cpu"))
    assert one.status == "done", one.traceback
    cut = train_run(RunJob(spec=student, runs_root=resume_root, grid="ddp", device="cpu",
                           observers=[StopAfterFirstEpoch()]))
    assert cut.status == "failed" and (resume_root / student.run_id / "checkpoint.pt").is_file()

    jobs = [RunJob(spec=student, runs_root=multi_root, grid="ddp", device="cpu", observers=[RankMarker(str(out))]),
            RunJob(spec=student, runs_root=resume_root, grid="ddp", device="cpu")]
    job_id = _run_two_tasks(jobs, tmp_path, out)

    views = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [(v["info"]["rank"], v["info"]["local_rank"], v["info"]["source"]) for v in views] == [
        (0, 0, "slurm"), (1, 1, "slurm")]
    assert {v["info"]["master_port"] for v in views} == {SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN}
    assert {v["info"]["master_addr"] for v in views} == {"localhost"}

    # exactly one record, written by rank 0 and returned by both; only rank 0 reached the observers
    assert sorted(p.parent.name for p in multi_root.glob("*/record.json")) == sorted([teacher.run_id,
                                                                                     student.run_id])
    two = read_record(multi_root / student.run_id)
    assert two is not None and two.status == "done", two.traceback if two else "no record"
    assert views[0]["records"][0] == views[1]["records"][0] == two.model_dump(mode="json")
    assert views[0]["records"][1] == views[1]["records"][1]
    assert two.provenance["world_size"] == 2 and "world_size" not in one.provenance
    assert sorted(p.name for p in out.glob("observed-*")) == [
        "observed-end-rank0", "observed-epoch-rank0", "observed-start-rank0"]
    assert not (multi_root / student.run_id / "checkpoint.pt").exists()

    _assert_trains_like(one, two)

    # both ranks resumed from the one-process checkpoint after epoch 1 and trained epoch 2 together
    resumed = read_record(resume_root / student.run_id)
    assert resumed is not None and resumed.status == "done", resumed.traceback if resumed else "no record"
    assert resumed.provenance["resumed_after_epochs"] == [1] and resumed.provenance["world_size"] == 2
    _assert_trains_like(one, resumed)

    # CRD banks and Z, RRD queue: identical on both ranks, and the one-process update of the global batch
    states = [torch.load(out / f"state-rank{rank}.pt") for rank in range(2)]
    reference = stateful_step(0, 1)
    for name, tensor in reference.items():
        assert torch.equal(states[0][name], states[1][name]), name
        torch.testing.assert_close(states[0][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert int(states[0]["queue_ptr"]) == GLOBAL_BATCH


SRUN_TASK = """
import json, os, torch
from kdbench.engine.distributed import all_gather_rows, all_reduce_sum, init_distributed
info = init_distributed(torch.device("cpu"))
total = all_reduce_sum(torch.tensor([info.rank + 1.0]))
rows = all_gather_rows(torch.full((info.rank + 1, 2), float(info.rank)))
print("TASK", json.dumps({"rank": info.rank, "world": info.world_size, "local": info.local_rank,
                          "source": info.source, "addr": info.master_addr, "total": total.item(),
                          "rows": rows[:, 0].tolist(), "step_nodes": os.environ["SLURM_STEP_NODELIST"]}))
"""


def _slurm_is_up() -> bool:
    if not (shutil.which("srun") and shutil.which("sinfo")):
        return False
    answer = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=30)
    return answer.returncode == 0 and "up" in answer.stdout


@pytest.mark.slow
def test_srun_tasks_join_one_gloo_group():
    """Two tasks launched by the real srun find each other from Slurm's variables alone (gloo, CPU)."""
    if not _slurm_is_up():
        pytest.skip("no Slurm cluster answering (bring one up with slurm/local-cluster.sh up)")
    env = {key: value for key, value in os.environ.items()
           if key not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(["srun", "--ntasks=2", "--cpus-per-task=1", "--time=5", "--immediate=120",
                           sys.executable, "-c", SRUN_TASK], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    tasks = sorted((json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines()
                    if line.startswith("TASK ")), key=lambda task: task["rank"])
    assert [(t["rank"], t["world"], t["local"], t["source"]) for t in tasks] == [(0, 2, 0, "slurm"), (1, 2, 1, "slurm")]
    assert {t["addr"] for t in tasks} == {first_host(tasks[0]["step_nodes"])}
    assert [t["total"] for t in tasks] == [3.0, 3.0]  # 1 + 2
    assert [t["rows"] for t in tasks] == [[0.0, 1.0, 1.0]] * 2  # 1 row from rank 0, 2 from rank 1, in rank order


@pytest.mark.slow
def test_two_gloo_processes_stream_an_image_folder_like_one(tmp_path):
    """ImageNet-LT files through DataLoader workers on 2 ranks: each rank decodes its shard, evaluation is summed
    over ranks; loss terms, train top-1 and test metrics are those of one process."""
    from imagefolder import write_image_folder, write_lt_splits

    root = write_image_folder(tmp_path / "root")
    splits = write_lt_splits(root, tmp_path / "splits")
    grid = {**GRID, "datasets": [{"name": "imagenet_lt", "root": str(root), "split_dir": str(splits),
                                  "image_size": 16}],
            "pairs": [{"teacher": {"arch": "cnn_small", "kwargs": {"in_channels": 3, "input_size": 16}},
                       "student": {"arch": "mlp_800x2", "kwargs": {"in_channels": 3, "input_size": 16}}}],
            "methods": [{"name": "kd", "params": {"temperature": 1.0, "ce_weight": 0.5, "kd_weight": 0.5}}],
            "recipe": {**GRID["recipe"], "batch_size": 9, "eval_batch_size": 5}}
    specs = expand_grid(parse_grid(grid))
    teacher = next(s for s in specs if s.stage == "teacher")
    student = next(s for s in specs if s.stage == "student")
    single_root, multi_root, out = tmp_path / "single", tmp_path / "multi", tmp_path / "out"
    out.mkdir()
    job = dict(grid="ddp", device="cpu", loader_workers=1)
    assert train_run(RunJob(spec=teacher, runs_root=single_root, **job)).status == "done"
    shutil.copytree(single_root / teacher.run_id, multi_root / teacher.run_id)
    one = train_run(RunJob(spec=student, runs_root=single_root, **job))
    assert one.status == "done", one.traceback
    _run_two_tasks([RunJob(spec=student, runs_root=multi_root, **job)], tmp_path, out)
    two = read_record(multi_root / student.run_id)
    assert two is not None and two.status == "done" and two.provenance["world_size"] == 2
    # no BatchNorm in the student: the shards' scaled losses average to the global batch's gradient exactly, up
    # to float summation order (see _assert_trains_like); 26 training images, 12 test images
    for a, b in zip(one.history, two.history, strict=True):
        for name in a.train:
            tolerance = 100 / 26 + 1e-9 if name == "top1" else 1e-4
            assert b.train[name] == pytest.approx(a.train[name], rel=1e-3, abs=tolerance), name
    assert abs(two.final.top1 - one.final.top1) <= 100 / 12 + 1e-9
    assert two.final.per_class_total == one.final.per_class_total and two.final.num_images == 12
    assert two.final.loss == pytest.approx(one.final.loss, rel=1e-3)
