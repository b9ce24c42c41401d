"""Time `kdbench report`'s tables over a large synthetic grid (default 10,000 student records + teachers).

The records are written as record.json files first (not timed), then timed phase by phase: reading and validating
the JSON, building the three frames, building the four tables, writing markdown/CSV/LaTeX. Plots and the HTML
report are timed separately (kdbench plot).

    python benchmarks/report_scale.py                           # 4 datasets x 5 pairs x 10 methods x 50 seeds
    python benchmarks/report_scale.py --seeds 5 --classes 10 --epochs 5 --keep /tmp/big
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import time
from pathlib import Path

from kdbench.data.longtail import long_tailed_counts
from kdbench.report.build import build_tables, write_report
from kdbench.report.frames import frames_from_records, read_records
from kdbench.report.groups import RULES
from kdbench.report.render import FORMATS
from kdbench.tracking.record import RECORD_NAME, EpochLog, EvalResult, RunRecord

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
                (folder / RECORD_NAME).write_text(record.model_dump_json())
                count += 1
    return count


def main() -> None:
    """Write the records, then time each phase of the report and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=50, help="seeds per (dataset, pair, method); 50 → 10,000 runs")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=30, help="history entries per record")
    parser.add_argument("--keep", type=Path, help="write the records here and keep them (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        runs_root = root / "scale" / "runs"
        started = time.perf_counter()
        n = write_records(runs_root, args.seeds, args.classes, args.epochs)
        print(f"wrote {n:,} records ({args.classes} classes, {args.epochs} epochs each) in "
              f"{time.perf_counter() - started:.1f} s (not timed below)")
        timings = {}
        started = time.perf_counter()
        records = read_records(runs_root)
        timings["read + validate JSON"] = time.perf_counter() - started
        started = time.perf_counter()
        frames = frames_from_records(records)
        timings["build frames"] = time.perf_counter() - started
        started = time.perf_counter()
        report = build_tables(frames, RULES["default"])
        timings["build 4 tables"] = time.perf_counter() - started
        started = time.perf_counter()
        write_report(report, root / "scale" / "report", FORMATS)
        timings["write md/csv/tex"] = time.perf_counter() - started
        print(f"frames: runs {len(frames.runs):,} rows, per_class {len(frames.per_class):,}, "
              f"curves {len(frames.curves):,}; main table {len(report.tables[0].data):,} rows")
        for phase, seconds in timings.items():
            print(f"  {phase:<22} {seconds:7.2f} s")
        print(f"  {'total':<22} {sum(timings.values()):7.2f} s")


if __name__ == "__main__":
    main()
