"""``<grid dir>/tuning.json``: each tuned method cell's configurations, validation scores and selection.

Written by the grid runner whenever it plans a grid with a ``tuning:`` section; read by the report. Each row:
dataset, pair, method, select_on, budget, configs (list of {param: value}), scores (mean over tuning seeds, None
until every run of the configuration is done), run_ids (per configuration), selected (index or None).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdbench.tracking.atomic import atomic_write_bytes

TUNING_FILE = "tuning.json"


def write_tuning_file(grid_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Write the rows atomically."""
    atomic_write_bytes(grid_dir / TUNING_FILE, json.dumps(rows, indent=1, sort_keys=True).encode())


def read_tuning_file(grid_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``<grid dir>/tuning.json``; an empty list when the grid has none."""
    path = grid_dir / TUNING_FILE
    return json.loads(path.read_text()) if path.is_file() else []
