"""`kdbench plot` and the HTML report: load a grid's frames, filter, draw and save the plots, embed them in a page."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kdbench.report.build import Report, apply_filters, parse_filters, resolve_source
from kdbench.report.errors import ReportError
from kdbench.report.figures import PLOT_FORMATS, SavedPlot, grid_colors, write_plots
from kdbench.report.frames import ReportFrames
from kdbench.report.groups import GroupRule, group_rule
from kdbench.report.html import REPORT_NAME, HtmlTable, write_html
from kdbench.report.provenance import SECTION

PLOTS_DIR = "plots"


def parse_plot_formats(text: str) -> tuple[str, ...]:
    """'png,pdf' → ('png', 'pdf'); ReportError naming the allowed formats otherwise."""
    formats = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [f for f in formats if f not in PLOT_FORMATS]
    if not formats or unknown:
        raise ReportError(f"--plot-format {text!r}: allowed formats are {', '.join(PLOT_FORMATS)} (comma-separated)")
    return formats


def run_plots(args) -> list[SavedPlot]:
    """The `kdbench plot` command (arguments as parsed by kdbench.cli): load, filter, draw, save PNG and PDF."""
    source = resolve_source(args.grid, args.results, args.data_root, args.from_mlflow, args.experiment)
    frames = source.load()
    colors = grid_colors(frames)  # from the whole grid, so a filtered slice keeps the grid's colours
    frames = apply_filters(frames, parse_filters(args.filter))
    _require_finished(frames)
    out_dir = Path(args.out) if args.out else source.grid_dir / "report" / PLOTS_DIR
    return write_plots(frames, out_dir, group_rule(args.group_rule), colors, parse_plot_formats(args.plot_format))


def _require_finished(frames: ReportFrames) -> None:
    done = frames.finished()
    if done[done["stage"] == "student"].empty:
        failed = int((frames.runs["status"] == "failed").sum())
        raise ReportError(f"grid '{frames.grid}' has no finished student runs ({failed} runs failed); nothing to plot")


def html_tables(report: Report) -> list[HtmlTable]:
    """The report's tables as the HTML page shows them: formatted cells, notes joined under the table; then the
    configuration and provenance tables under their section heading."""
    return [*(HtmlTable(table.title, table.display, "\n".join(table.notes)) for table in report.tables),
            *(HtmlTable(table.title, table.display, "\n".join(table.notes), section=SECTION)
              for table in report.provenance)]


def write_html_report(report: Report, frames: ReportFrames, out_dir: str | Path, rule: GroupRule,
                      colors: dict[str, str] | None = None, plots: Sequence[SavedPlot] | None = None) -> list[Path]:
    """Draw every plot (PNG and PDF under ``out_dir``/plots) unless given, then write ``out_dir``/report.html
    with all tables and the plots embedded; returns every file written, the page first."""
    if plots is None:
        plots = write_plots(frames, Path(out_dir) / PLOTS_DIR, rule, colors)
    intro = "\n".join(f"skipped: {reason}" for reason in report.skipped)
    page = write_html(Path(out_dir) / REPORT_NAME, report.grid, html_tables(report), plots, intro)
    return [page, *(path for plot in plots for path in plot.paths.values())]
