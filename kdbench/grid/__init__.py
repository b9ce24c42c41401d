"""Grid expansion, run status, executors, and running a whole grid."""

from kdbench.grid.expand import expand_grid
from kdbench.grid.runner import GridOutcome, grid_paths, plan_grid, run_grid, tracking_target

__all__ = ["GridOutcome", "expand_grid", "grid_paths", "plan_grid", "run_grid", "tracking_target"]
