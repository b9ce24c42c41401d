"""The mean ± std table of final-epoch top-1 per dataset variant, pair and method."""

from __future__ import annotations

import pandas as pd

from kdbench.report.stats import describe
from kdbench.report.tables import place_runs

GROUP = ["dataset", "pair", "method"]


def summary_table(records: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """Finished runs grouped by dataset, pair and method: mean, sample std (ddof=1) and n of ``metric``.

    Runs sit in the pairs of the report's tables (:func:`kdbench.report.tables.place_runs`): a student trained
    without a teacher under every pair whose student it is, a teacher as method 'teacher' under the pairs it teaches.
    """
    done = place_runs(records[records["status"] == "done"])
    stages = done.drop_duplicates(GROUP)[[*GROUP, "stage"]]
    table = describe(done, GROUP, metric)[[*GROUP, "mean", "std", "n"]].merge(stages, on=GROUP)
    return table.sort_values(["dataset", "stage", "pair", "method"], ascending=[True, False, True, True],
                             ignore_index=True)


def format_summary(table: pd.DataFrame, metric: str = "top1") -> str:
    """Render the summary as aligned text: 'mean ± std' with n (std is '—' when n < 2)."""
    if table.empty:
        return "no finished runs yet"
    cells = []
    for row in table.itertuples(index=False):
        spread = f"{row.std:.2f}" if row.n >= 2 else "—"
        cells.append({"dataset": row.dataset, "stage": row.stage, "pair": row.pair, "method": row.method,
                      f"{metric} (%)": f"{row.mean:.2f} ± {spread}", "n": row.n})
    return pd.DataFrame(cells).to_string(index=False)
