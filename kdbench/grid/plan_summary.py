"""The dry-run summary: runs per stage × method × pair × dataset (total, done, to run) with estimated GPU-hours.

Rows are grouped as finely as fits in ``MAX_ROWS`` lines: all four keys, else pairs summed, else datasets
summed, and so on (``GROUPINGS``); the title says which keys were summed. Costs come from
kdbench.estimate (measured epochs of this grid's finished runs where they exist, else the FLOPs model).
"""

from __future__ import annotations

import textwrap
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from kdbench.config import GridConfig
from kdbench.estimate.runcost import (
    ASSUMED_TFLOPS,
    REFERENCE_GPU,
    CostModel,
    MeasuredRate,
    RunCost,
    cost_key,
    measured_rates,
)
from kdbench.grid.expand import TuningCell, awaiting_final_specs
from kdbench.grid.status import PlannedRun
from kdbench.runspec import RunSpec

MAX_ROWS = 40
KEYS = ("stage", "method", "pair", "dataset")
GROUPINGS: tuple[tuple[str, ...], ...] = (
    ("stage", "method", "pair", "dataset"),
    ("stage", "method", "dataset"),
    ("stage", "method", "pair"),
    ("stage", "method"),
    ("stage", "pair", "dataset"),
    ("stage", "dataset"),
    ("stage",),
)
STAGE_ORDER = {"teacher": 0, "tuning": 1, "student": 2}
AWAITING = "awaiting"  # a final run of a tuned method, planned once its tuning selection exists
WIDTH = 116


@dataclass(frozen=True)
class PlanItem:
    """One run of the plan: its spec, status (or AWAITING), whether this `kdbench run` would train it, its cost."""

    spec: RunSpec
    status: str
    to_run: bool
    cost: RunCost

    def key(self, name: str) -> str:
        """The run's value of a summary key: stage (teacher, tuning, student), method label, pair, dataset."""
        spec = self.spec
        if name == "stage":
            return "tuning" if spec.tuning else spec.stage
        if name == "method":
            return spec.display_method.split("[")[0] if spec.tuning else spec.display_method
        return spec.pair if name == "pair" else spec.dataset.variant


def would_run(run: PlannedRun, rerun: Collection[str] = ()) -> bool:
    """True when `kdbench run` with ``rerun`` trains this run: new, interrupted, failed (--rerun failed), stale done
    runs (--rerun stale); never a run another process is training."""
    if run.status in ("new", "interrupted"):
        return True
    if run.status == "failed":
        return "failed" in rerun
    return run.status == "done" and bool(run.stale) and "stale" in rerun


def plan_items(planned: list[PlannedRun], awaiting: Iterable[RunSpec], costs: CostModel,
               rerun: Collection[str] = ()) -> list[PlanItem]:
    """Every planned run, then the final runs awaiting a tuning selection, each with its cost."""
    items = [PlanItem(run.spec, run.status, would_run(run, rerun), costs.run_cost(run.spec)) for run in planned]
    return items + [PlanItem(spec, AWAITING, True, costs.run_cost(spec)) for spec in awaiting]


@dataclass
class SummaryRow:
    """One line of the summary: its key values, run counts and summed estimated seconds."""

    keys: dict[str, str]
    runs: int = 0
    done: int = 0
    to_run: int = 0
    seconds_all: float = 0.0
    seconds_to_run: float = 0.0
    unknown_all: int = 0
    unknown_to_run: int = 0
    bases: set[str] = field(default_factory=set)
    factor_assumed: bool = False

    def add(self, item: PlanItem) -> None:
        """Count ``item`` in this row."""
        self.runs += 1
        self.done += item.status == "done"
        self.to_run += item.to_run
        self.bases.add(item.cost.basis)
        self.factor_assumed |= item.cost.factor_assumed
        if item.cost.seconds is None:
            self.unknown_all += 1
            self.unknown_to_run += item.to_run
        else:
            self.seconds_all += item.cost.seconds
            self.seconds_to_run += item.cost.seconds if item.to_run else 0.0

    @property
    def basis(self) -> str:
        """model, measured, mixed (both), or unknown / partly unknown; '*' when a method factor is assumed."""
        known = self.bases - {"unknown"}
        text = "mixed" if len(known) > 1 else next(iter(known), "unknown")
        if "unknown" in self.bases and known:
            text = f"{text}, {self.unknown_all} unknown"
        return text + ("*" if self.factor_assumed else "")


def summarize(items: list[PlanItem], keys: tuple[str, ...]) -> list[SummaryRow]:
    """Rows grouped by ``keys``, in plan order (stages teacher, tuning, student; values as first seen)."""
    first_seen: dict[str, dict[str, int]] = {name: {} for name in KEYS}
    # Values ordered as the grid file lists them: student runs follow it (methods, pairs, datasets), so they go first.
    for item in sorted(items, key=lambda item: item.key("stage") != "student"):
        for name in KEYS:
            first_seen[name].setdefault(item.key(name), len(first_seen[name]))
    rows: dict[tuple[str, ...], SummaryRow] = {}
    for item in items:
        values = tuple(item.key(name) for name in keys)
        rows.setdefault(values, SummaryRow(dict(zip(keys, values, strict=True)))).add(item)

    def order(row: SummaryRow) -> tuple[int, ...]:
        return tuple(STAGE_ORDER.get(value, 9) if name == "stage" else first_seen[name][value]
                     for name, value in row.keys.items())

    return sorted(rows.values(), key=order)


def choose_grouping(items: list[PlanItem], max_rows: int = MAX_ROWS) -> tuple[str, ...]:
    """The finest of GROUPINGS whose rows fit in ``max_rows`` lines (the coarsest when none does)."""
    for keys in GROUPINGS:
        if len({tuple(item.key(name) for name in keys) for item in items}) <= max_rows:
            return keys
    return GROUPINGS[-1]


def format_hours(seconds: float, unknown: int, runs: int) -> str:
    """GPU-hours as '12.3' (more digits when small); '≥ x' when some runs' cost is unknown, 'unknown' when all."""
    if runs == 0:
        return "0"
    if unknown == runs:
        return "unknown"
    hours = seconds / 3600
    text = f"{hours:,.0f}" if hours >= 100 else f"{hours:.1f}" if hours >= 10 else f"{hours:.2f}" \
        if hours >= 0.01 or hours == 0 else "<0.01"
    return f"≥ {text}" if unknown else text


def summary_lines(items: list[PlanItem], measured: dict | None = None, max_rows: int = MAX_ROWS) -> list[str]:
    """The summary table, its total line and the estimate's footnote."""
    keys = choose_grouping(items, max_rows)
    rows = summarize(items, keys)
    total = SummaryRow({})
    for item in items:
        total.add(item)
    summed = [name + "s" for name in KEYS if name not in keys]
    title = (f"plan: {total.runs} runs by {' × '.join(keys)}"
             + (f" ({' and '.join(summed)} summed to fit in {max_rows} lines)" if summed else "")
             + "; --verbose lists every run")
    header = [*keys, "runs", "done", "to run", "est. GPU-h to run", "est. GPU-h all", "basis"]
    table = [[*row.keys.values(), str(row.runs), str(row.done), str(row.to_run),
              format_hours(row.seconds_to_run, row.unknown_to_run, row.to_run),
              format_hours(row.seconds_all, row.unknown_all, row.runs), row.basis] for row in rows]
    table.append(["total", *[""] * (len(keys) - 1), str(total.runs), str(total.done), str(total.to_run),
                  format_hours(total.seconds_to_run, total.unknown_to_run, total.to_run),
                  format_hours(total.seconds_all, total.unknown_all, total.runs), total.basis])
    widths = [max(len(line[i]) for line in [header, *table]) for i in range(len(header))]
    numeric = range(len(keys), len(header) - 1)

    def render(cells: list[str]) -> str:
        return "  " + "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w)
                                for i, (cell, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    lines = [title, render(header)]
    lines += [render(cells) for cells in table[:-1]]
    lines += ["  " + "-" * (sum(widths) + 2 * (len(widths) - 1)), render(table[-1])]
    return lines + footnote(items, measured or {})


def footnote(items: list[PlanItem], measured: dict[tuple, MeasuredRate]) -> list[str]:
    """What the estimate rests on: its assumptions, the measured cells and devices, what is unknown."""
    text = (f"est. GPU-h is an ESTIMATE, not a measurement. basis model: epochs × (train images × (3 × student + "
            f"teacher forward FLOPs per image) × method factor + test/val images × student forward FLOPs), at an "
            f"ASSUMED effective {ASSUMED_TFLOPS:g} TFLOP/s on one {REFERENCE_GPU} (reference GPU); FLOPs from "
            "kdbench/estimate/model_flops.csv (torch.utils.flop_counter), method factors relative to kd from "
            "kdbench/estimate/method_factors.csv. Not modelled: data loading, checkpoints, small networks keeping a "
            "GPU below that rate (then the estimate is low).")
    used = {cost_key(item.spec) for item in items if item.cost.basis == "measured"} & set(measured)
    if used:
        runs = sum(measured[key].runs for key in used)
        devices = sorted({device for key in used for device in measured[key].devices})
        text += (f" basis measured: seconds per training epoch of this grid's {runs} finished runs of the same "
                 f"(method, pair, dataset) × epochs, hours on the device that ran them ({', '.join(devices)}).")
    if any(item.cost.factor_assumed for item in items):
        text += " *: a method without a measured factor, assumed to cost what kd costs."
    if any(item.cost.basis == "unknown" for item in items):
        text += (" unknown: a dataset whose size needs its files (image_folder, plugin datasets) or a network "
                 "whose FLOPs could not be counted here.")
    if any(item.status == AWAITING for item in items):
        text += (" to run includes the final runs of tuned methods, planned once their tuning has selected a "
                 "configuration (estimated with the first one).")
    text += " to run: new and interrupted runs (+ failed with --rerun failed, stale with --rerun stale)."
    return textwrap.wrap(text, WIDTH, break_on_hyphens=False, break_long_words=False)


def run_line(item: PlanItem) -> str:
    """--verbose: one run, its status and id (or that it awaits its tuning selection) and its estimated hours."""
    run_id = "(after tuning)" if item.status == AWAITING else item.spec.run_id
    cost = item.cost
    hours = "unknown" if cost.seconds is None else format_hours(cost.seconds, 0, 1)
    return f"  {item.status:<11} {run_id:<16} {item.spec.describe()}  [est. {hours} GPU-h, {cost.basis}]"


def dry_run_lines(grid: GridConfig, planned: list[PlannedRun], cells: list[TuningCell], rerun: Collection[str] = (),
                  verbose: bool = False) -> list[str]:
    """What `kdbench run --dry-run` prints after the counts: the summary with estimated GPU-hours and, with
    ``verbose``, one line per run (``cells``: the grid's tuning cells, scored)."""
    measured = measured_rates((run.spec, run.summary) for run in planned)  # the grid index's: no record read
    waiting = {cell.key for cell in cells if cell.selected is None}
    items = plan_items(planned, awaiting_final_specs(grid, waiting), CostModel(measured), rerun)
    lines = ["", *summary_lines(items, measured)]
    return lines + ["", *(run_line(item) for item in items)] if verbose else lines
