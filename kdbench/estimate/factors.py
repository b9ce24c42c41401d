"""Per-method cost factors: a method's training step relative to kd's on the same pair (method_factors.csv)."""

from __future__ import annotations

import csv
import functools
from importlib import resources
from typing import NamedTuple

TABLE_NAME = "method_factors.csv"


class MethodFactor(NamedTuple):
    """A method's step time relative to kd, and whether the table has a row for it (else 1.0 is assumed)."""

    factor: float
    listed: bool


@functools.lru_cache(maxsize=1)
def factor_table() -> dict[str, float]:
    """method → step time relative to kd, as shipped in method_factors.csv."""
    text = resources.files("kdbench.estimate").joinpath(TABLE_NAME).read_text()
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    table = {}
    for row in rows:
        factor = float(row["factor"])
        if not factor > 0:
            raise ValueError(f"{TABLE_NAME}: method {row['method']}: factor {row['factor']} must be > 0")
        table[row["method"]] = factor
    return table


def method_factor(method: str) -> MethodFactor:
    """The method's factor; a method without a row costs what kd costs (1.0, ``listed`` False)."""
    found = factor_table().get(method)
    return MethodFactor(found, True) if found is not None else MethodFactor(1.0, False)
