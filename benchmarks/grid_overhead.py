"""Grid overhead: plan, `kdbench status` and a `--wait` poll over grids whose runs are all done; Slurm submission.

    .venv/bin/python benchmarks/grid_overhead.py --done --runs 1000,10000,100000   # all runs done (records written)
    .venv/bin/python benchmarks/grid_overhead.py [--runs 10000] [--submit 500] [--no-submit]   # no results; submit

With ``--done`` every run of the grid gets a small record (4 classes, one epoch: a light record, so 100,000 of them
fit in minutes), written as kdbench's writer does, then each size is measured in a fresh process:

* plan: ``plan_grid`` on the loaded grid (expansion, method checks, the state of every run), as ``kdbench run``
  and ``--dry-run`` do; the import and grid-loading time before it is shown apart;
* status: ``kdbench status GRID`` as a command, wall and CPU time; ``cold`` the first one after a code change (no
  cached plan), ``warm`` the next;
* ``--wait`` poll: one round of ``kdbench run --executor slurm --wait``'s loop (every run's state, the Slurm
  manifest and squeue/sacct when Slurm is here), CPU time of this process, median of three.

The submitted jobs of the second form are held (sbatch --hold), so nothing trains; they are cancelled at the end.
``benchmarks/index_compare.py`` runs this against another commit's code for a before/after table.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

DATA = {"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 8, "synthetic_test_per_class": 4}
GRID_FILE = "grid.yaml"
READY = ".records-written"


def grid_raw(students: int, root: Path, name: str, cluster: dict | None = None) -> dict:
    """One dataset, one pair, kd at many temperatures × 20 seeds (one teacher): ``students`` student runs."""
    seeds = 20
    methods = [{"name": "kd", "label": f"kd_T{i}", "params": {"temperature": 1.0 + i / 10}}
               for i in range(students // seeds)]
    raw = {"name": name, "datasets": [DATA], "pairs": [{"teacher": "cnn_small", "student": "cnn_small"}],
           "methods": methods, "seeds": list(range(seeds)), "output": str(root),
           "recipe": {"epochs": 1, "batch_size": 8, "milestones": []}, "executor": {"kind": "slurm", "device": "cpu"}}
    if cluster is not None:
        raw["cluster"] = cluster
    return raw


def grid_of(students: int, root: Path, name: str, cluster: dict | None = None):
    """The grid of ``grid_raw``, validated."""
    from kdbench.config import parse_grid

    return parse_grid(grid_raw(students, root, name, cluster))


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


# --- grids whose runs are all done -----------------------------------------------------------------------------

def write_done_grid(runs: int, folder: Path) -> Path:
    """``folder``/grid.yaml and a finished record for each of its runs (once); returns the grid file.

    Records are written as kdbench's writer writes them (the grid index hears of each first, when this kdbench has
    one), without its fsyncs. The first read afterwards, which folds those index entries, is timed and printed.
    """
    grid_file = folder / GRID_FILE
    if (folder / READY).is_file():
        return grid_file
    from kdbench.codeid import code_identity
    from kdbench.grid.expand import expand_grid
    from kdbench.tracking.record import EpochLog, EvalResult, RunRecord

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    raw = grid_raw(runs, folder / "results", "overhead_done")
    grid_file.write_text(yaml.safe_dump(raw))
    grid = grid_of(runs, folder / "results", "overhead_done")
    runs_root = folder / "results" / grid.name / "runs"
    try:
        from kdbench.tracking import index
    except ImportError:  # a kdbench without the grid index
        index = None
    codes: dict[str, dict[str, str]] = {}
    started = time.perf_counter()
    specs = expand_grid(grid)
    for spec in specs:
        codes.setdefault(spec.method, code_identity(spec.method))
        final = EvalResult(top1=50.0, top5=90.0, balanced_acc=50.0, loss=1.0, num_images=16,
                           per_class_correct=[2, 2, 2, 2], per_class_total=[4, 4, 4, 4])
        record = RunRecord(
            run_id=spec.run_id, grid=grid.name, status="done", stage=spec.stage, method=spec.method,
            label=spec.display_method, arch=spec.arch, pair=spec.pair, dataset=spec.dataset.variant, seed=spec.seed,
            subset_seed=0, spec=spec.model_dump(mode="json"), config_sha256="0" * 64, code=codes[spec.method],
            num_classes=4, class_counts=[8, 8, 8, 8], final=final, model_sha256="a" * 64,
            history=[EpochLog(epoch=1, lr=0.1, train={"ce": 1.0, "total": 1.0}, test_top1=50.0, test_top5=90.0,
                              seconds=1.0, images_per_s=100.0)])
        data = json.dumps(record.model_dump(mode="json"), indent=2).encode()
        run_dir = runs_root / spec.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        if index is not None:
            index.note_record(run_dir, record, hashlib.sha256(data).hexdigest())
        (run_dir / "record.json").write_bytes(data)
        (run_dir / "record.backup.json").write_bytes(data)
    print(f"  wrote {len(specs):,} records in {time.perf_counter() - started:.0f} s (not timed below)", flush=True)
    if index is not None:
        started = time.perf_counter()
        index.load_index(runs_root)
        print(f"  first read after the runs finished (folds {len(specs):,} index entries): "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    (folder / READY).write_text("")
    return grid_file


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _children_cpu() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return children.ru_utime + children.ru_stime


def _status_command(grid_file: Path, cache: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `kdbench status GRID` (its own process)."""
    env = {**os.environ, "KDBENCH_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore"}
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kdbench", "status", str(grid_file)], capture_output=True, text=True,
                          env=env, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0 or "done" not in done.stdout:
        raise RuntimeError(f"kdbench status failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, _children_cpu() - cpu


def _fake_manifest(grid_dir: Path, run_ids: list[str]) -> Path:
    """A Slurm submission manifest naming every run (job ids Slurm does not know), as a submitted grid has; the
    folder of that submission is returned."""
    folder = grid_dir / "slurm" / "benchmark"
    folder.mkdir(parents=True, exist_ok=True)
    entries = [{"run_id": run_id, "stage": "student", "job_id": f"99999999_{i}", "array_job_id": "99999999",
                "array_index": i, "depends_on": None} for i, run_id in enumerate(run_ids)]
    (folder / "manifest.json").write_text(json.dumps({"grid": "overhead_done", "submitted_at": "2026-01-01T00:00:00",
                                                      "folder": str(folder / "submitit"), "entries": entries}))
    return folder


def measure_done(grid_file: Path) -> dict[str, float]:
    """Time plan, status (cold and warm) and a --wait poll over the grid of ``grid_file`` (this process is fresh).

    ``cold``: the first time after a code change (kdbench's cache of checked plans empty; the old code has none);
    the plain numbers: the next time.
    """
    with tempfile.TemporaryDirectory() as cache:
        os.environ["KDBENCH_CACHE_DIR"] = cache
        return _measure_done(grid_file, Path(cache))


def _measure_done(grid_file: Path, cache: Path) -> dict[str, float]:
    timings: dict[str, float] = {}
    wall, cpu = time.perf_counter(), _cpu()
    from kdbench.config import load_grid
    from kdbench.grid import plan_grid

    grid = load_grid(grid_file)
    timings["import+load s"] = time.perf_counter() - wall
    for label in ("plan cold", "plan"):
        try:
            from kdbench.grid import plan_cache
        except ImportError:  # the old code keeps nothing between plans
            pass
        else:
            plan_cache._planned.clear()  # a new command's plan, not this process's memory of the last one
        wall, cpu = time.perf_counter(), _cpu()
        paths, planned = plan_grid(grid)
        timings[f"{label} s"], timings[f"{label} cpu s"] = time.perf_counter() - wall, _cpu() - cpu
    assert all(run.status == "done" for run in planned), "the benchmark grid's runs must all be done"
    timings["runs"] = len(planned)
    status_cache = cache / "status"  # its own: the first status validates and expands the grid file
    timings["status cold s"], timings["status cold cpu s"] = _status_command(grid_file, status_cache)
    timings["status s"], timings["status cpu s"] = _status_command(grid_file, status_cache)
    from kdbench.grid.slurm_status import slurm_run_states
    from kdbench.grid.status import plan_runs

    specs = [run.spec for run in planned]
    ids = [run.spec.run_id for run in planned]
    by_ids = "run_ids" in inspect.signature(plan_runs).parameters  # what wait_for_grid passes where it can
    if (paths.grid_dir / "slurm").exists():
        raise RuntimeError(f"{paths.grid_dir / 'slurm'} exists: a left-over manifest would turn status into Slurm's")
    submission = _fake_manifest(paths.grid_dir, ids)
    try:
        polls = []
        for _ in range(4):
            wall, cpu = time.perf_counter(), _cpu()
            again = plan_runs(specs, paths.runs_root, run_ids=ids) if by_ids else plan_runs(specs, paths.runs_root)
            slurm_run_states(again, paths.grid_dir)
            polls.append((time.perf_counter() - wall, _cpu() - cpu))
        timings["wait poll s"] = statistics.median(wall for wall, _ in polls[1:])
        timings["wait poll cpu s"] = statistics.median(cpu for _, cpu in polls[1:])
    finally:
        assert submission.parent == paths.grid_dir / "slurm"
        shutil.rmtree(submission.parent)  # without a slurm folder, status reads the records alone
    return timings


def main() -> None:
    """Run the measurements asked for and print them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="10000", help="student runs; with --done a comma-separated list of sizes")
    parser.add_argument("--submit", type=int, default=500)
    parser.add_argument("--no-submit", action="store_true")
    parser.add_argument("--done", action="store_true", help="time plan, status and --wait over finished grids")
    parser.add_argument("--keep", type=Path, help="--done: keep the grids here (reused when present)")
    parser.add_argument("--measure", type=Path, metavar="GRID_FILE", help=argparse.SUPPRESS)  # one size, as JSON
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_done(args.measure)))
        return
    sizes = [int(size) for size in args.runs.split(",")]
    root = args.keep or Path(tempfile.mkdtemp(prefix="kdbench-overhead-"))
    try:
        if args.done:
            rows = []
            for size in sizes:
                print(f"grid of {size:,} student runs, all done:", flush=True)
                grid_file = write_done_grid(size, root / f"done-{size}")
                out = subprocess.run([sys.executable, __file__, "--measure", str(grid_file)], check=True,
                                     capture_output=True, text=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
            columns = list(rows[0])
            print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
            for row in rows:
                print("| " + " | ".join(f"{row[c]:,.0f}" if c == "runs" else f"{row[c]:.2f}" for c in columns) + " |")
            return
        time_plan(sizes[0], root)
        if not args.no_submit:
            time_submit(args.submit, root)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
