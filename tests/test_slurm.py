"""The slurm executor against a real Slurm cluster (`bash slurm/local-cluster.sh up`); no mocks of Slurm's commands.

All grids are submitted once, up front (module fixture), so that their jobs overlap; each test then checks one
promise. Skipped when sbatch is absent, unless KDBENCH_REQUIRE_SLURM=1 (CI), which makes a missing Slurm a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from slurm_grids import CLUSTER, PLUGIN, grid_for

from kdbench.cli import main
from kdbench.config import ConfigError
from kdbench.grid import grid_paths, plan_grid, tracking_target
from kdbench.grid.manifest import read_manifests
from kdbench.grid.slurm_status import slurm_run_states
from kdbench.grid.slurm_submit import submit_grid, wait_for_grid

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

if shutil.which("sbatch") is None:
    if os.environ.get("KDBENCH_REQUIRE_SLURM") == "1":
        raise RuntimeError("KDBENCH_REQUIRE_SLURM=1 but sbatch is not on PATH: run `bash slurm/local-cluster.sh up`")
    pytest.skip("no sbatch on PATH (start a local cluster: `bash slurm/local-cluster.sh up`)", allow_module_level=True)

WAIT_S = 400
_grid = grid_for


def _grid_file(grid) -> str:
    return str(Path(grid.output).parent / f"{grid.name}.yaml")


def _squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def _squeue_names() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, check=True).stdout
    return out.split()


@pytest.fixture(scope="module")
def submitted(slurm_submitted):
    """The grids conftest submitted at the start of the session (their jobs ran while other tests did)."""
    return slurm_submitted


def _single_thread_run(spec, runs_root: Path, plugins: list[str] | None = None):
    """The run in this process with one thread, as in a Slurm task (cpus_per_task 1): the same summation order."""
    import torch

    from kdbench.engine import RunJob, train_run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_run(RunJob(spec=spec, runs_root=runs_root, grid=runs_root.name, device="cpu",
                                plugins=plugins or []))
    finally:
        torch.set_num_threads(threads)


def _wait(grid):
    return wait_for_grid(grid, poll_s=3, timeout_s=WAIT_S)


def test_run_killed_hard_resumes_on_the_next_kdbench_run(submitted):
    from kdbench.engine.checkpoint import CHECKPOINT_NAME

    grids, _ = submitted
    grid = grids["killed"]
    paths, planned = plan_grid(grid)
    checkpoint = paths.runs_root / planned[0].spec.run_id / CHECKPOINT_NAME
    deadline = time.monotonic() + WAIT_S
    while not checkpoint.is_file() and time.monotonic() < deadline:
        time.sleep(1)
    assert checkpoint.is_file(), "the run never saved an epoch checkpoint"
    job_id = read_manifests(paths.grid_dir)[0].entries[0].job_id
    subprocess.run(["scancel", "--signal=KILL", "--full", job_id], check=True)  # no chance to requeue
    states = _wait(grid)
    assert states[0].state == "interrupted" and states[0].slurm_state != "COMPLETED"

    again = submit_grid(grid, "# killed")  # no sleeping this time: SLEEP_ENV is unset now
    assert again.total == 1
    states = _wait(grid)
    assert [s.state for s in states] == ["done"], [s.error_tail for s in states]
    assert states[0].run.record.provenance["resumed_after_epochs"][0] >= 1


def test_grid_submits_teacher_then_student_arrays_and_completes(submitted):
    grids, outcomes = submitted
    grid, outcome = grids["main"], outcomes["main"]
    assert len(outcome.submitted["teacher"]) == 2 and len(outcome.submitted["student"]) == 8
    manifest = read_manifests(grid_paths(grid).grid_dir)[0]
    teacher_jobs = {e.run_id: e.job_id for e in manifest.entries if e.stage == "teacher"}
    kd_entries = [e for e in manifest.entries if e.stage == "student" and e.depends_on]
    assert len(kd_entries) == 4 and {e.depends_on for e in kd_entries} == set(teacher_jobs.values())
    assert all("_" in e.job_id and e.array_index is not None for e in manifest.entries)

    states = _wait(grid)
    assert {s.state for s in states} == {"done"}, [(s.run.spec.describe(), s.state, s.error_tail) for s in states]
    uri, experiment = tracking_target(grid, grid_paths(grid))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=100)
    students = [s.run for s in states if s.run.spec.stage == "student"]
    per_run = [sum(r.data.tags["kdbench.run_id"] == s.spec.run_id for r in runs) for s in students]
    assert per_run == [1] * 8 and {r.info.status for r in runs} == {"FINISHED"}

    again = submit_grid(grid, "# main")
    assert again.total == 0 and again.skipped_done == 10 and len(read_manifests(grid_paths(grid).grid_dir)) == 1


def test_failed_run_is_reported_with_its_traceback(submitted, capsys):
    grids, _ = submitted
    grid = grids["fails"]
    states = {s.run.spec.method: s for s in _wait(grid)}
    assert states["vanilla"].state == "done"
    assert states["explodes"].state == "failed" and "NonFiniteLossError" in states["explodes"].error_tail
    assert main(["status", _grid_file(grid)]) == 1
    printed = capsys.readouterr().out
    assert "1 done" in printed and "1 failed" in printed and "NonFiniteLossError" in printed
    assert submit_grid(grid, "# fails").skipped_failed == 1  # not retried unless asked


def test_time_limit_requeues_and_resumes_to_the_same_result(submitted, tmp_path):
    grids, _ = submitted
    grid = grids["requeue"]
    states = _wait(grid)
    assert [s.state for s in states] == ["done"], [s.error_tail for s in states]
    record = states[0].run.record
    manifest = read_manifests(grid_paths(grid).grid_dir)[0]
    job_log = Path(manifest.folder).glob(f"{manifest.entries[0].job_id}_0_log.out")
    assert "Caught signal SIGUSR2" in next(job_log).read_text(), "Slurm never sent the time-limit signal"
    assert record.provenance["resumed_after_epochs"][0] >= 1, "the requeued run did not resume from an epoch"
    reference = _single_thread_run(states[0].run.spec, tmp_path / "ref", plugins=[PLUGIN])
    assert reference.status == "done" and not reference.provenance["resumed_after_epochs"]
    assert record.final.top1 == reference.final.top1
    assert record.final.loss == pytest.approx(reference.final.loss, rel=1e-5)
    assert [e.test_top1 for e in record.history] == [e.test_top1 for e in reference.history]


def test_cancel_leaves_nothing_queued(tmp_path, capsys):
    grid = _grid(tmp_path, "slurm_cancel", seeds=[5, 6])
    outcome = submit_grid(grid, "# cancel")
    job_ids = {e.job_id for m in read_manifests(grid_paths(grid).grid_dir) for e in m.entries}
    assert outcome.total == 10 and len(job_ids) == 10
    assert main(["cancel", _grid_file(grid)]) == 0
    cancelled = re.search(r"cancelled (\d+) job", capsys.readouterr().out)
    assert cancelled and int(cancelled.group(1)) > 0  # jobs were still queued or running when cancel ran
    deadline = time.monotonic() + 30
    while job_ids & _squeue_ids() and time.monotonic() < deadline:
        time.sleep(1)
    assert not job_ids & _squeue_ids()
    paths, planned = plan_grid(grid)
    assert not any(s.state in ("running", "pending") for s in slurm_run_states(planned, paths.grid_dir))


def test_rejected_partition_shows_sbatch_error_and_leaves_nothing(tmp_path):
    grid = _grid(tmp_path, "slurm_badpart", cluster={**CLUSTER, "partition": "no-such-partition"})
    with pytest.raises(ConfigError, match="(?i)invalid partition"):
        submit_grid(grid, "# bad")
    assert not [name for name in _squeue_names() if name.startswith("kd-slurm_badpart")]
    assert read_manifests(grid_paths(grid).grid_dir) == []


def test_missing_sbatch_is_a_clear_error_before_submitting(tmp_path, monkeypatch, capsys):
    grid_file = _grid_file(_grid(tmp_path, "slurm_nosbatch"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert main(["run", grid_file]) == 2
    err = capsys.readouterr().err
    assert "sbatch" in err and "slurm/local-cluster.sh up" in err and "--executor local" in err
    assert not (tmp_path / "results").exists()


def test_two_task_gloo_run_matches_one_process(submitted, tmp_path):
    """tasks_per_node: 2 through the executor: one record from rank 0, the metrics of a single-process run."""
    grids, _ = submitted
    grid = grids["ddp"]
    states = _wait(grid)
    assert [s.state for s in states] == ["done"], [s.error_tail for s in states]
    record = states[0].run.record
    assert record.provenance["world_size"] == 2
    single = _single_thread_run(states[0].run.spec, tmp_path / "one")
    assert "world_size" not in single.provenance
    # No BatchNorm and the loss scaled by shard size: the two processes differ only in float summation order
    # (gradients averaged across ranks); loss terms agree to 1e-3 and top-1 within one of the 32 test images.
    for ours, theirs in zip(record.history, single.history, strict=True):
        assert ours.train == pytest.approx(theirs.train, rel=1e-3)
    assert abs(record.final.top1 - single.final.top1) <= 100 / 32 + 1e-9
    assert record.final.loss == pytest.approx(single.final.loss, rel=1e-3)


def test_imagenet_lt_grid_streams_files_in_slurm_tasks(submitted):
    grids, outcomes = submitted
    grid = grids["imagenet_lt"]
    assert len(outcomes["imagenet_lt"].submitted["teacher"]) == 1
    states = _wait(grid)
    assert [s.state for s in states] == ["done", "done"], [(s.run.spec.describe(), s.error_tail) for s in states]
    teacher, student = (s.run.record for s in states)
    assert teacher.history == [] and teacher.provenance["weights"]["source"].endswith("resnet8_teacher.pth")
    assert student.teacher.sha256 == teacher.model_sha256 and len(student.history) == 1
    assert student.final.num_images == 12 and student.class_counts == [12, 7, 4, 3]
