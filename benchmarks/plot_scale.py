"""Time `kdbench plot` and the HTML report over a large synthetic grid (report_scale.py's records).

The records (default 4 datasets x 5 pairs x 10 methods x 50 seeds = 10,000 students + teachers, 100 classes,
30 epochs) are written first and not timed; then: reading + frames, the tables, every plot as PNG and PDF, and
the self-contained HTML page with the tables and the embedded PNGs.

    python benchmarks/plot_scale.py                       # the full grid: 64 plots
    python benchmarks/plot_scale.py --seeds 5 --formats png
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from report_scale import write_records  # the sibling benchmark's synthetic grid (run from the repository root)

from kdbench.report.build import build_tables
from kdbench.report.figures import write_plots
from kdbench.report.frames import frames_from_records, read_records
from kdbench.report.groups import RULES
from kdbench.report.visual import write_html_report


def main() -> None:
    """Write the records, then time frames, tables, plots and the HTML page and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=50, help="seeds per (dataset, pair, method); 50 → 10,000 runs")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=30, help="history entries per record")
    parser.add_argument("--formats", default="png,pdf", help="plot formats (png is needed for the HTML page)")
    parser.add_argument("--keep", type=Path, help="write records and outputs here and keep them (default: temp)")
    args = parser.parse_args()
    formats = tuple(args.formats.split(","))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        runs_root = root / "scale" / "runs"
        started = time.perf_counter()
        n = write_records(runs_root, args.seeds, args.classes, args.epochs)
        print(f"wrote {n:,} records in {time.perf_counter() - started:.1f} s (not timed below)")
        timings = {}
        started = time.perf_counter()
        frames = frames_from_records(read_records(runs_root))
        timings["read records + frames"] = time.perf_counter() - started
        started = time.perf_counter()
        rule = RULES["default"]
        report = build_tables(frames, rule)
        timings["build tables"] = time.perf_counter() - started
        out = root / "scale" / "report"
        started = time.perf_counter()
        plots = write_plots(frames, out / "plots", rule, formats=formats)
        timings[f"plots ({len(plots)} x {'+'.join(formats)})"] = time.perf_counter() - started
        started = time.perf_counter()
        page = write_html_report(report, frames, out, rule, plots=plots)[-1]
        timings["HTML page"] = time.perf_counter() - started
        by_kind: dict[str, int] = {}
        for plot in plots:
            by_kind[plot.kind] = by_kind.get(plot.kind, 0) + 1
        print(f"plots by kind: {by_kind}; HTML page {page.stat().st_size / 2**20:.1f} MiB")
        for phase, seconds in timings.items():
            print(f"  {phase:<28} {seconds:7.2f} s")
        print(f"  {'total':<28} {sum(timings.values()):7.2f} s")


if __name__ == "__main__":
    main()
