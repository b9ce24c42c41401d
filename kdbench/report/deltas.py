"""Differences between methods for the plots: per-class accuracy minus a baseline's, and the reference method
(TRG) minus each other method, seed by seed.

Pairs match on the same training seed and data subset (``stats.MATCH_COLUMNS``), as the main table's Δ columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdbench.report.groups import GroupRule
from kdbench.report.stats import MATCH_COLUMNS, describe

#: The baseline of the per-class Δ plot: the first of these the pair has.
DELTA_BASELINES = ("vanilla", "kd")
#: The method the paired-difference plot is about (the registered method name; its label 'trg' when present).
REFERENCE_METHOD = "trg"
#: Per-class Δ: above this many classes, consecutive classes (by the x order) are averaged into bins.
MAX_CLASS_POSITIONS = 100
#: ... into at most this many bins.
CLASS_BINS = 50


def delta_baseline(methods: pd.Series) -> str | None:
    """The per-class Δ baseline among these method labels: vanilla, else kd, else None."""
    present = set(methods)
    return next((m for m in DELTA_BASELINES if m in present), None)


def per_class_deltas(classes: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per (method, class): mean accuracy minus the baseline's, in percentage points.

    ``classes``: per-class rows (method, run_id, seed, subset_seed, class, train_count, accuracy) of one dataset
    and pair, students only. A method sharing seeds with the baseline gets the mean of its paired differences over
    the matched seeds (n_pairs > 0, paired True); one sharing none gets the difference of the two means (n_pairs
    0, paired False). The baseline itself is absent. Columns: method, class, train_count, delta, n_pairs, paired.
    """
    columns = ["method", "class", "train_count", "delta", "n_pairs", "paired"]
    keys = ["class", *MATCH_COLUMNS]
    values = classes.dropna(subset=["accuracy"])
    base = values[values["method"] == baseline]
    others = values[values["method"] != baseline]
    if base.empty or others.empty:
        return pd.DataFrame(columns=columns)
    base_by_seed = base.groupby(keys)["accuracy"].mean().rename("_base").reset_index()
    paired = others.merge(base_by_seed, on=keys, how="inner")
    paired["_difference"] = paired["accuracy"] - paired["_base"]
    table = paired.groupby(["method", "class"])["_difference"].agg(delta="mean", n_pairs="count").reset_index()
    table["paired"] = True
    unpaired = sorted(set(others["method"]) - set(table["method"]))
    if unpaired:
        base_mean = base.groupby("class")["accuracy"].mean()
        means = others[others["method"].isin(unpaired)].groupby(["method", "class"])["accuracy"].mean().reset_index()
        means["delta"] = means["accuracy"] - means["class"].map(base_mean)
        means["n_pairs"], means["paired"] = 0, False
        table = pd.concat([table, means[["method", "class", "delta", "n_pairs", "paired"]]], ignore_index=True)
    counts = values.groupby("class")["train_count"].first()
    table["train_count"] = table["class"].map(counts)
    return table[columns]


def class_positions(deltas: pd.DataFrame, rule: GroupRule | None = None) -> tuple[pd.DataFrame, dict]:
    """x positions of the per-class Δ plot: classes by training count (largest first) when the counts differ,
    else by index; above MAX_CLASS_POSITIONS classes, consecutive ranks averaged into CLASS_BINS bins.

    Returns (rows method, position, delta, n_pairs, paired; one per method and position) and the axis facts:
    xlabel, ticks (class labels, or None when there are too many), per_position (classes per bin), and
    group_edges [(position, group)] where the rule's group changes along the x order (not binned only).
    """
    counts = deltas.drop_duplicates("class").set_index("class")["train_count"].astype(float)
    varied = counts.nunique() > 1
    order = sorted(counts.index, key=lambda c: (-counts[c], c) if varied else c)
    rank = {c: i for i, c in enumerate(order)}
    rows = deltas.assign(position=deltas["class"].map(rank))
    what = "class (sorted by training count, largest first)" if varied else "class"
    facts: dict = {"xlabel": what, "ticks": [str(c) for c in order] if len(order) <= 30 else None,
                   "per_position": 1, "group_edges": []}
    if len(order) > 30:
        facts["xlabel"] = "class rank by training count (0 = largest)" if varied else "class index"
    if len(order) > MAX_CLASS_POSITIONS:
        size = int(np.ceil(len(order) / CLASS_BINS))
        rows = rows.assign(position=rows["position"] // size)
        rows = rows.groupby(["method", "position"], sort=True).agg(
            delta=("delta", "mean"), n_pairs=("n_pairs", "min"), paired=("paired", "all")).reset_index()
        facts["per_position"] = size
        facts["xlabel"] = f"{facts['xlabel']}, mean over bins of {size} consecutive classes"
    elif varied and rule is not None:
        labels = rule.assign(np.array([counts[c] for c in order]))
        facts["group_edges"] = [(i, str(labels[i])) for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1]]
    return rows[["method", "position", "delta", "n_pairs", "paired"]], facts


def reference_label(students: pd.DataFrame) -> str | None:
    """The label of the reference method among these student runs: 'trg' if present, else the first label of a
    run whose registered method is trg, else None (no paired-difference plot)."""
    labels = sorted(set(students.loc[students["method_name"] == REFERENCE_METHOD, "method"]))
    if REFERENCE_METHOD in labels:
        return REFERENCE_METHOD
    return labels[0] if labels else None


def reference_differences(runs: pd.DataFrame, reference: str, value: str = "top1") -> pd.DataFrame:
    """Per matched seed: ``reference`` minus each other method, on the runs of one dataset and pair.

    ``runs``: student runs with method, seed, subset_seed and ``value``. Returns rows (method, seed,
    subset_seed, difference); the reference itself is absent, and so are methods with no seed in common.
    """
    keys = list(MATCH_COLUMNS)
    values = runs.dropna(subset=[value])
    ref = values[values["method"] == reference].groupby(keys)[value].mean().rename("_reference").reset_index()
    others = values[values["method"] != reference]
    paired = others.merge(ref, on=keys, how="inner")
    paired["difference"] = paired["_reference"] - paired[value]
    return paired[["method", *keys, "difference"]].reset_index(drop=True)


def summarise_differences(differences: pd.DataFrame) -> pd.DataFrame:
    """Per method: mean of the paired differences, sample std, n and the 95% t-interval (``stats.describe``)."""
    return describe(differences, ["method"], "difference")
