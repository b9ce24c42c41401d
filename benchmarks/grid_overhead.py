"""Grid overhead: expand + plan a 10,000-run grid (dry run), and submit 500 runs as arrays to Slurm (then cancel).

    .venv/bin/python benchmarks/grid_overhead.py [--runs 10000] [--submit 500] [--no-submit]

The submitted jobs are held (sbatch --hold), so nothing trains; they are cancelled at the end.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from kdbench.config import parse_grid

DATA = {"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 8, "synthetic_test_per_class": 4}


def grid_of(students: int, root: Path, name: str, cluster: dict | None = None):
    """One dataset, one pair, kd at many temperatures × 20 seeds (one teacher): ``students`` student runs."""
    seeds = 20
    methods = [{"name": "kd", "label": f"kd_T{i}", "params": {"temperature": 1.0 + i / 10}}
               for i in range(students // seeds)]
    raw = {"name": name, "datasets": [DATA], "pairs": [{"teacher": "cnn_small", "student": "cnn_small"}],
           "methods": methods, "seeds": list(range(seeds)), "output": str(root),
           "recipe": {"epochs": 1, "batch_size": 8, "milestones": []}, "executor": {"kind": "slurm", "device": "cpu"}}
    if cluster is not None:
        raw["cluster"] = cluster
    return parse_grid(raw)


def time_plan(runs: int, root: Path) -> None:
    """Expansion and the full plan (needs checks + reading each run folder) of a grid of about ``runs`` runs."""
    from kdbench.grid import plan_grid
    from kdbench.grid.expand import expand_grid

    started = time.perf_counter()
    grid = grid_of(runs, root, "overhead_plan")
    parsed = time.perf_counter()
    specs = expand_grid(grid)
    expanded = time.perf_counter()
    _, planned = plan_grid(grid)
    planned_at = time.perf_counter()
    print(f"plan: {len(specs)} runs | parse {parsed - started:.2f} s | expand {expanded - parsed:.2f} s | "
          f"expand+check+status (plan_grid) {planned_at - expanded:.2f} s")
    assert len(planned) == len(specs)


def time_submit(runs: int, root: Path) -> None:
    """Submit ``runs`` student runs (+1 teacher) as held arrays, then cancel them all."""
    from kdbench.grid.slurm_cli import cancel_jobs, job_states
    from kdbench.grid.slurm_submit import submit_grid

    grid = grid_of(runs, root, "overhead_submit",
                   cluster={"profile": "local", "extra_sbatch_args": {"hold": True}})
    started = time.perf_counter()
    outcome = submit_grid(grid, "# benchmark")
    submitted = time.perf_counter()
    print(f"submit: {outcome.total} runs as {len(outcome.array_job_ids)} array job(s) in {submitted - started:.2f} s "
          f"(incl. planning and creating the MLflow store)")
    ids = [*outcome.array_job_ids]
    states = job_states([f"{ids[-1]}_0"])
    cancel_jobs(ids)
    print(f"cancelled {ids}; a student task was {states}")


def main() -> None:
    """Run both measurements and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--submit", type=int, default=500)
    parser.add_argument("--no-submit", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kdbench-overhead-"))
    try:
        time_plan(args.runs, root)
        if not args.no_submit:
            time_submit(args.submit, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
