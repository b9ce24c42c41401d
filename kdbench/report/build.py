"""`kdbench report`: find the runs (records or MLflow), filter, combine two grids, build and write every table."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from kdbench.report.errors import ReportError
from kdbench.report.focus import focus_method, focus_table
from kdbench.report.frames import ReportFrames, frames_from_index
from kdbench.report.groups import GroupRule
from kdbench.report.provenance import PROVENANCE_NAME, provenance_json, report_provenance, section_markdown
from kdbench.report.render import FORMATS, atomic_write_text, markdown, write_table
from kdbench.report.tables import DEFAULT_GROUP_BY, Table, cost_table, head_tail_table, main_table, per_class_table
from kdbench.tracking.index import RunSummary, load_index
from kdbench.tracking.record import RECORD_NAME, RunRecord
from kdbench.tracking.tuning_file import read_tuning_file


@dataclass(frozen=True)
class ReportSource:
    """Where one grid's runs are: a runs folder of records, or an MLflow store and experiment."""

    name: str
    grid_dir: Path
    runs_root: Path | None = None
    mlflow: tuple[str, str] | None = None

    def load(self) -> ReportFrames:
        """The grid's frames; ReportError when there are no runs."""
        return self.load_with_notes()[0]

    def load_with_notes(self, curves: bool = True) -> tuple[ReportFrames, list[str]]:
        """The grid's frames and notes on its runs (stale runs: trained by other code or teacher weights).

        Runs and per-class counts come from the grid index (kdbench.tracking.index, checked against the records
        as it is read); ``curves=False`` leaves the per-epoch curves frame empty (the tables do not use it),
        which spares reading every record.
        """
        if self.mlflow is not None:
            from kdbench.report.mlflow_frames import frames_from_mlflow

            return frames_from_mlflow(*self.mlflow), []
        assert self.runs_root is not None
        index = load_index(self.runs_root, with_counts=True)
        if not len(index):
            raise ReportError(f"{self.runs_root}: no run records (record.json) found; run the grid first")
        return frames_from_index(index, curves=curves), stale_notes(index.summaries())


def stale_notes(records: list[RunRecord] | list[RunSummary]) -> list[str]:
    """One note per method whose done runs were trained by other code (or teacher weights) than today's.

    ``records``: the grid's records, or their index summaries.
    """
    from kdbench.codeid import current_code_identity, stale_reasons
    from kdbench.registry import UnknownNameError

    by_id = {record.run_id: record for record in records}
    identities: dict[str, dict[str, str] | None] = {}
    stale: dict[str, list[RunRecord | RunSummary]] = {}
    for record in records:
        if record.status != "done":
            continue
        if record.method not in identities:
            try:
                identities[record.method] = current_code_identity(record.method)
            except UnknownNameError:  # a plugin this report did not import: its code cannot be compared
                identities[record.method] = None
        current = identities[record.method]
        teacher = by_id.get(record.teacher.run_id) if record.teacher is not None else None
        if current is not None and stale_reasons(record, teacher, current):
            stale.setdefault(record.label, []).append(record)
    return [f"stale: {len(runs)} done runs of '{label}' were trained by other code or teacher weights than "
            f"today's ({', '.join(r.run_id for r in runs[:5])}{', ...' if len(runs) > 5 else ''}); "
            "`kdbench run GRID --rerun stale` retrains them" for label, runs in stale.items()]


def resolve_source(target: str, results: str | None = None, data_root: str | None = None,
                   from_mlflow: str | None = None, experiment: str | None = None) -> ReportSource:
    """A grid YAML file, a results/<grid> folder or a runs folder; with ``from_mlflow`` also a bare grid name."""
    path = Path(target)
    if path.is_file():
        from kdbench.grid import plan_cache
        from kdbench.grid.plan import grid_paths

        grid = plan_cache.load_grid(path, data_root=data_root)  # cached inside plan_cache.reading()
        paths = grid_paths(grid, results)
        if from_mlflow is not None:
            from kdbench.grid.runner import tracking_target

            default_experiment = (tracking_target(grid, paths) or (None, grid.name))[1]
            return ReportSource(grid.name, paths.grid_dir, mlflow=(from_mlflow, experiment or default_experiment))
        if not paths.runs_root.is_dir():
            raise ReportError(f"{target}: no results for grid '{grid.name}' under {paths.grid_dir}; run it first")
        return ReportSource(grid.name, paths.grid_dir, runs_root=paths.runs_root)
    if path.is_dir() and (path / "runs").is_dir():
        return _dir_source(path.resolve(), path.resolve() / "runs", from_mlflow, experiment)
    if path.is_dir() and any(path.glob(f"*/{RECORD_NAME}")):
        return _dir_source(path.resolve().parent, path.resolve(), from_mlflow, experiment)
    if from_mlflow is not None:
        return ReportSource(target, Path(results or "results").resolve() / target,
                            mlflow=(from_mlflow, experiment or target))
    raise ReportError(f"'{target}' is neither a grid file, nor a results/<grid> folder, nor a runs folder with "
                      f"{RECORD_NAME} files (with --from-mlflow it may be a grid name)")


def _dir_source(grid_dir: Path, runs_root: Path, from_mlflow: str | None, experiment: str | None) -> ReportSource:
    name = grid_dir.name
    if from_mlflow is not None:
        return ReportSource(name, grid_dir, mlflow=(from_mlflow, experiment or name))
    return ReportSource(name, grid_dir, runs_root=runs_root)


def parse_filters(items: list[str] | None) -> dict[str, list[str]]:
    """KEY=VALUE strings → {key: [values]} (a repeated key means any of its values)."""
    filters: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ReportError(f"--filter '{item}': expected KEY=VALUE, e.g. dataset=cifar100 or method=kd")
        filters.setdefault(key.strip(), []).append(value.strip())
    return filters


def _matches(column: pd.Series, key: str, values: list[str]) -> pd.Series:
    if pd.api.types.is_bool_dtype(column):
        wanted = {v.lower() in ("1", "true", "yes") for v in values}
        return column.isin(wanted)
    if pd.api.types.is_numeric_dtype(column):
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            raise ReportError(f"--filter {key}={','.join(values)}: '{key}' is numeric; give a number") from None
        return column.astype(float).isin(numbers)
    return column.astype(str).isin(values)


def apply_filters(frames: ReportFrames, filters: dict[str, list[str]]) -> ReportFrames:
    """Keep the runs whose columns match every filter; the per-class and curves frames follow by run_id."""
    if not filters:
        return frames
    runs = frames.runs
    keep = pd.Series(True, index=runs.index)
    for key, values in filters.items():
        if key not in runs.columns:
            raise ReportError(f"--filter {key}=...: unknown column '{key}'; allowed: {', '.join(runs.columns)}")
        keep &= _matches(runs[key], key, values)
    kept = runs[keep]
    if kept.empty:
        described = " ".join(f"{k}={'|'.join(v)}" for k, v in filters.items())
        raise ReportError(f"no runs of grid '{frames.grid}' match --filter {described}")
    ids = set(kept["run_id"])
    return replace(frames, runs=kept.reset_index(drop=True),
                   per_class=frames.per_class[frames.per_class["run_id"].isin(ids)].reset_index(drop=True),
                   curves=frames.curves[frames.curves["run_id"].isin(ids)].reset_index(drop=True))


def _cells(frames: ReportFrames) -> set[tuple[str, str]]:
    students = frames.finished()
    taught = students[students["teacher_arch"].notna()]
    return set(zip(taught["dataset"], taught["pair"], strict=True))


def combine_grids(first: ReportFrames, second: ReportFrames) -> ReportFrames:
    """Two grids in one set of frames, side by side.

    Run ids become '<grid>/<run id>' (the same spec may run in both grids). A method label present in both grids
    keeps its name for the first grid and becomes 'label [second grid]' for the second, so Δ vs kd / vanilla
    compares the second grid's methods against the first grid's baselines on matched seeds.
    ReportError when the grids are the same or share no (dataset, pair).
    """
    if first.grid == second.grid:
        raise ReportError(f"both reports are grid '{first.grid}'; give two different grids to compare")
    shared = _cells(first) & _cells(second)
    if not shared:
        raise ReportError(f"grids '{first.grid}' and '{second.grid}' share no (dataset, pair): "
                          f"{sorted(_cells(first))} vs {sorted(_cells(second))}; nothing to put side by side")
    clashes = set(first.runs["method"]) & set(second.runs["method"])

    def relabel(frames: ReportFrames, rename: bool) -> dict[str, pd.DataFrame]:
        out = {}
        for name in ("runs", "per_class", "curves"):
            frame = getattr(frames, name).copy()
            frame["run_id"] = frames.grid + "/" + frame["run_id"].astype(str)
            if rename:
                clash = frame["method"].isin(clashes)
                frame["method"] = np.where(clash, frame["method"] + f" [{frames.grid}]", frame["method"])
            if name == "runs" and "teacher_run_id" in frame:
                has = frame["teacher_run_id"].notna()
                frame.loc[has, "teacher_run_id"] = frames.grid + "/" + frame.loc[has, "teacher_run_id"]
            out[name] = frame
        return out

    a, b = relabel(first, False), relabel(second, True)
    return ReportFrames(grid=f"{first.grid} vs {second.grid}",
                        **{name: pd.concat([a[name], b[name]], ignore_index=True) for name in a})


@dataclass
class Report:
    """The built tables, the notes of tables that could not be built, and the files written."""

    grid: str
    tables: list[Table]
    skipped: list[str] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    provenance: list[Table] = field(default_factory=list)  # kdbench.report.provenance: configuration and provenance
    provenance_runs: list[dict] = field(default_factory=list)

    def text(self) -> str:
        """All tables as markdown, notes on the runs, what was skipped and why, the configuration and provenance
        section, and last the focus table (the method under study against each other method), so a terminal
        ends on the comparison."""
        focus = [t for t in self.tables if t.name == "focus"]
        parts = [f"# kdbench report: {self.grid}", *(markdown(t) for t in self.tables if t.name != "focus")]
        parts += self.notes
        parts += [f"skipped: {reason}" for reason in self.skipped]
        if self.provenance:
            parts.append(section_markdown(self.provenance))
        parts += [markdown(t) for t in focus]
        return "\n\n".join(parts)


def build_tables(frames: ReportFrames, rule: GroupRule, group_by: tuple[str, ...] = DEFAULT_GROUP_BY,
                 focus: str | None = None) -> Report:
    """Every table of ``frames``; ReportError when there is no finished run or the group rule cannot split.

    The head/medium/tail table is skipped (with the reason) when every dataset is balanced; a long-tailed
    dataset the rule leaves in one group is an error. The method under study (``focus``, default trg when the
    report has it) gets its comparison table last, so the terminal ends with it.
    """
    if frames.finished().empty:
        failed = int((frames.runs["status"] == "failed").sum())
        raise ReportError(f"grid '{frames.grid}' has no finished runs ({failed} failed); nothing to report")
    tables = [main_table(frames, group_by), per_class_table(frames, group_by)]
    skipped = []
    if (frames.finished()["lt_profile"] == "balanced").all():
        skipped.append("head/medium/tail table: every dataset of this report is balanced (no tail to split)")
    else:
        tables.append(head_tail_table(frames, rule, group_by))
    if (frames.finished()["stage"] == "student").any():
        tables.append(cost_table(frames, group_by))
    else:
        skipped.append("cost table: no finished student runs")
    studied = focus_method(frames, focus)
    if studied is not None:
        if not ((frames.finished()["method"] == studied) & (frames.finished()["stage"] == "student")).any():
            raise ReportError(f"--focus {studied}: no finished student runs of '{studied}' in this report; "
                              f"methods: {', '.join(sorted(set(frames.finished()['method'])))}")
        tables.append(focus_table(frames, studied, group_by))
    return Report(frames.grid, tables, skipped)


def write_report(report: Report, out_dir: str | Path, formats: tuple[str, ...]) -> Report:
    """Write each table in ``formats`` (see render.FORMATS) under ``out_dir``; terminal also writes report.md."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ReportError(f"--format {','.join(unknown)}: unknown; allowed: {', '.join(FORMATS)}, all")
    for table in report.tables:
        report.written += write_table(table, out_dir, formats)
    if report.provenance and "csv" in formats:  # the machine-readable configuration and provenance
        path = Path(out_dir) / PROVENANCE_NAME
        atomic_write_text(path, provenance_json(report.provenance, report.provenance_runs))
        report.written.append(path)
    if "terminal" in formats:
        path = Path(out_dir) / "report.md"
        atomic_write_text(path, report.text() + "\n")
        report.written.append(path)
    return report


def run_report(args) -> Report:
    """The `kdbench report` command (arguments as parsed by kdbench.cli): load, filter, combine, build, write."""
    from kdbench.report.groups import group_rule

    formats = FORMATS if args.format == "all" else (args.format,)
    group_by = tuple(c.strip() for c in args.group_by.split(",") if c.strip())
    filters = parse_filters(args.filter)
    sources = [resolve_source(target, args.results, args.data_root, args.from_mlflow, args.experiment)
               for target in [args.grid, args.grid_b] if target]
    loaded = [source.load_with_notes(curves=args.format in ("html", "all")) for source in sources]
    frames = [apply_filters(frames, filters) for frames, _ in loaded]
    combined = frames[0] if len(frames) == 1 else combine_grids(frames[0], frames[1])
    rule = group_rule(args.group_rule)
    report = build_tables(combined, rule, group_by, getattr(args, "focus", None))
    tuned = read_tuning_file(sources[0].grid_dir)
    if tuned:
        from kdbench.report.tuning_table import tuning_table

        report.tables.append(tuning_table(tuned))
    report.notes = [note for _, notes in loaded for note in notes]
    report.provenance, report.provenance_runs, unrecorded = report_provenance(
        [(source.name, source.runs_root, part.finished()["run_id"]) for source, part in zip(sources, frames,
                                                                                           strict=True)])
    report.skipped += unrecorded
    out_dir = Path(args.out) if args.out else sources[0].grid_dir / "report"
    if len(sources) == 2 and not args.out:
        out_dir = out_dir / f"vs-{sources[1].name}"
    report = write_report(report, out_dir, tuple(f for f in formats if f != "html"))
    if args.format in ("html", "all"):  # one page with every table and every plot (kdbench.report.visual)
        from kdbench.report.visual import write_html_report

        report.written += write_html_report(report, combined, out_dir, rule)
    return report
