"""Load a grid's run records into the runs frame (one row per run); see kdbench.report.frames for the columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.report.frames import frames_from_index, runs_frame
from kdbench.tracking.index import load_index


def load_records(runs_root: str | Path) -> pd.DataFrame:
    """Every record.json under ``runs_root`` as a row (failed runs included, with their reason); may be empty.

    Read through the grid index (kdbench.tracking.index); tuning runs are no result and are left out.
    """
    index = load_index(runs_root, with_counts=True)
    if not any(not summary.tuning for summary in index.summaries()):
        return runs_frame([])
    return frames_from_index(index, curves=False).runs
