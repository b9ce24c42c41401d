"""Many / medium / few class groups from training-set counts (docs/protocol.md, "Head / medium / tail")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdbench.report.errors import ReportError

GROUPS = ("many", "medium", "few")


@dataclass(frozen=True)
class GroupRule:
    """Thresholds on a class's training count: many above ``many_threshold``, few below ``few_threshold``."""

    name: str
    many_threshold: int
    few_threshold: int
    inclusive: bool  # OLTR: many ≥ and few ≤; Decoupling (default): many > and few <
    source: str

    def describe(self) -> str:
        """The rule as printed under every head/medium/tail table."""
        many, few = (">=", "<=") if self.inclusive else (">", "<")
        return (f"group rule '{self.name}' ({self.source}): many = train count {many} {self.many_threshold}, "
                f"few = train count {few} {self.few_threshold}, medium otherwise")

    def assign(self, counts: pd.Series | np.ndarray) -> np.ndarray:
        """'many' / 'medium' / 'few' for each training count (vectorised)."""
        counts = np.asarray(counts, dtype=float)
        if self.inclusive:
            many, few = counts >= self.many_threshold, counts <= self.few_threshold
        else:
            many, few = counts > self.many_threshold, counts < self.few_threshold
        return np.select([many, few], ["many", "few"], default="medium")


RULES = {
    "default": GroupRule("default", 100, 20, inclusive=False, source="Decoupling, Kang et al. 2020"),
    "oltr": GroupRule("oltr", 100, 20, inclusive=True, source="OLTR, Liu et al. 2019"),
}


def group_rule(name: str) -> GroupRule:
    """The rule called ``name``; ReportError listing the allowed names otherwise."""
    if name not in RULES:
        raise ReportError(f"--group-rule '{name}' is unknown; allowed: {', '.join(RULES)}")
    return RULES[name]


def group_sizes(counts: list[int] | np.ndarray, rule: GroupRule) -> dict[str, int]:
    """How many classes fall in each group (all three keys, zeros included)."""
    labels = rule.assign(counts)
    return {group: int((labels == group).sum()) for group in GROUPS}


def check_splits(counts: list[int] | np.ndarray, rule: GroupRule, what: str) -> dict[str, int]:
    """Group sizes of ``counts``; ReportError when the rule leaves every class in one group."""
    sizes = group_sizes(counts, rule)
    filled = [group for group, size in sizes.items() if size]
    if len(filled) <= 1:
        counts = np.asarray(counts)
        span = f"{counts.min()}..{counts.max()}" if counts.size else "none"
        raise ReportError(f"{what}: {rule.describe()} puts all {counts.size} classes (train counts {span}) in "
                          f"the '{filled[0] if filled else 'none'}' group; a head/medium/tail split needs at least "
                          f"two non-empty groups (try --group-rule {'oltr' if rule.name == 'default' else 'default'})")
    return sizes
