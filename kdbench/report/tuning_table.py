"""The tuning table: each tuned method's budget, configurations, validation scores and the selected values."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from kdbench.numfmt import param_text
from kdbench.report.tables import Table


def tuning_table(rows: list[dict[str, Any]]) -> Table:
    """One row per (dataset, pair, method, configuration) of ``tuning.json``; the selected configuration marked.

    A method trained on fewer configurations than the most-tuned method of the same (dataset, pair) is flagged:
    its comparison with the others is not at equal tuning budget.
    """
    records = []
    for cell in rows:
        for index, config in enumerate(cell["configs"]):
            score = cell["scores"][index] if index < len(cell["scores"]) else None
            records.append({"dataset": cell["dataset"], "pair": cell["pair"], "method": cell["method"],
                            "budget": cell["budget"], "configs": len(cell["configs"]),
                            "config": ", ".join(f"{k}={param_text(v)}" for k, v in config.items()),
                            "select_on": cell["select_on"], "score": math.nan if score is None else score,
                            "selected": cell["selected"] == index})
    data = pd.DataFrame(records, columns=["dataset", "pair", "method", "budget", "configs", "config", "select_on",
                                          "score", "selected"])
    most = data.groupby(["dataset", "pair"])["configs"].transform("max")
    data["fewer_configs"] = data["configs"] < most
    display = data[["dataset", "pair", "method", "config"]].copy()
    display["configs / budget"] = [f"{c} / {b}" + (" ‡" if fewer else "") for c, b, fewer in
                                   zip(data["configs"], data["budget"], data["fewer_configs"], strict=True)]
    display["validation score"] = [f"{s:.2f}" if math.isfinite(s) else "not done" for s in data["score"]]
    display["selected"] = ["✓" if chosen else "" for chosen in data["selected"]]
    notes = ["tuning: each configuration trained on the validation split only (tuning seeds), scored by the mean "
             f"of {', '.join(sorted(set(data['select_on'])))}; the selected one (best score, ties: first in sweep "
             "order) is what the method's final runs use",
             "‡ fewer configurations than the most-tuned method of the same dataset and pair: not an equal budget"]
    return Table("tuning", "Tuning on validation (stage 1)", data, display, notes)
