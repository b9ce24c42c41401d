"""The report from a real sqlite MLflow store (filled by kdbench's MlflowSink) equals the report from records."""

from __future__ import annotations

import pandas as pd
import pytest
from report_support import dataset, make_record

from kdbench.cli import EXIT_OK, main
from kdbench.report import frames_from_records
from kdbench.report.build import build_tables
from kdbench.report.groups import RULES
from kdbench.report.mlflow_frames import frames_from_mlflow
from kdbench.tracking.mlflow_sink import MlflowSink, default_tracking_uri, ensure_experiment
from kdbench.tracking.record import write_record


def _records():
    counts = [200, 100, 50, 20, 10, 5]
    records = [make_record("teacher", 0, 71.0, stage="teacher", data=dataset(rho=40), correct=[9, 8, 7, 5, 3, 1],
                           total=[10] * 6, class_counts=counts, best_val=70.5, seconds=(1.0, 1.5, 2.0))]
    for method, base in (("vanilla", 60.0), ("kd", 62.0), ("dkd(T=2)", 63.0)):
        for seed in range(3):
            correct = [10, 9, 7, 5, seed + 2, seed]
            records.append(make_record(method, seed, base + seed * 0.7, data=dataset(rho=40), correct=correct,
                                       total=[10] * 6, class_counts=counts, best_val=base + seed * 0.3,
                                       extra_params=123 if method.startswith("dkd") else 0,
                                       seconds=(1.0 + seed, 2.5, 3.25)))
    records.append(make_record("kd", 3, 0.0, status="failed", data=dataset(rho=40)))
    return records


def _log(records, uri: str, experiment: str, artifacts) -> None:
    ensure_experiment(uri, experiment, artifacts)
    for record in records:
        sink = MlflowSink(uri, experiment)
        sink.on_start(record.run_id, f"{record.label} seed {record.seed}", record.spec, resumed_epoch=0)
        for entry in record.history:
            sink.on_epoch(entry)
        sink.on_end(record)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    records = _records()
    uri = default_tracking_uri(root)
    _log(records, uri, "g", root / "artifacts")
    for record in records:
        write_record(root / "g" / "runs" / record.run_id, record)
    return root, uri, records


@pytest.fixture(scope="module")
def mlflow_frames(store):
    return frames_from_mlflow(store[1], "g")


def test_frames_from_mlflow_equal_frames_from_records(store, mlflow_frames):
    from_records, from_mlflow = frames_from_records(store[2]), mlflow_frames
    assert from_mlflow.grid == from_records.grid == "g"
    for name in ("runs", "per_class", "curves"):
        pd.testing.assert_frame_equal(getattr(from_mlflow, name), getattr(from_records, name), check_like=False)
    assert len(from_records.runs) == 11 and (from_records.runs["status"] == "failed").sum() == 1


def test_tables_from_mlflow_equal_tables_from_records(store, mlflow_frames):
    for rule in RULES.values():
        a = build_tables(frames_from_records(store[2]), rule)
        b = build_tables(mlflow_frames, rule)
        assert [t.name for t in a.tables] == ["main", "per_class", "head_tail", "cost"]
        for left, right in zip(a.tables, b.tables, strict=True):
            pd.testing.assert_frame_equal(left.data, right.data)
            pd.testing.assert_frame_equal(left.display, right.display)
            assert left.notes == right.notes


def test_cli_from_mlflow_writes_the_same_csv(store, tmp_path):
    root, uri, _ = store
    assert main(["report", str(root / "g"), "--format", "csv", "--out", str(tmp_path / "records")]) == EXIT_OK
    assert main(["report", "g", "--from-mlflow", uri, "--format", "csv", "--out", str(tmp_path / "mlflow")]) == 0
    for name in ("main", "per_class", "head_tail", "cost"):
        assert (tmp_path / "records" / f"{name}.csv").read_text() == (tmp_path / "mlflow" / f"{name}.csv").read_text()
