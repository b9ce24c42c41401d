"""Grid expansion, run status, executors, and running a whole grid.

The names below are imported on first use (PEP 562): ``kdbench status`` plans a grid through
``kdbench.grid.plan`` without importing the runner (torch, MLflow).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdbench.grid.expand import expand_grid
    from kdbench.grid.plan import grid_paths, plan_grid
    from kdbench.grid.runner import GridOutcome, run_grid, tracking_target

__all__ = ["GridOutcome", "expand_grid", "grid_paths", "plan_grid", "run_grid", "tracking_target"]
_HOMES = {"expand_grid": "kdbench.grid.expand", "grid_paths": "kdbench.grid.plan", "plan_grid": "kdbench.grid.plan",
          "GridOutcome": "kdbench.grid.runner", "run_grid": "kdbench.grid.runner",
          "tracking_target": "kdbench.grid.runner"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'kdbench.grid' has no attribute '{name}'")
