"""The summary table: mean, sample std (ddof=1) and n per dataset, pair and method, from records on disk."""

from __future__ import annotations

import math

import pytest

from kdbench.report import format_summary, load_records, summary_table
from kdbench.tracking.record import EvalResult, RunRecord, write_record


def _record(run_id: str, method: str, seed: int, top1: float, status: str = "done", stage: str = "student"):
    final = EvalResult(top1=top1, top5=100.0, balanced_acc=top1, loss=0.1, num_images=10, per_class_correct=[5, 5],
                       per_class_total=[5, 5]) if status == "done" else None
    return RunRecord(run_id=run_id, grid="g", status=status, stage=stage, method=method, label=method,
                     arch="cnn_small", pair="cnn_large->cnn_small", dataset="digits", seed=seed, subset_seed=0,
                     spec={}, config_sha256="0" * 64, final=final, reason=None if status == "done" else "boom")


def test_summary_matches_hand_computation(tmp_path):
    rows = [("a", "kd", 0, 90.0), ("b", "kd", 1, 92.0), ("c", "kd", 2, 97.0), ("d", "vanilla", 0, 80.0)]
    for run_id, method, seed, top1 in rows:
        write_record(tmp_path / run_id, _record(run_id, method, seed, top1))
    write_record(tmp_path / "e", _record("e", "kd", 3, 0.0, status="failed"))
    records = load_records(tmp_path)
    assert len(records) == 5
    table = summary_table(records).set_index("method")
    assert table.loc["kd", "n"] == 3  # the failed run is not counted
    assert table.loc["kd", "mean"] == pytest.approx(93.0)
    # sample std: sqrt(((-3)² + (-1)² + 4²) / (3 - 1)) = sqrt(13)
    assert table.loc["kd", "std"] == pytest.approx(math.sqrt(13.0))
    assert table.loc["vanilla", "n"] == 1 and math.isnan(table.loc["vanilla", "std"])
    text = format_summary(summary_table(records))
    assert "93.00 ± 3.61" in text and "80.00 ± —" in text


def test_empty_summary_says_so(tmp_path):
    assert format_summary(summary_table(load_records(tmp_path))) == "no finished runs yet"
