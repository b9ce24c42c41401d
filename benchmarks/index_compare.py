"""Before/after table of the grid index: plan, `kdbench status`, a `--wait` poll and the report tables at 1k-100k runs.

    .venv/bin/python benchmarks/index_compare.py                            # before = main, after = HEAD
    .venv/bin/python benchmarks/index_compare.py --sizes 1000,10000 --rounds 3 --keep /tmp/kdbench-compare

The ``--before`` and ``--after`` commits are exported with ``git archive`` into a temporary folder (uncommitted
changes are not measured, and editing the tree meanwhile changes nothing); both code bases then run the very same
measurements (this tree's grid_overhead.py and report_scale.py with ``--measure``, kdbench imported from the one or
the other through PYTHONPATH) on the same records, written once per size with the ``--after`` code: a grid whose
runs are all done (grid_overhead.py's light records) and report_scale.py's synthetic grid (100 classes, 30
epochs). Rounds alternate which code base goes first; each cell is the median over rounds. `uptime` is printed
before and after: on a shared machine the numbers are only comparable within one table. "cold" is the first
command after a code change (nothing cached yet); the other rows are the commands after it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent
METRICS = [  # (script, key, label)
    ("grid", "plan cpu s", "plan (`plan_grid`), CPU s"),
    ("grid", "plan s", "plan (`plan_grid`), wall s"),
    ("grid", "plan cold cpu s", "plan, cold, CPU s"),
    ("grid", "status cpu s", "`kdbench status`, CPU s"),
    ("grid", "status s", "`kdbench status`, wall s"),
    ("grid", "status cold cpu s", "`kdbench status`, cold, CPU s"),
    ("grid", "wait poll cpu s", "`--wait` poll, CPU s"),
    ("grid", "wait poll s", "`--wait` poll, wall s"),
    ("report", "load runs s", "report: load the runs, wall s"),
    ("report", "build tables s", "report: build the 4 tables, wall s"),
    ("report", "kdbench report cpu s", "`kdbench report` (tables), CPU s"),
    ("report", "kdbench report s", "`kdbench report` (tables), wall s"),
    ("report", "kdbench report cold cpu s", "`kdbench report`, cold, CPU s"),
]


def export(revision: str, folder: Path) -> Path:
    """``revision``'s tree in ``folder``, importable as kdbench (with kdbench.methods where the package expects)."""
    archive = subprocess.run(["git", "-C", str(AFTER), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "kdbench" / "methods").symlink_to("../methods")
    return folder


def python(code_base: Path, *args: str, scripts: Path) -> str:
    """Run ``python args`` in ``scripts`` (a benchmarks/ folder) with kdbench imported from ``code_base``; stdout."""
    env = {**os.environ, "PYTHONPATH": str(code_base), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, *args], cwd=scripts, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} with {code_base} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def prepare(code_base: Path, size: int, folder: Path, classes: int, epochs: int) -> tuple[str, str]:
    """Write (once, with ``code_base``) the done grid and the report records for ``size`` runs; their grid file and
    runs folder."""
    grid = folder / f"grid-{size}"
    scripts = code_base / "benchmarks"
    print(python(code_base, "-c", f"from pathlib import Path; import grid_overhead as g; "
                                  f"g.write_done_grid({size}, Path({str(grid)!r}))", scripts=scripts),
          end="", flush=True)
    seeds = max(1, round(size / 200))
    report = folder / f"report-{seeds}x{classes}x{epochs}"
    print(python(code_base, "-c", f"from pathlib import Path; import report_scale as r; "
                                  f"r.prepare(Path({str(report)!r}), {seeds}, {classes}, {epochs})", scripts=scripts),
          end="", flush=True)
    return str(grid / "grid.yaml"), str(report / "scale" / "runs")


def measure(code_base: Path, grid_file: str, runs_root: str, scripts: Path) -> dict[str, dict[str, float]]:
    """One round of both measurements (``scripts``: the benchmarks/ folder to run) with ``code_base``'s kdbench."""
    grid = python(code_base, "grid_overhead.py", "--measure", grid_file, scripts=scripts)
    report = python(code_base, "report_scale.py", "--measure", runs_root, scripts=scripts)
    return {"grid": json.loads(grid.splitlines()[-1]), "report": json.loads(report.splitlines()[-1])}


def main() -> None:
    """Prepare, measure alternately, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--after", default="HEAD", help="the commit measured against it (default HEAD)")
    parser.add_argument("--sizes", default="1000,10000,100000", help="runs per grid, comma-separated")
    parser.add_argument("--before-sizes", default="1000,10000",
                        help="sizes the old code is measured at too (it reads every record: slow at 100,000)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--classes", type=int, default=100, help="classes per report record")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of history per report record")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the records here")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    before_sizes = {int(n) for n in args.before_sizes.split(",") if n}
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="kdbench-compare-"))
    data = args.keep or scratch / "data"
    data.mkdir(parents=True, exist_ok=True)
    try:
        (scratch / "before").mkdir()
        (scratch / "after").mkdir()
        before = export(args.before, scratch / "before")
        after = export(args.after, scratch / "after")
        results: dict[tuple[str, int], list[dict[str, dict[str, float]]]] = {}
        for size in sizes:
            print(f"{size:,} runs:", flush=True)
            grid_file, runs_root = prepare(after, size, data, args.classes, args.epochs)
            bases = [("after", after)] + ([("before", before)] if size in before_sizes else [])
            for round_ in range(args.rounds):
                for name, base in bases if round_ % 2 else reversed(bases):
                    results.setdefault((name, size), []).append(
                        measure(base, grid_file, runs_root, after / "benchmarks"))
                    print(f"  round {round_ + 1} {name} done", flush=True)
        print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
        names = {rev: subprocess.run(["git", "-C", str(AFTER), "rev-parse", "--short", rev], capture_output=True,
                                     text=True).stdout.strip() for rev in (args.before, args.after)}
        print(f"\nmedian of {args.rounds} rounds; before = {args.before} ({names[args.before]}), after = {args.after} "
              f"({names[args.after]})\n")
        header = "| measurement | " + " | ".join(f"{n:,} runs before | after" for n in sizes) + " |"
        print(header + "\n|---|" + "---|---|" * len(sizes))
        for script, key, label in METRICS:
            cells = []
            for size in sizes:
                for name in ("before", "after"):
                    rounds = results.get((name, size))
                    cells.append(f"{statistics.median(r[script][key] for r in rounds):.2f}" if rounds else "—")
            print(f"| {label} | " + " | ".join(cells) + " |")
        runs = {size: int(results[("after", size)][0]["report"]["runs"]) for size in sizes}
        print("\nreport grids: " + ", ".join(f"{n:,} records" for n in runs.values())
              + f" ({args.classes} classes, {args.epochs} epochs each); status/plan grids: 1 teacher + N students")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
