"""Planning a grid: where its results live, its runs (expanded and checked), and each run's state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdbench.grid import plan_cache
from kdbench.grid.status import PlannedRun, plan_runs
from kdbench.grid.tuning import score_configs
from kdbench.tracking.index import GridIndex, load_index

if TYPE_CHECKING:
    from kdbench.config import GridConfig
    from kdbench.grid.expand import TuningCell


@dataclass(frozen=True)
class GridPaths:
    """Where a grid's results live."""

    results_root: Path
    grid_dir: Path
    runs_root: Path


def grid_paths(grid: GridConfig, results_root: str | Path | None = None) -> GridPaths:
    """results/<grid>/ and its runs/ folder (results root from the CLI, else the grid's `output`)."""
    root = Path(results_root or grid.output).resolve()
    grid_dir = root / grid.name
    return GridPaths(root, grid_dir, grid_dir / "runs")


def plan_grid(grid: GridConfig, results_root: str | Path | None = None) -> tuple[GridPaths, list[PlannedRun]]:
    """Expand and check the grid, then read each run's status; raises ConfigError on bad input.

    Methods with a sweep are planned as their tuning runs plus, where tuning has finished, the final runs of the
    selected configuration (``tuning_selections``). Run states come from the grid index (checked against the
    records as it is read).
    """
    paths = grid_paths(grid, results_root)
    index = load_index(paths.runs_root)
    selected = {cell.key: cell.configs[cell.selected] for cell in tuning_selections(grid, paths, index)
                if cell.selected is not None}
    specs, run_ids = plan_cache.planned_specs(grid, selected)
    return paths, plan_runs(specs, paths.runs_root, index, run_ids)


def tuning_selections(grid: GridConfig, paths: GridPaths, index: GridIndex | None = None) -> list[TuningCell]:
    """Every tuning cell of the grid, scored from its finished tuning runs (selected once all are done)."""
    cells = plan_cache.tuning_cells(grid)
    if not cells:
        return []
    index = index if index is not None else load_index(paths.runs_root)
    summaries = {run_id: index.summary(run_id) for cell in cells for ids in cell.run_ids for run_id in ids}
    return [score_configs(cell, summaries) for cell in cells]
