"""Per-run state of a grid on Slurm: the run record first, then the Slurm state of its latest submission."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from kdbench.grid.manifest import Manifest, ManifestEntry, latest_entries, read_manifests
from kdbench.grid.slurm_cli import ACTIVE_STATES, RUNNING_STATES, job_states
from kdbench.grid.status import PlannedRun

STAGES = ("teacher", "student")
TAIL_LINES = 8


@dataclass(frozen=True)
class SlurmRunState:
    """What one run is doing: done/running/pending/failed/cancelled/interrupted/new, and why when failed."""

    run: PlannedRun
    state: str
    job_id: str | None = None
    slurm_state: str | None = None
    error_tail: str | None = None


def _stderr_path(manifest: Manifest, entry: ManifestEntry) -> Path:
    from submitit.core.utils import JobPaths

    return JobPaths(manifest.folder, job_id=entry.job_id, task_id=0).stderr


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def slurm_run_states(planned: list[PlannedRun], grid_dir: Path) -> list[SlurmRunState]:
    """Join records with Slurm's job states (squeue/sacct) through the grid's manifests."""
    manifests = read_manifests(grid_dir)
    latest = latest_entries(manifests)
    since = manifests[0].submitted_at[:19] if manifests else None
    states = job_states([entry.job_id for _, entry in latest.values()], since=since)
    result = []
    for run in planned:
        found = latest.get(run.run_id)
        job_id = found[1].job_id if found else None
        slurm_state = states.get(job_id) if job_id else None
        if slurm_state in ACTIVE_STATES:
            state = "running" if slurm_state in RUNNING_STATES else "pending"
            result.append(SlurmRunState(run, state, job_id, slurm_state))
        elif run.status == "done":
            result.append(SlurmRunState(run, "done", job_id, slurm_state))
        elif run.status == "failed":
            tail = _tail(run.record.traceback or run.record.reason or "") if run.record else None
            result.append(SlurmRunState(run, "failed", job_id, slurm_state, tail))
        elif found is not None and slurm_state is not None:
            # The job ended without a record: killed (time limit after the last requeue, node failure, cancel).
            stderr = _stderr_path(*found)
            tail = _tail(stderr.read_text(errors="replace")) if stderr.is_file() else f"Slurm state {slurm_state}"
            state = "interrupted" if run.status == "interrupted" else "cancelled" if slurm_state == "CANCELLED" \
                else "failed"
            result.append(SlurmRunState(run, state, job_id, slurm_state, tail))
        else:
            result.append(SlurmRunState(run, run.status, job_id, slurm_state))
    return result


def state_counts(states: list[SlurmRunState]) -> dict[str, Counter]:
    """Counts of each state per stage."""
    counts: dict[str, Counter] = {stage: Counter() for stage in STAGES}
    for item in states:
        counts[item.run.spec.stage][item.state] += 1
    return counts


def format_counts(states: list[SlurmRunState]) -> list[str]:
    """One line per stage: done / running / pending / failed / other counts."""
    lines = []
    for stage, counts in state_counts(states).items():
        main = ("done", "running", "pending", "failed")
        rest = ", ".join(f"{counts[k]} {k}" for k in sorted(counts) if k not in main)
        lines.append(f"{stage} runs: {sum(counts.values())} (" + ", ".join(f"{counts[k]} {k}" for k in main)
                     + (f", {rest}" if rest else "") + ")")
    return lines


def active_job_ids(grid_dir: Path) -> list[str]:
    """Job ids of this grid's runs that Slurm still has queued or running."""
    manifests = read_manifests(grid_dir)
    latest = latest_entries(manifests)
    since = manifests[0].submitted_at[:19] if manifests else None
    ids = [entry.job_id for _, entry in latest.values()]
    return [job for job, state in job_states(ids, since=since).items() if state in ACTIVE_STATES]
