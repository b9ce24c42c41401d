"""Load a grid's run records into a pandas DataFrame, one row per run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kdbench.tracking.record import RECORD_NAME, RunRecord

COLUMNS = ["run_id", "stage", "status", "method", "pair", "arch", "dataset", "seed", "top1", "top5", "balanced_acc",
           "best_val_top1", "best_val_test_top1", "reason"]


def load_records(runs_root: str | Path) -> pd.DataFrame:
    """Every record.json under ``runs_root`` as a row (failed runs included, with their reason)."""
    rows = []
    for path in sorted(Path(runs_root).glob(f"*/{RECORD_NAME}")):
        record = RunRecord.model_validate(json.loads(path.read_text()))
        final = record.final
        rows.append({
            "run_id": record.run_id, "stage": record.stage, "status": record.status, "method": record.label,
            "pair": record.pair, "arch": record.arch, "dataset": record.dataset, "seed": record.seed,
            "top1": final.top1 if final else float("nan"), "top5": final.top5 if final else float("nan"),
            "balanced_acc": final.balanced_acc if final else float("nan"),
            "best_val_top1": record.best_val.val_top1 if record.best_val else float("nan"),
            "best_val_test_top1": record.best_val.test.top1 if record.best_val else float("nan"),
            "reason": record.reason,
        })
    return pd.DataFrame(rows, columns=COLUMNS)
