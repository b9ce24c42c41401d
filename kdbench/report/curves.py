"""Training curves for the plots: loss terms unweighted, learning-rate drops, and means over seeds.

Every method logs its loss terms already multiplied by their weights (``kdbench.loss.DistillLoss``), so kd's CE
at ce_weight 0.1 would look ten times lower than vanilla's. :func:`unweighted_curves` divides each logged term by
the factor its method declares (``DistillLoss.term_scales``, from ``term_weights`` and the run's hyper-parameters
in ``runs.method_params``); the records are never changed. ``total`` stays the weighted objective the optimiser
minimised. A term whose method declares no weight for it is kept as logged and named in ``as_logged``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: Columns of the curves frame that are training-loop numbers but not loss terms.
NOT_LOSS = {"train_top1"}
#: The objective: the sum of the weighted terms, never divided.
TOTAL = "total"
#: At most this many learning-rate drops are marked; more mean a schedule without steps.
MAX_LR_MARKS = 12


@dataclass
class UnweightedCurves:
    """Curve rows with each loss term divided by its weight; which (method, term) stayed as logged; notes."""

    frame: pd.DataFrame
    terms: list[str]
    as_logged: dict[str, set[str]] = field(default_factory=dict)  # term → method labels plotted as logged
    notes: dict[str, str] = field(default_factory=dict)  # method label → its term_weight_note


def loss_terms(curves: pd.DataFrame) -> list[str]:
    """The loss-term names of a curves frame (``train_<term>`` columns, training accuracy left out)."""
    return [c.removeprefix("train_") for c in curves.columns if c.startswith("train_") and c not in NOT_LOSS]


def _method_class(name: str) -> Any:
    """The registered DistillLoss class of ``name``, or None when it is not importable here (a plugin)."""
    import kdbench.methods  # noqa: F401  (registers the built-in methods)
    from kdbench.loss import METHODS
    from kdbench.registry import UnknownNameError

    try:
        return METHODS.get(name)
    except UnknownNameError:
        return None


def unweighted_curves(curves: pd.DataFrame, runs: pd.DataFrame) -> UnweightedCurves:
    """``curves`` (rows of the runs in ``runs``) with every ``train_<term>`` divided by its weight at that epoch.

    ``runs`` gives each run's method_name and method_params (the resolved hyper-parameters as JSON). A weight of
    0 makes the term NaN (the term is left out). Runs of a method this process cannot import keep their terms
    as logged.
    """
    terms = loss_terms(curves)
    settings = runs[["run_id", "method_name", "method_params", "method"]].drop_duplicates("run_id")
    frame = curves.merge(settings.rename(columns={"method": "_label"}), on="run_id", how="left")
    epochs = frame["epoch"].to_numpy()
    as_logged: dict[str, set[str]] = {}
    notes: dict[str, str] = {}
    labels = frame["_label"].to_numpy()
    divided = {term: frame[f"train_{term}"].to_numpy(float).copy() for term in terms if term != TOTAL}
    for (name, params), rows in frame.groupby(["method_name", "method_params"], sort=True).indices.items():
        method_class = _method_class(name)
        scales = method_class.term_scales(json.loads(params), epochs[rows]) if method_class is not None else {}
        note = getattr(method_class, "term_weight_note", "")
        if note:
            notes.update(dict.fromkeys(set(labels[rows]), note))
        for term, values in divided.items():
            logged = values[rows]
            if np.isnan(logged).all():
                continue
            if term in scales:
                scale = scales[term]
                with np.errstate(divide="ignore", invalid="ignore"):
                    values[rows] = np.where(scale != 0, logged / scale, np.nan)
            else:
                as_logged.setdefault(term, set()).update(labels[rows])
    out = frame.drop(columns=["method_name", "method_params", "_label"])
    for term, values in divided.items():
        out[f"train_{term}"] = values
    kept = [t for t in terms if t == TOTAL or not np.isnan(out[f"train_{t}"].to_numpy(float)).all()]
    out = out.drop(columns=[f"train_{t}" for t in terms if t not in kept])
    return UnweightedCurves(out, kept, as_logged, notes)


def lr_drops(curves: pd.DataFrame) -> list[int]:
    """Epochs after which the logged learning rate fell (a step schedule's milestones), over all runs given.

    An epoch's ``lr`` is the rate it trained with, so a drop between epochs m and m + 1 is milestone m.
    Empty when there are more than MAX_LR_MARKS drops (not a step schedule).
    """
    ordered = curves[["run_id", "epoch", "lr"]].sort_values(["run_id", "epoch"])
    run = ordered["run_id"].to_numpy()
    lr = ordered["lr"].to_numpy(float)
    epoch = ordered["epoch"].to_numpy()
    falls = (run[1:] == run[:-1]) & (lr[1:] < lr[:-1]) & (epoch[1:] == epoch[:-1] + 1)
    drops = sorted({int(e) for e in epoch[:-1][falls]})
    return drops if len(drops) <= MAX_LR_MARKS else []


def curve_long(history: pd.DataFrame, terms: list[str]) -> pd.DataFrame:
    """Long rows (method, run_id, epoch, term, value): test_top1, val_top1 and each loss term, NaN rows dropped."""
    columns = ["test_top1", "val_top1", *[f"train_{t}" for t in terms]]
    long = history.melt(id_vars=["method", "run_id", "epoch"], value_vars=columns, var_name="term")
    long = long[long["value"].notna()]
    long["term"] = long["term"].str.removeprefix("train_")
    return long.reset_index(drop=True)


def curve_summary(long: pd.DataFrame) -> pd.DataFrame:
    """Per (method, term, epoch): mean, sample std (ddof=1; NaN for one seed), n (runs), min and max."""
    grouped = long.groupby(["method", "term", "epoch"], sort=True)["value"]
    return grouped.agg(mean="mean", std="std", n="count", low="min", high="max").reset_index()
