"""Load a grid's run records into the runs frame (one row per run); see kdbench.report.frames for the columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.report.frames import frames_from_records, read_records, runs_frame


def load_records(runs_root: str | Path) -> pd.DataFrame:
    """Every record.json under ``runs_root`` as a row (failed runs included, with their reason); may be empty."""
    records = read_records(runs_root)
    results = [record for record in records if not record.spec.get("tuning")]  # tuning runs are no result
    return frames_from_records(results).runs if results else runs_frame([])
