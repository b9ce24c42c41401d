"""The published reference numbers shipped with kdbench (copies of ../shared/reference/*.csv, with sources)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

REFERENCE_COLUMNS = ["dataset", "teacher", "student", "method", "top1", "source", "protocol"]


@lru_cache(maxsize=1)
def published_numbers() -> pd.DataFrame:
    """Every published top-1 (%) row: dataset, teacher, student, method, top1, source, protocol."""
    folder = resources.files("kdbench.report") / "reference"
    frames = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".csv"):
            with entry.open("r") as handle:
                frames.append(pd.read_csv(handle)[REFERENCE_COLUMNS])
    return pd.concat(frames, ignore_index=True)
