"""Time `kdbench plot` and the HTML report over a large synthetic grid (report_scale.py's records).

The records (default 4 datasets x 5 pairs x 10 methods x 50 seeds = 10,000 students + teachers, 100 classes,
30 epochs) are written first and not timed; then: reading + frames, the tables, every plot as PNG and PDF, and
the self-contained HTML page with the tables and the embedded PNGs. Each plot is timed from the moment the
previous one is saved (its share of the data preparation, drawing and saving), in wall-clock and CPU seconds:
on a busy machine the CPU seconds are the closer estimate of an idle machine's wall time. The load average is
printed beside them. ``--profile`` adds the plots' cProfile (the functions with the most own time).

    python benchmarks/plot_scale.py                       # the full grid: 104 plots
    python benchmarks/plot_scale.py --seeds 5 --formats png --profile
    python benchmarks/plot_scale.py --seeds 500 --keep /tmp/big   # 100,000 runs; a second call reuses the records
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path

from report_scale import prepare  # the sibling benchmark's synthetic grid (run from the repository root)

from kdbench.report.build import build_tables
from kdbench.report.figures import SavedPlot, grid_plots, save_plot
from kdbench.report.frames import load_frames
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
    parser.add_argument("--profile", action="store_true", help="cProfile the plots and print the top functions")
    args = parser.parse_args()
    formats = tuple(args.formats.split(","))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        runs_root = prepare(root, args.seeds, args.classes, args.epochs)  # a --keep folder's records are reused
        timings = {}
        started = time.perf_counter()
        frames = load_frames(runs_root)  # as `kdbench report` loads them: the grid index, curves from the records
        timings["load frames"] = time.perf_counter() - started
        print(f"{len(frames.runs):,} runs")
        started = time.perf_counter()
        rule = RULES["default"]
        report = build_tables(frames, rule)
        timings["build tables"] = time.perf_counter() - started
        out = root / "scale" / "report"
        started = time.perf_counter()
        load = os.getloadavg()
        profile = cProfile.Profile() if args.profile else None
        plots, per_plot = _timed_plots(frames, out / "plots", rule, formats, profile)
        timings[f"plots ({len(plots)} x {'+'.join(formats)})"] = time.perf_counter() - started
        started = time.perf_counter()
        page = write_html_report(report, frames, out, rule, plots=plots)[0]
        timings["HTML page"] = time.perf_counter() - started
        by_kind: dict[str, int] = {}
        for plot in plots:
            by_kind[plot.kind] = by_kind.get(plot.kind, 0) + 1
        print(f"plots by kind: {by_kind}; HTML page {page.stat().st_size / 2**20:.1f} MiB")
        for phase, seconds in timings.items():
            print(f"  {phase:<28} {seconds:7.2f} s")
        print(f"  {'total':<28} {sum(timings.values()):7.2f} s")
        print(f"seconds per plot (load average {load[0]:.1f} before the plots, {os.getloadavg()[0]:.1f} after; "
              f"{os.cpu_count()} CPUs):")
        print(f"  {'kind':<16} {'n':>4} {'wall mean':>10} {'wall max':>9} {'cpu mean':>9} {'cpu max':>8}")
        for kind in dict.fromkeys(kind for kind, _, _ in per_plot):
            walls = [w for k, w, _ in per_plot if k == kind]
            cpus = [c for k, _, c in per_plot if k == kind]
            print(f"  {kind:<16} {len(walls):4d} {sum(walls) / len(walls):10.2f} {max(walls):9.2f} "
                  f"{sum(cpus) / len(cpus):9.2f} {max(cpus):8.2f}")
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)


def _timed_plots(frames, out_dir: Path, rule, formats: tuple[str, ...],
                 profile: cProfile.Profile | None) -> tuple[list[SavedPlot], list[tuple[str, float, float]]]:
    """Draw and save every plot; (kind, wall s, CPU s) of each, counted from the previous plot's save."""
    saved, per_plot = [], []
    plots = grid_plots(frames, rule)
    while True:
        wall, cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        try:
            plot = next(plots)
        except StopIteration:
            break
        finally:
            if profile is not None:
                profile.disable()
        if profile is not None:
            profile.enable()
        saved.append(save_plot(plot, out_dir, formats))
        if profile is not None:
            profile.disable()
        per_plot.append((plot.kind, time.perf_counter() - wall, time.process_time() - cpu))
    return saved, per_plot


if __name__ == "__main__":
    main()
