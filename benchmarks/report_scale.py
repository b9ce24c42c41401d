"""Time `kdbench report`'s tables over a large synthetic grid (default 10,000 student records + teachers).

The records are written as record.json files first (not timed; the grid index hears of each one first, as from
kdbench's own writer), then timed phase by phase: loading the runs (through the grid index where this kdbench has
one, else reading and validating every record), building the four tables, writing markdown/CSV/LaTeX; and the
whole `kdbench report RUNS --format terminal` command. Plots and the HTML report are timed separately
(plot_scale.py).

    python benchmarks/report_scale.py                           # 4 datasets x 5 pairs x 10 methods x 50 seeds
    python benchmarks/report_scale.py --runs 1000,10000,100000  # one row per size (seeds = runs / 200)
    python benchmarks/report_scale.py --seeds 5 --classes 10 --epochs 5 --keep /tmp/big
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdbench.data.longtail import long_tailed_counts
from kdbench.report.build import build_tables, write_report
from kdbench.report.groups import RULES
from kdbench.report.render import FORMATS
from kdbench.tracking.record import RECORD_NAME, EpochLog, EvalResult, RunRecord

READY = ".records-written"

DATASETS = [None, 10.0, 50.0, 100.0]  # balanced CIFAR-100 and CIFAR-100-LT at rho = 10, 50, 100
PAIRS = [("resnet56", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"),
         ("vgg13", "vgg8")]
METHODS = ["vanilla", "kd", "fitnet", "at", "rkd", "crd", "dkd", "mlld", "rrd", "trg"]


def _run_id(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _record(rng: random.Random, *, rho, teacher, student, method, seed, classes, epochs, stage="student"):
    counts = long_tailed_counts(500, classes, rho) if rho else [500] * classes
    variant = f"cifar100-lt-exp-{rho:g}" if rho else "cifar100"
    total = [100] * classes
    skill = 0.55 + 0.02 * METHODS.index(method if method in METHODS else "kd") + rng.gauss(0, 0.01)
    correct = [max(0, min(100, int(100 * skill * (0.6 + 0.4 * c / 500) + rng.gauss(0, 3)))) for c in counts]
    final = EvalResult(top1=sum(correct) / sum(total) * 100, top5=95.0, balanced_acc=sum(correct) / sum(total) * 100,
                       loss=1.0, num_images=sum(total), per_class_correct=correct, per_class_total=total)
    history = [EpochLog(epoch=e + 1, lr=0.05, train={"ce": 1.0 / (e + 1), "kd": 0.5 / (e + 1), "total": 1.5 / (e + 1),
                                                      "top1": 50.0 + e}, test_top1=final.top1 - (epochs - e - 1) * 0.1,
                        test_top5=95.0, seconds=10.0 + rng.random(), images_per_s=5000.0 + rng.random() * 100)
               for e in range(epochs)]
    arch = teacher if stage == "teacher" else student
    uses_teacher = stage == "student" and method != "vanilla"
    dataset = {"name": "cifar100", "long_tail": {"profile": "exp", "imbalance_ratio": rho} if rho else None,
               "subset_seed": 0}
    spec = {"stage": stage, "dataset": dataset, "arch": arch, "method": method, "params": {}, "seed": seed,
            "teacher": {"arch": teacher, "run_id": _run_id(rho, teacher)} if uses_teacher else None}
    return RunRecord(run_id=_run_id(stage, rho, teacher, student, method, seed), grid="scale", status="done",
                     stage=stage, method="vanilla" if stage == "teacher" else method,
                     label="teacher" if stage == "teacher" else method, arch=arch,
                     pair=f"{teacher}->{student}" if uses_teacher else arch, dataset=variant, seed=seed,
                     subset_seed=0, spec=spec, config_sha256="0" * 64, num_classes=classes, class_counts=counts,
                     final=final, history=history, student_params=1_000_000, extra_params=0,
                     peak_memory_bytes=2**30)


def write_records(root: Path, seeds: int, classes: int, epochs: int) -> int:
    """Write the synthetic grid's records under ``root``; return how many."""
    try:
        from kdbench.tracking import index
    except ImportError:  # a kdbench without the grid index
        index = None
    rng = random.Random(0)
    count = 0
    seen = set()
    for rho in DATASETS:
        for teacher, student in PAIRS:
            runs = [dict(method="teacher", seed=0, stage="teacher")]
            runs += [dict(method=m, seed=s) for m in METHODS for s in range(seeds)]
            for run in runs:
                record = _record(rng, rho=rho, teacher=teacher, student=student, classes=classes, epochs=epochs,
                                 **run)
                if record.run_id in seen:
                    continue
                seen.add(record.run_id)
                folder = root / record.run_id
                folder.mkdir(parents=True)  # scratch data: a plain write, no fsync per file as real records get
                data = record.model_dump_json().encode()
                if index is not None:
                    index.note_record(folder, record, hashlib.sha256(data).hexdigest())
                (folder / RECORD_NAME).write_bytes(data)
                count += 1
    return count


def _cpu(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def load_tables_frames(runs_root: Path):
    """The frames the tables are built from, as `kdbench report` loads them (the grid index where there is one)."""
    try:
        from kdbench.report.frames import frames_from_index
        from kdbench.tracking.index import load_index
    except ImportError:  # a kdbench without the grid index: read and validate every record
        from kdbench.report.frames import frames_from_records, read_records

        return frames_from_records(read_records(runs_root))
    return frames_from_index(load_index(runs_root, with_counts=True), curves=False)


def measure(runs_root: Path, out: Path) -> dict[str, float]:
    """Time each phase in this (fresh) process, then the `kdbench report` command in its own."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    frames = load_tables_frames(runs_root)
    timings["load runs s"] = time.perf_counter() - started
    started = time.perf_counter()
    report = build_tables(frames, RULES["default"])
    timings["build tables s"] = time.perf_counter() - started
    started = time.perf_counter()
    write_report(report, out, FORMATS)
    timings["write s"] = time.perf_counter() - started
    timings["runs"] = len(frames.runs)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "KDBENCH_CACHE_DIR": str(out / "cache")}
    for label in ("kdbench report cold", "kdbench report"):  # cold: the first after a code change
        cpu, started = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run([sys.executable, "-m", "kdbench", "report", str(runs_root.parent), "--format", "terminal",
                        "--out", str(out / "cli")], check=True, stdout=subprocess.DEVNULL, env=env, timeout=7200)
        timings[f"{label} s"] = time.perf_counter() - started
        timings[f"{label} cpu s"] = _cpu(resource.RUSAGE_CHILDREN) - cpu
    return timings


def prepare(root: Path, seeds: int, classes: int, epochs: int) -> Path:
    """Records under ``root``/scale/runs (once: reused when already there); the first read after them is timed."""
    runs_root = root / "scale" / "runs"
    if (root / READY).is_file():
        return runs_root
    started = time.perf_counter()
    n = write_records(runs_root, seeds, classes, epochs)
    print(f"  wrote {n:,} records ({classes} classes, {epochs} epochs each) in {time.perf_counter() - started:.0f} s "
          f"(not timed below)", flush=True)
    try:
        from kdbench.tracking.index import load_index
    except ImportError:
        pass
    else:
        started = time.perf_counter()
        load_index(runs_root, with_counts=True)
        print(f"  first read after the runs finished (folds {n:,} index entries): "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    (root / READY).write_text("")
    return runs_root


def main() -> None:
    """Write the records, then time each phase of the report and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=50, help="seeds per (dataset, pair, method); 50 → 10,000 runs")
    parser.add_argument("--runs", help="comma-separated sizes instead of --seeds (seeds = runs / 200 each)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=30, help="history entries per record")
    parser.add_argument("--keep", type=Path, help="write the records here and keep them (reused when present)")
    parser.add_argument("--measure", type=Path, metavar="RUNS_ROOT", help=argparse.SUPPRESS)  # one size, as JSON
    args = parser.parse_args()
    if args.measure:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(measure(args.measure, Path(out))))
        return
    sizes = [int(n) for n in args.runs.split(",")] if args.runs else [None]
    with tempfile.TemporaryDirectory() as scratch:
        rows = []
        for size in sizes:
            seeds = max(1, round(size / 200)) if size else args.seeds
            root = (args.keep or Path(scratch)) / f"report-{seeds}x{args.classes}x{args.epochs}"
            print(f"{seeds} seeds per cell:", flush=True)
            runs_root = prepare(root, seeds, args.classes, args.epochs)
            out = subprocess.run([sys.executable, __file__, "--measure", str(runs_root)], check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        columns = list(rows[0])
        print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
        for row in rows:
            print("| " + " | ".join(f"{row[c]:,.0f}" if c == "runs" else f"{row[c]:.2f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
