"""Run a grid: plan against results/, create the tracking store once, run teachers, then students."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kdbench.codeid import stale_reasons
from kdbench.config import ConfigError, GridConfig
from kdbench.cpus import local_workers
from kdbench.data.streaming import default_workers
from kdbench.engine import RunBusy, RunJob
from kdbench.engine.distributed import dist_info_from_env
from kdbench.grid.executors import run_debug, run_local
from kdbench.grid.expand import TuningCell
from kdbench.grid.plan import GridPaths, grid_paths, plan_grid, tuning_selections
from kdbench.grid.progress import GridProgress
from kdbench.grid.status import PlannedRun, run_status
from kdbench.grid.tuning import write_selections
from kdbench.runspec import RunSpec
from kdbench.tracking.atomic import atomic_write
from kdbench.tracking.mlflow_sink import default_tracking_uri, ensure_experiment
from kdbench.tracking.mlflow_sync import SyncResult, gather_records, sync_records
from kdbench.tracking.record import RunRecord, archive_record, read_record
from kdbench.tracking.resources import ResourceError

# GridPaths, grid_paths, plan_grid and tuning_selections live in kdbench.grid.plan (no torch); importable from here
__all__ = ["GridOutcome", "GridPaths", "grid_paths", "plan_grid", "run_grid", "tracking_target", "tuning_selections"]

log = logging.getLogger("kdbench")


def artifact_root(paths: GridPaths) -> Path:
    """Where the MLflow artifacts of the default store go: <results root>/mlflow-artifacts/<experiment>."""
    return paths.results_root / "mlflow-artifacts"


def tracking_target(grid: GridConfig, paths: GridPaths) -> tuple[str, str] | None:
    """(uri, experiment) of the MLflow store, or None when tracking is off."""
    if not grid.tracking.mlflow:
        return None
    return grid.tracking.uri or default_tracking_uri(paths.results_root), grid.tracking.experiment or grid.name


def record_tuning(grid: GridConfig, paths: GridPaths) -> list[TuningCell]:
    """Write the grid's tuning cells (configs, scores, selections) to <grid dir>/tuning.json; return them."""
    cells = tuning_selections(grid, paths)
    if cells:
        write_selections(paths.grid_dir, cells)
    return cells


@dataclass
class GridOutcome:
    """What a `kdbench run` did."""

    ran: list[RunRecord] = field(default_factory=list)
    skipped_done: int = 0
    skipped_failed: int = 0
    blocked: list[RunSpec] = field(default_factory=list)
    blocked_because: dict[str, str] = field(default_factory=dict)  # run id → why its teacher is not usable
    busy: list[RunBusy] = field(default_factory=list)
    resource_error: ResourceError | None = None
    not_started: int = 0
    failed_remaining: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> list[RunRecord]:
        """Records of runs that failed in this invocation."""
        return [r for r in self.ran if r.status == "failed"]


def _save_grid_file(grid_dir: Path, grid_text: str) -> None:
    """Keep the grid as given; an earlier, different version is kept beside it, never lost."""
    target = grid_dir / "grid.yaml"
    if target.is_file():
        if target.read_text() == grid_text:
            return
        stamp = datetime.fromtimestamp(target.stat().st_mtime, timezone.utc).strftime("%Y%m%dT%H%M%S")
        target.rename(grid_dir / f"grid.{stamp}.yaml")
    atomic_write(target, lambda handle: handle.write(grid_text.encode()))


def archive_failed(run_dir: Path) -> None:
    """Move a failed record aside (record.failed-<time>.json) before the run is submitted again."""
    archive_record(run_dir, "failed")


def prepare_results(grid: GridConfig, grid_text: str, paths: GridPaths, is_main: bool = True) -> tuple[str, str] | None:
    """Create runs/, keep the grid file, create the MLflow store and experiment once; return the tracking target.

    Only the main rank (``is_main``) of a grid launched as several processes writes the grid file and the store.
    """
    paths.runs_root.mkdir(parents=True, exist_ok=True)
    if is_main:
        _save_grid_file(paths.grid_dir, grid_text)
    target = tracking_target(grid, paths)
    if target is not None and is_main:
        try:
            ensure_experiment(*target, artifact_root=artifact_root(paths), results_root=paths.results_root)
        except Exception as error:  # tracking never stops the grid
            log.warning("MLflow store %s unavailable (%s); runs go on with records only", target[0], error)
            target = None
    return target


def sync_grid(grid: GridConfig, paths: GridPaths) -> SyncResult | None:
    """`kdbench sync`: make the grid's MLflow experiment agree with its records; None when tracking is off."""
    target = tracking_target(grid, paths)
    if target is None:
        return None
    return sync_records(*target, gather_records(paths.runs_root), artifact_root=artifact_root(paths),
                        results_root=paths.results_root)


def run_grid(grid: GridConfig, grid_text: str, *, results_root: str | Path | None = None, executor: str | None = None,
             rerun: Collection[str] = (), device: str | None = None, _after_tuning: bool = False) -> GridOutcome:
    """Run every run that is not done, teachers first; a student whose teacher is not done is blocked.

    ``rerun``: 'failed' trains failed runs again, 'stale' done runs whose code or teacher changed. A run another
    process is training is skipped (outcome.busy). A full disk or unwritable results folder stops the grid
    (outcome.resource_error) without recording it as any run's failure.
    """
    if (executor or grid.executor.kind) == "slurm":
        raise ConfigError("executor 'slurm' submits and returns: use kdbench.grid.slurm_submit.submit_grid "
                          "(`kdbench run GRID --executor slurm` does)")
    started = time.perf_counter()
    # Launched as N processes (torchrun, srun): every rank walks the same runs in the same order and trains each
    # together; only rank 0 writes the grid's files (the engine does the same for each run).
    ranks = dist_info_from_env()
    workers = pool_size(grid, device)
    if ranks.distributed and (executor or grid.executor.kind) == "local" and workers > 1:
        raise ConfigError(f"executor.workers={grid.executor.workers}: a grid launched as {ranks.world_size} "
                          "processes trains each run on all of them; allowed: workers: 1")
    paths, planned = plan_grid(grid, results_root)
    target = prepare_results(grid, grid_text, paths, is_main=ranks.is_main)
    outcome = GridOutcome()
    to_run: list[PlannedRun] = []
    for run in planned:
        if run.status == "done" and not (run.stale and "stale" in rerun):
            outcome.skipped_done += 1
        elif run.status == "failed" and "failed" not in rerun:
            outcome.skipped_failed += 1
        elif run.status == "running":
            outcome.busy.append(RunBusy(run.spec.run_id, run.spec.describe(), run.holder))
        else:
            to_run.append(run)
    total = len(to_run)
    counter = iter(range(1, total + 1))
    progress = GridProgress(run.spec for run in to_run)

    def job_for(spec: RunSpec, label: str) -> RunJob:
        return RunJob(spec=spec, runs_root=paths.runs_root, grid=grid.name, device=device or grid.executor.device,
                      tracking_uri=target[0] if target else None, tracking_experiment=target[1] if target else None,
                      label=label, plugins=list(grid.plugins), rerun_stale="stale" in rerun,
                      loader_workers=(grid.executor.loader_workers if grid.executor.loader_workers is not None
                                      else default_workers(workers)))

    retrained: set[str] = set()
    for stage in ("teacher", "student"):
        specs = [r.spec for r in to_run if r.spec.stage == stage]
        if stage == "student" and "stale" in rerun and retrained:
            specs += _stale_by_new_teacher(planned, retrained, paths.runs_root, outcome)
            progress.add(specs)
        jobs = []
        teacher_states: dict[str, tuple] = {}  # one look per teacher: thousands of students share a few teachers
        for spec in specs:
            teacher_state = None
            if spec.teacher is not None:
                if spec.teacher.run_id not in teacher_states:
                    teacher_states[spec.teacher.run_id] = run_status(paths.runs_root / spec.teacher.run_id)
                teacher_state = teacher_states[spec.teacher.run_id]
            if teacher_state is not None and teacher_state[0] != "done":
                outcome.blocked.append(spec)
                progress.drop(spec.run_id)
                holder = teacher_state[2]
                outcome.blocked_because[spec.run_id] = (
                    f"teacher running elsewhere: {holder.describe()}; run again when it ends" if holder is not None
                    else f"teacher {teacher_state[0]}")
                continue
            jobs.append(job_for(spec, f"[{next(counter, '+')}/{total}] "))
        results = _execute(jobs, executor or grid.executor.kind, workers, paths)
        try:
            for result in results:
                if isinstance(result, RunBusy):
                    outcome.busy.append(result)
                    progress.drop(result.run_id)
                    log.info("skipped: %s", result.describe())
                    continue
                outcome.ran.append(result)
                retrained.add(result.run_id)
                progress.finish(result.run_id, failed=result.status != "done")
                log.info("%s %s: %s%s", "done" if result.status == "done" else "FAILED", result.run_id,
                         f"{result.label} {result.pair} {result.dataset} seed {result.seed}",
                         f" top1 {result.final.top1:.2f}" if result.final else f" ({result.reason})")
                log.info("%s", progress.line())
        except ResourceError as error:
            outcome.resource_error = error
            outcome.not_started = max(0, total - len(outcome.ran))
            break
        finally:  # stops a process pool now (queued runs never start), not when garbage-collected
            close = getattr(results, "close", None)
            if close is not None:
                close()
    if grid.tuning is not None and ranks.is_main:
        record_tuning(grid, paths)
    planned_ids = {run.spec.run_id for run in planned}
    replanned = plan_grid(grid, results_root)[1]
    if (not _after_tuning and outcome.resource_error is None
            and any(run.spec.run_id not in planned_ids for run in replanned)):  # tuning selected new final runs
        final = run_grid(grid, grid_text, results_root=results_root, executor=executor, rerun=rerun, device=device,
                         _after_tuning=True)
        outcome.ran += final.ran
        outcome.blocked += final.blocked
        outcome.blocked_because |= final.blocked_because
        outcome.busy += final.busy
        outcome.resource_error, outcome.not_started = final.resource_error, final.not_started
        replanned = plan_grid(grid, results_root)[1]
    outcome.failed_remaining = sum(run.status == "failed" for run in replanned)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _stale_by_new_teacher(planned: list[PlannedRun], retrained: set[str], runs_root: Path,
                          outcome: GridOutcome) -> list[RunSpec]:
    """Done students whose teacher was trained again in this invocation (their teacher weights changed)."""
    specs = []
    for run in planned:
        if (run.status == "done" and not run.stale and run.spec.teacher is not None
                and run.spec.teacher.run_id in retrained and run.record is not None
                and stale_reasons(run.record, read_record(runs_root / run.spec.teacher.run_id))):
            specs.append(run.spec)
            outcome.skipped_done -= 1
    return specs


def pool_size(grid: GridConfig, device: str | None = None) -> int:
    """The local executor's process count: ``executor.workers``, with ``auto`` resolved for the run's device."""
    kind = device or grid.executor.device
    if kind == "auto":
        import torch

        kind = "cuda" if torch.cuda.is_available() else "cpu"
    return local_workers(grid.executor.workers, kind)


def _execute(jobs: list[RunJob], kind: str, workers: int, paths: GridPaths) -> Iterator[RunRecord | RunBusy]:
    if not jobs:
        return iter(())
    if kind == "debug":
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        return run_debug(jobs, paths.grid_dir / "submitit" / stamp)
    return run_local(jobs, workers)
