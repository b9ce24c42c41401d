"""Submit a grid to Slurm: teacher arrays first, student arrays with afterok dependencies; optionally wait."""

from __future__ import annotations

import logging
import shutil
import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kdbench.clusterconf import ClusterConfig
from kdbench.config import ConfigError, GridConfig
from kdbench.engine import RunJob
from kdbench.grid.manifest import Manifest, ManifestEntry, slurm_root, write_manifest
from kdbench.grid.progress import relative_costs
from kdbench.grid.runner import GridPaths, archive_failed, plan_grid, prepare_results, record_tuning
from kdbench.grid.slurm_cli import cancel_jobs, max_array_size, require_sbatch
from kdbench.grid.slurm_status import SlurmRunState, format_counts, slurm_run_states
from kdbench.grid.slurm_task import SlurmRunTask
from kdbench.grid.status import PlannedRun, plan_runs
from kdbench.progress import format_duration, rate_eta

__all__ = ["SlurmSubmission", "format_counts", "submit_grid", "time_limit_warnings", "wait_for_grid"]
log = logging.getLogger("kdbench")
SHORT_TIME_LIMIT_MIN = 2


@dataclass
class SlurmSubmission:
    """What one `kdbench run --executor slurm` submitted and skipped."""

    paths: GridPaths
    folder: Path | None = None
    submitted: dict[str, list[str]] = field(default_factory=lambda: {"teacher": [], "student": []})
    skipped_done: int = 0
    skipped_active: int = 0
    skipped_failed: int = 0
    blocked: list[str] = field(default_factory=list)
    array_job_ids: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Runs submitted in this invocation."""
        return sum(len(v) for v in self.submitted.values())


def time_limit_warnings(cluster: ClusterConfig, planned: list[PlannedRun]) -> list[str]:
    """Warnings when the time limit looks shorter than one epoch (from finished runs' epoch times) or than 2 min."""
    warnings = []
    limit_s = cluster.time * 60
    epoch_times = [run.summary.max_epoch_seconds for run in planned
                   if run.summary is not None and run.summary.max_epoch_seconds is not None]  # from the grid index
    if epoch_times and max(epoch_times) >= limit_s - cluster.signal_delay:
        warnings.append(f"cluster.time = {cluster.time} min: an epoch of this grid took up to {max(epoch_times):.0f}"
                        f" s, more than the time before the requeue signal; runs may never get past an epoch")
    if cluster.time < SHORT_TIME_LIMIT_MIN:
        warnings.append(f"cluster.time = {cluster.time} min is very short: a run that cannot finish one epoch in "
                        f"{limit_s - cluster.signal_delay} s is requeued without progress until max_requeues")
    return warnings


def _executor(cluster: ClusterConfig, folder: Path, grid_name: str, stage: str):
    import submitit

    executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=cluster.max_requeues)
    executor.update_parameters(job_name=f"kd-{grid_name}-{stage}"[:60], **cluster.submitit_parameters())
    return executor


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class _Submitter:
    """Submits arrays for one invocation; on an sbatch error it cancels all it submitted and removes its folder."""

    def __init__(self, grid: GridConfig, cluster: ClusterConfig, folder: Path, manifest: Manifest) -> None:
        self.grid, self.cluster, self.folder, self.manifest = grid, cluster, folder, manifest
        self.job_ids: list[str] = []

    def submit(self, stage: str, jobs: list[RunJob], depends_on: str | None) -> dict[str, str]:
        """Submit ``jobs`` as arrays of at most MaxArraySize; return run id -> Slurm job id."""
        ids: dict[str, str] = {}
        for chunk in _chunks(jobs, max_array_size()):
            executor = _executor(self.cluster, self.folder, self.grid.name, stage)
            if depends_on:
                executor.update_parameters(dependency=f"afterok:{depends_on}")
            try:
                with executor.batch():
                    submitted = [executor.submit(SlurmRunTask(job)) for job in chunk]
            except Exception as error:
                self.abort()
                raise ConfigError(f"sbatch refused the {stage} array (cluster: {self._where()}):\n"
                                  f"{_sbatch_message(error)}\nnothing of this submission is left queued") from None
            for job, sjob in zip(chunk, submitted, strict=True):
                array_id, _, index = sjob.job_id.partition("_")
                self.manifest.entries.append(ManifestEntry(
                    run_id=job.spec.run_id, stage=stage, job_id=sjob.job_id, array_job_id=array_id,
                    array_index=int(index) if index else None, depends_on=depends_on))
                ids[job.spec.run_id] = sjob.job_id
            self.job_ids.append(submitted[0].job_id.split("_")[0])
            write_manifest(self.folder.parent, self.manifest)
        return ids

    def _where(self) -> str:
        c = self.cluster
        return ", ".join(f"{k}={getattr(c, k)}" for k in ("partition", "account", "qos") if getattr(c, k))or "defaults"

    def abort(self) -> None:
        """Cancel every array this invocation submitted and drop its submission folder."""
        cancel_jobs(self.job_ids)
        shutil.rmtree(self.folder.parent, ignore_errors=True)


def _sbatch_message(error: Exception) -> str:
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return "\n".join(lines) or text


def submit_grid(grid: GridConfig, grid_text: str, *, results_root: str | Path | None = None,
                rerun: Collection[str] = (), device: str | None = None) -> SlurmSubmission:
    """Plan the grid, then submit every run that is neither done nor queued/running; returns without waiting."""
    require_sbatch()
    cluster = grid.cluster or ClusterConfig()
    paths, planned = plan_grid(grid, results_root)
    for warning in time_limit_warnings(cluster, planned):
        log.warning("warning: %s", warning)
    target = prepare_results(grid, grid_text, paths)  # the MLflow store exists before any job starts
    pending = [cell for cell in record_tuning(grid, paths) if cell.selected is None]
    if pending:  # the final runs of these methods need the tuning results: a later `kdbench run` submits them
        log.warning("tuning: %d method cell(s) wait for their tuning runs (%s); run the same command again when "
                    "they are done to submit their final runs", len(pending),
                    ", ".join(f"{c.method} {c.pair} {c.dataset}" for c in pending[:3]))
    outcome = SlurmSubmission(paths)
    states = {s.run.run_id: s for s in slurm_run_states(planned, paths.grid_dir)}
    to_submit: list[PlannedRun] = []
    for run in planned:
        state = states[run.run_id].state
        if state == "done" and not (run.stale and "stale" in rerun):
            outcome.skipped_done += 1
        elif state in ("running", "pending"):
            outcome.skipped_active += 1
        elif run.status == "failed" and "failed" not in rerun:
            outcome.skipped_failed += 1
        else:
            to_submit.append(run)
    if not to_submit:
        return outcome

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    submission_dir = slurm_root(paths.grid_dir) / stamp
    outcome.folder = submission_dir / "submitit"  # fresh: job ids restart at 1 on a new controller
    manifest = Manifest(grid=grid.name, submitted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        folder=str(outcome.folder))
    submitter = _Submitter(grid, cluster, outcome.folder, manifest)

    def job_for(run: PlannedRun) -> RunJob:
        if run.status == "failed":
            archive_failed(paths.runs_root / run.run_id)
        return RunJob(spec=run.spec, runs_root=paths.runs_root, grid=grid.name,
                      device=device or grid.executor.device, tracking_uri=target[0] if target else None,
                      tracking_experiment=target[1] if target else None, label=f"[{run.spec.stage}] ",
                      plugins=list(grid.plugins), rerun_stale="stale" in rerun,
                      loader_workers=grid.executor.loader_workers)

    teacher_jobs = {s.run.run_id: s.job_id for s in states.values()
                    if s.run.spec.stage == "teacher" and s.state in ("running", "pending")}
    teachers = [job_for(r) for r in to_submit if r.spec.stage == "teacher"]
    if teachers:
        teacher_jobs.update(submitter.submit("teacher", teachers, None))
        outcome.submitted["teacher"] = [j.spec.run_id for j in teachers]
    by_dependency: dict[str | None, list[PlannedRun]] = defaultdict(list)
    for run in (r for r in to_submit if r.spec.stage == "student"):
        teacher = run.spec.teacher
        if teacher is None or states[teacher.run_id].state == "done":
            by_dependency[None].append(run)
        elif teacher.run_id in teacher_jobs:
            by_dependency[teacher_jobs[teacher.run_id]].append(run)
        else:
            outcome.blocked.append(run.run_id)  # its teacher failed and is not being retried
    for dependency, runs in by_dependency.items():
        jobs = [job_for(r) for r in runs]
        submitter.submit("student", jobs, dependency)
        outcome.submitted["student"] += [j.spec.run_id for j in jobs]
    outcome.array_job_ids = submitter.job_ids
    return outcome


ENDED_STATES = ("done", "failed", "cancelled")
ACTIVE_RUN_STATES = ("running", "pending")
HEARTBEAT_S = 300.0  # a progress line at least this often, so elapsed and ETA stay current


def wait_line(states: list[SlurmRunState], costs: dict[str, float], ended_before: set[str], elapsed: float) -> str:
    """'[elapsed 1:23] teacher runs: ... | student runs: ... | ETA 3:10': counts per stage, then the ETA of the
    queued and running runs at the rate (relative cost per second) of the runs that ended during this wait."""
    ended = {s.run.run_id for s in states if s.state in ENDED_STATES} - ended_before
    done_cost = sum(costs.get(run_id, 0.0) for run_id in ended)
    remaining = sum(costs.get(s.run.run_id, 0.0) for s in states if s.state in ACTIVE_RUN_STATES)
    eta = rate_eta(done_cost, elapsed, remaining)
    return f"[elapsed {format_duration(elapsed)}] {' | '.join(format_counts(states))} | ETA {format_duration(eta)}"


def wait_for_grid(grid: GridConfig, results_root: str | Path | None = None, poll_s: float = 5.0,
                  timeout_s: float | None = None) -> list[SlurmRunState]:
    """Block until no run of the grid is queued or running on Slurm; print a progress line (counts per stage,
    elapsed, ETA) when the counts change, and at least every HEARTBEAT_S seconds."""
    started, last, last_at = time.monotonic(), None, 0.0
    paths, planned = plan_grid(grid, results_root)
    specs, run_ids = [run.spec for run in planned], [run.run_id for run in planned]
    costs = relative_costs(specs)
    ended_before: set[str] | None = None
    while True:
        planned = plan_runs(specs, paths.runs_root, run_ids=run_ids)
        states = slurm_run_states(planned, paths.grid_dir)
        if ended_before is None:
            ended_before = {s.run.run_id for s in states if s.state in ENDED_STATES}
        counts = format_counts(states)
        now = time.monotonic()
        if counts != last or now - last_at >= HEARTBEAT_S:
            log.info("%s", wait_line(states, costs, ended_before, now - started))
            last, last_at = counts, now
        if not any(s.state in ("running", "pending") for s in states):
            return states
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise TimeoutError(f"grid '{grid.name}' still has queued or running jobs after {timeout_s:.0f} s")
        time.sleep(poll_s)
