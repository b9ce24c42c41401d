"""The kdbench command line: run | status | cancel | report | plot | methods | models (thin: parse, call, print)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kdbench.shutdown import EXIT_INTERRUPTED, OutputClosed, ignore_stop_signals, sigterm_interrupts

EXIT_OK, EXIT_RUNS_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a command ended by SIGPIPE (`kdbench run GRID | head`)

if TYPE_CHECKING:  # kdbench.config imports torch: imported in main, where Ctrl-C is handled
    from kdbench.config import GridConfig


def load_grid(path: Path, data_root: str | None = None) -> GridConfig:
    """kdbench.config.load_grid, imported when first needed."""
    from kdbench.config import load_grid as load

    return load(path, data_root=data_root)


def _add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", type=Path, help="grid file (YAML)")
    parser.add_argument("--results", metavar="DIR", help="results root (default: the grid's `output`, 'results')")
    parser.add_argument("--data-root", metavar="PATH", help="dataset root for every dataset of the grid")


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", help="grid file (YAML), results/<grid> folder, or runs folder (with --from-mlflow: "
                                     "also a grid name)")
    parser.add_argument("grid_b", nargs="?", metavar="GRID_B", help="a second grid, put side by side with the first")
    parser.add_argument("--results", metavar="DIR", help="results root (default: the grid's `output`, 'results')")
    parser.add_argument("--data-root", metavar="PATH", help="dataset root for every dataset of the grid")
    parser.add_argument("--from-mlflow", metavar="URI", help="build the tables from this MLflow store alone")
    parser.add_argument("--experiment", metavar="NAME", help="MLflow experiment (default: the grid's)")
    parser.add_argument("--format", default="terminal", choices=["terminal", "csv", "latex", "html", "all"],
                        help="terminal (markdown, also saved as .md), csv, latex (booktabs), html (one page with "
                             "every table and plot) or all")
    parser.add_argument("--group-rule", default="default", choices=["default", "oltr"],
                        help="many/medium/few: default many>100, few<20 (Decoupling); oltr many>=100, few<=20")
    parser.add_argument("--filter", action="append", metavar="KEY=VALUE",
                        help="keep runs whose column KEY equals VALUE (repeatable; a repeated KEY means any value)")
    parser.add_argument("--group-by", metavar="COLS", default="dataset,pair,method",
                        help="comma-separated cell columns of every table (default dataset,pair,method)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: results/<grid>/report)")
    parser.add_argument("--focus", metavar="METHOD", help="the method under study, compared with each other method "
                                                        "in the last table (default: trg when the grid has it)")


def _add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", help="grid file (YAML), results/<grid> folder, or runs folder (with --from-mlflow: "
                                     "also a grid name)")
    parser.add_argument("--results", metavar="DIR", help="results root (default: the grid's `output`, 'results')")
    parser.add_argument("--data-root", metavar="PATH", help="dataset root for every dataset of the grid")
    parser.add_argument("--from-mlflow", metavar="URI", help="plot from this MLflow store alone")
    parser.add_argument("--experiment", metavar="NAME", help="MLflow experiment (default: the grid's)")
    parser.add_argument("--group-rule", default="default", choices=["default", "oltr"],
                        help="many/medium/few: default many>100, few<20 (Decoupling); oltr many>=100, few<=20")
    parser.add_argument("--filter", action="append", metavar="KEY=VALUE",
                        help="keep runs whose column KEY equals VALUE (repeatable; a repeated KEY means any value)")
    parser.add_argument("--plot-format", default="png,pdf", metavar="FORMATS", help="png, pdf or png,pdf (default)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: results/<grid>/report/plots)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `kdbench` command."""
    parser = argparse.ArgumentParser(prog="kdbench", description="Knowledge-distillation benchmark harness.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train every teacher and student of a grid that is not done yet")
    _add_grid_arguments(run)
    run.add_argument("--executor", choices=["local", "debug", "slurm"], help="override the grid's executor")
    run.add_argument("--wait", action="store_true", help="slurm: block with progress lines until all runs ended")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (runs and estimated GPU-hours per stage × method × pair × dataset) and exit")
    run.add_argument("--verbose", action="store_true", help="with --dry-run: also list every run")
    run.add_argument("--rerun", action="append", choices=["failed", "stale"], default=[],
                     help="also train again the runs that failed, or the done runs trained by other code or teacher "
                          "weights (stale); repeatable")
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    status = commands.add_parser("status", help="done / failed / interrupted / new runs per stage")
    _add_grid_arguments(status)
    cancel = commands.add_parser("cancel", help="scancel every Slurm job of this grid still queued or running")
    _add_grid_arguments(cancel)
    sync = commands.add_parser("sync", help="make the grid's MLflow runs agree with its run records (create, complete)")
    _add_grid_arguments(sync)
    report = commands.add_parser("report", help="main, per-class, head/medium/tail and cost tables of a grid")
    _add_report_arguments(report)
    plot = commands.add_parser("plot", help="PNG and PDF plots of a grid: top-1 with intervals and seeds, TRG minus "
                                            "each method, per-class and its Δ vs vanilla, many/medium/few, "
                                            "accuracy against ρ, training curves")
    _add_plot_arguments(plot)
    methods = commands.add_parser("methods", help="list the registered methods with their needs and paper")
    methods.add_argument("--markdown", action="store_true", help="print docs/methods.md: every method's loss, "
                                                                "defaults, needs and source, from its code")
    commands.add_parser("models", help="list the registered models")
    return parser


def _print_plan(grid: GridConfig, results_root: str | None, rerun: list[str] | None = None) -> list:
    return _plan_and_print(grid, results_root, rerun)[1]


def _plan_and_print(grid: GridConfig, results_root: str | None, rerun: list[str] | None = None) -> tuple:
    """Plan the grid and print its counts, stale warnings and tuning lines; return (paths, planned, tuning cells)."""
    from kdbench.grid import plan_grid
    from kdbench.grid.plan import tuning_selections
    from kdbench.grid.status import STATUSES, stale_summary, status_counts

    paths, planned = plan_grid(grid, results_root)
    counts = status_counts(planned)
    for stage in ("teacher", "student"):
        c = counts[stage]
        stale = f" ({c['stale']} stale)" if c["stale"] else ""
        print(f"{stage} runs: {sum(c[s] for s in STATUSES)} ({c['done']} done{stale}, {c['failed']} failed, "
              f"{c['running']} running, {c['interrupted']} interrupted, {c['new']} new)")
    retraining = "stale" in (rerun or [])
    for line in stale_summary(planned, retraining):
        print(f"{'stale' if retraining else 'warning'}: {line}")
    cells = tuning_selections(grid, paths)
    for line in tuning_lines(grid, paths, cells):
        print(line)
    print(f"results: {paths.grid_dir}")
    return paths, planned, cells


def tuning_lines(grid: GridConfig, paths, cells: list | None = None) -> list[str]:
    """The plan's tuning stage: per method cell, configurations, budget, seeds, and the selection or its wait
    (``cells``: the grid's tuning_selections when already read)."""
    from kdbench.grid.plan import tuning_selections

    cells = tuning_selections(grid, paths) if cells is None else cells
    if not cells or grid.tuning is None:
        return []
    largest = max(len(cell.configs) for cell in cells)
    lines = [f"tuning (stage 1): up to {grid.tuning.budget} configurations per method × seeds "
             f"{grid.tuning.seeds} on the validation split, selected on {grid.tuning.select_on}; the selected "
             f"configuration then trains on seeds {grid.seeds} (stage 2)"]
    for cell in cells:
        done = sum(score is not None for score in cell.scores)
        fewer = f" [flagged: fewer than the {largest} of other methods]" if len(cell.configs) < largest else ""
        if cell.selected is not None:
            values = ", ".join(f"{k}={v}" for k, v in cell.configs[cell.selected].items())
            outcome = f"selected {values} ({cell.select_on} {cell.scores[cell.selected]:.2f})"
        else:
            outcome = f"{done}/{len(cell.configs)} configurations done; final runs wait for the selection"
        lines.append(f"  {cell.method} {cell.pair} {cell.dataset}: {len(cell.configs)} configurations{fewer}; "
                     f"{outcome}")
    return lines


def _cmd_run(args: argparse.Namespace) -> int:
    from kdbench.engine.distributed import dist_info_from_env

    if dist_info_from_env().is_main:
        return _run(args)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # torchrun/srun ranks > 0: rank 0 prints
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from kdbench.grid import grid_paths, run_grid, tracking_target

    grid = load_grid(args.grid, data_root=args.data_root)
    if args.device is not None:
        from kdbench.config import ConfigError, check_device

        try:
            check_device(args.device)
        except ValueError as error:
            raise ConfigError(f"--device: {error}") from None
    if (args.executor or grid.executor.kind) == "slurm" and not args.dry_run:
        from kdbench.grid.slurm_cli import require_sbatch

        require_sbatch()
    from kdbench.grid.preflight import preflight_problems

    problems = preflight_problems(grid)
    if problems and not args.dry_run:
        from kdbench.config import ConfigError

        raise ConfigError("\n".join(f"{args.grid}: {line}" for line in problems))
    _, planned, cells = _plan_and_print(grid, args.results, args.rerun)
    for line in problems:
        print(f"not ready: {line} (a real run stops here, before anything is submitted)")
    if args.dry_run:
        if (args.executor or grid.executor.kind) == "slurm":
            from kdbench.clusterconf import ClusterConfig
            from kdbench.grid.slurm_submit import time_limit_warnings

            for warning in time_limit_warnings(grid.cluster or ClusterConfig(), planned):
                print(f"warning: {warning}")
        from kdbench.grid.plan_summary import dry_run_lines

        for line in dry_run_lines(grid, planned, cells, args.rerun, args.verbose):
            print(line)
        return EXIT_OK
    if (args.executor or grid.executor.kind) == "slurm":
        from kdbench.cli_slurm import run_on_slurm

        return run_on_slurm(grid, args)
    outcome = run_grid(grid, args.grid.read_text(), results_root=args.results, executor=args.executor,
                       rerun=args.rerun, device=args.device)
    paths = grid_paths(grid, args.results)
    print(f"\nran {len(outcome.ran)} runs in {outcome.seconds:.0f} s ({len(outcome.failed)} failed); "
          f"{outcome.skipped_done} already done", end="")
    print(f"; {outcome.skipped_failed} failed earlier (use --rerun failed)" if outcome.skipped_failed else "")
    for busy in outcome.busy:
        print(f"skipped: {busy.describe()}")
    for spec in outcome.blocked:
        print(f"blocked ({outcome.blocked_because.get(spec.run_id, 'teacher not done')}): {spec.run_id} "
              f"{spec.describe()}")
    for record in outcome.failed:
        print(f"failed: {record.run_id} {record.label} {record.pair} {record.dataset} seed {record.seed}: "
              f"{record.reason}")
    if outcome.resource_error is not None:
        print(f"error: {outcome.resource_error}; the grid stopped with {outcome.not_started} runs untrained. "
              "Free space or fix the folder, then run the same command again: runs resume from their last "
              "checkpoints", file=sys.stderr)
        return EXIT_RUNS_FAILED
    _print_report(paths.runs_root)
    print(f"\nrecords: {paths.runs_root}")
    target = tracking_target(grid, paths)
    if target is not None:
        print(f"MLflow:  {target[0]} (experiment '{target[1]}'; view with `mlflow ui --backend-store-uri {target[0]}`)")
        sync_after_run(grid, paths, args.grid)
    if outcome.failed_remaining and not outcome.failed:
        print(f"{outcome.failed_remaining} runs of this grid have failed (use --rerun failed)")
    return EXIT_RUNS_FAILED if outcome.failed_remaining or outcome.blocked else EXIT_OK


def sync_after_run(grid: GridConfig, paths, grid_file: Path) -> None:
    """One line: what `kdbench sync` did at the end of a run; a failure is a warning, never an exit code."""
    from kdbench.engine.distributed import dist_info_from_env
    from kdbench.grid.runner import sync_grid

    if not dist_info_from_env().is_main:  # torchrun/srun: rank 0 alone talks to MLflow
        return
    try:
        result = sync_grid(grid, paths)
    except Exception as error:
        reason = (str(error).splitlines() or [""])[0][:200]
        print(f"warning: MLflow sync failed ({type(error).__name__}: {reason}); the records are complete; "
              f"retry with `kdbench sync {grid_file}`")
        return
    if result is not None:
        print(f"MLflow sync: {result.summary()}")


def _print_report(runs_root: Path) -> None:
    from kdbench.report import format_summary, load_records, summary_table

    records = load_records(runs_root)
    print("\nfinal-epoch top-1 (%), mean ± sample std over seeds:")
    print(format_summary(summary_table(records)))


def _cmd_status(args: argparse.Namespace) -> int:
    from kdbench.grid import plan_cache

    with plan_cache.reading():  # the grid and its runs as validated and expanded before: no torch import
        return _status(args)


def _status(args: argparse.Namespace) -> int:
    from kdbench.grid import grid_paths, plan_cache
    from kdbench.grid.manifest import slurm_root

    grid = plan_cache.load_grid(args.grid, data_root=args.data_root)
    if slurm_root(grid_paths(grid, args.results).grid_dir).is_dir():
        from kdbench.cli_slurm import slurm_status

        return slurm_status(grid, args)
    planned = _print_plan(grid, args.results)
    for run in planned:
        if run.status == "running":
            print(f"  running {run.run_id} {run.spec.describe()}: "
                  f"{run.holder.describe() if run.holder else 'holder unknown'}")
        elif run.status == "failed" and run.summary is not None:
            print(f"  failed {run.run_id} {run.spec.describe()}: {run.summary.reason}")
        elif run.stale:
            print(f"  stale {run.run_id} {run.spec.describe()}: {', '.join(run.stale)} changed")
    return EXIT_RUNS_FAILED if any(run.status == "failed" for run in planned) else EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from kdbench.grid import plan_cache

    with plan_cache.reading():  # a grid file as validated before: no torch import
        from kdbench.report.build import run_report

        report = run_report(args)
    if args.format in ("terminal", "all"):
        print(report.text())
    else:
        for note in report.notes:
            print(note)
    print(f"\nwrote {len(report.written)} files under {report.written[0].parent}" if report.written else "")
    html = [path for path in report.written if path.suffix == ".html"]
    if html:
        print(f"HTML report: {html[0]}")
    return EXIT_OK


def _cmd_plot(args: argparse.Namespace) -> int:
    from kdbench.report.visual import run_plots

    saved = run_plots(args)
    for plot in saved:
        print(f"{plot.kind:<9} {', '.join(str(path) for path in plot.paths.values())}")
    print(f"\nwrote {len(saved)} plots" + (f" under {next(iter(saved[0].paths.values())).parent}" if saved else ""))
    return EXIT_OK


def _cmd_methods(args: argparse.Namespace) -> int:
    if args.markdown:
        from kdbench.docs import methods_markdown

        print(methods_markdown(), end="")
        return EXIT_OK
    import kdbench.methods  # noqa: F401
    from kdbench.loss import METHODS

    for name in METHODS.names():
        method = METHODS.get(name)
        print(f"{name}: {method.paper}")
        print(f"    needs: {method.needs.describe()}")
        print(f"    defaults: {method.defaults}")
    return EXIT_OK


def _cmd_models(_: argparse.Namespace) -> int:
    from kdbench.models import model_info, model_names

    for name in model_names(include_unlisted=True):  # kdbench's models and the ViT presets; any timm:<name> too
        info = model_info(name)
        print(f"{name:<14} {info.family:<12} input {info.in_channels}×{info.input_size}×{info.input_size}  "
              f"{info.description}")
    return EXIT_OK


def _cmd_sync(args: argparse.Namespace) -> int:
    from kdbench.grid import grid_paths
    from kdbench.grid.runner import sync_grid

    grid = load_grid(args.grid, data_root=args.data_root)
    try:
        result = sync_grid(grid, grid_paths(grid, args.results))
    except Exception as error:  # the store's own failure: one line, the records are untouched
        if isinstance(error, OSError):
            raise  # disk full / read-only: main() names the path and the cause
        print(f"error: MLflow sync failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}",
              file=sys.stderr)
        return EXIT_RUNS_FAILED
    if result is None:
        from kdbench.config import ConfigError

        raise ConfigError(f"{args.grid}: tracking.mlflow is false; nothing to sync")
    print(f"MLflow sync: {result.summary()}")
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace) -> int:
    from kdbench.cli_slurm import cancel_grid

    return cancel_grid(load_grid(args.grid, data_root=args.data_root), args)


COMMANDS = {"run": _cmd_run, "status": _cmd_status, "cancel": _cmd_cancel, "report": _cmd_report, "plot": _cmd_plot,
            "methods": _cmd_methods, "models": _cmd_models, "sync": _cmd_sync}


class _StdoutHandler(logging.StreamHandler):
    """Log lines on stdout; a closed stdout stops the command (OutputClosed) instead of printing a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, BrokenPipeError):
            raise OutputClosed() from error
        super().handleError(record)


def _discard_stdout() -> None:
    """Point stdout at /dev/null: its reader is gone, and flushing at exit must not raise again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kdbench` console script; returns the exit code.

    Ctrl-C and SIGTERM stop the command with exit code 130 and one line on stderr (runs resume from their last
    checkpoint when the same command runs again); stdout closed by its reader (`| head`) ends it quietly with
    141, as SIGPIPE would.
    """
    try:
        with sigterm_interrupts():
            return _main(argv)
    except KeyboardInterrupt:
        ignore_stop_signals()  # stopping: a second Ctrl-C must not end in a traceback
        print("interrupted; re-run the same command to resume from the last checkpoints", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (BrokenPipeError, OutputClosed):
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from kdbench.config_errors import ConfigError  # kdbench.config's, without importing the grid schema yet

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow resets its logger level when imported
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_StdoutHandler(sys.stdout)])
    logging.getLogger("kdbench").setLevel(logging.INFO)
    for noisy in ("alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = COMMANDS[args.command](args)
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # the machine's failure (disk full, read-only or forbidden folder): one line
        from kdbench.tracking.resources import as_resource_error

        resource = as_resource_error(error)
        if resource is None:
            raise
        print(f"error: {resource}", file=sys.stderr)
        return EXIT_RUNS_FAILED
    sys.stdout.flush()  # a closed pipe is caught in main, not reported by the interpreter at exit
    return code

if __name__ == "__main__":
    sys.exit(main())
