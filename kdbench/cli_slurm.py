"""The Slurm side of the command line: run (submit, optionally wait), status with Slurm states, cancel."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kdbench.cli import EXIT_OK, EXIT_RUNS_FAILED, sync_after_run

if TYPE_CHECKING:
    from kdbench.config import GridConfig


def _print_failures(states) -> None:
    for item in states:
        if item.state in ("failed", "cancelled") and item.error_tail:
            print(f"  {item.state} {item.run.spec.run_id} {item.run.spec.describe()} "
                  f"(job {item.job_id}, {item.slurm_state or 'no Slurm state'}):")
            for line in item.error_tail.splitlines():
                print(f"      {line}")


def run_on_slurm(grid: GridConfig, args: argparse.Namespace) -> int:
    """`kdbench run --executor slurm [--wait]`: submit what is neither done nor queued/running."""
    from kdbench.grid.slurm_submit import format_counts, submit_grid, wait_for_grid

    outcome = submit_grid(grid, args.grid.read_text(), results_root=args.results,
                          rerun=args.rerun, device=args.device)
    print(f"submitted {len(outcome.submitted['teacher'])} teacher and {len(outcome.submitted['student'])} student "
          f"runs as {len(outcome.array_job_ids)} Slurm array job(s) {' '.join(outcome.array_job_ids)}; "
          f"{outcome.skipped_done} done, {outcome.skipped_active} already queued or running"
          + (f", {outcome.skipped_failed} failed earlier (use --rerun failed)" if outcome.skipped_failed else ""))
    for run_id in outcome.blocked:
        print(f"blocked (teacher failed; use --rerun failed): {run_id}")
    if outcome.folder is not None:
        print(f"submission: {outcome.folder.parent} (manifest.json, submitit logs)")
    if not args.wait:
        print(f"follow with `kdbench status {args.grid}`; stop with `kdbench cancel {args.grid}`")
        return EXIT_OK
    states = wait_for_grid(grid, args.results)
    for line in format_counts(states):
        print(line)
    _print_failures(states)
    from kdbench.grid import grid_paths

    sync_after_run(grid, grid_paths(grid, args.results), args.grid)
    return EXIT_RUNS_FAILED if any(s.state != "done" for s in states) else EXIT_OK


def slurm_status(grid: GridConfig, args: argparse.Namespace) -> int:
    """`kdbench status` for a grid submitted to Slurm: per-stage counts and the tail of each failure."""
    from kdbench.grid import plan_grid
    from kdbench.grid.slurm_status import format_counts, slurm_run_states

    paths, planned = plan_grid(grid, args.results)
    states = slurm_run_states(planned, paths.grid_dir)
    for line in format_counts(states):
        print(line)
    print(f"results: {paths.grid_dir}")
    _print_failures(states)
    return EXIT_RUNS_FAILED if any(s.state in ("failed", "cancelled") for s in states) else EXIT_OK


def cancel_grid(grid: GridConfig, args: argparse.Namespace) -> int:
    """`kdbench cancel`: scancel what this grid has queued or running (from its manifests)."""
    from kdbench.grid import grid_paths
    from kdbench.grid.slurm_cli import cancel_jobs, require_sbatch
    from kdbench.grid.slurm_status import active_job_ids

    require_sbatch()
    job_ids = active_job_ids(grid_paths(grid, args.results).grid_dir)
    cancel_jobs(job_ids)
    print(f"cancelled {len(job_ids)} job(s) of grid '{grid.name}'" + (f": {' '.join(job_ids)}" if job_ids else ""))
    return EXIT_OK
