"""MLflow follows the run records: safe concurrent first use of the store, `kdbench sync`, unended-run warnings.

Real processes and a real sqlite MLflow store throughout; no mocks.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import TINY_GRID
from report_support import make_record

from kdbench.cli import EXIT_BAD_INPUT, EXIT_OK, main
from kdbench.report import frames_from_records
from kdbench.report.mlflow_frames import frames_from_mlflow
from kdbench.tracking.mlflow_sink import (
    PER_CLASS_ARTIFACT,
    RUN_ID_TAG,
    MlflowSink,
    default_tracking_uri,
    ensure_experiment,
)
from kdbench.tracking.mlflow_sync import gather_records, sync_records
from kdbench.tracking.record import write_record
from tests_support import REPO


def _grid_file(tmp_path, name: str, **changes) -> tuple[object, dict]:
    """The tiny grid cut to one run (a vanilla student, 2 epochs, 32 images), written to <tmp>/<name>.yaml."""
    raw = copy.deepcopy(TINY_GRID)
    data = {**raw["datasets"][0], "synthetic_train_per_class": 8, "synthetic_test_per_class": 4}
    raw.update(name=name, datasets=[data], seeds=[0], methods=["vanilla"], output=str(tmp_path / "results"), **changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw


def _kdbench(*args: str, env: dict | None = None) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "kdbench", *args], cwd=REPO, env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=1000) if found else []


def _snapshot(uri: str, experiment: str) -> dict:
    """MLflow run id, status, params, tags, latest metrics and every metric history of each run, by kdbench run id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {run.data.tags[RUN_ID_TAG]: (run.info.run_id, run.info.status, run.data.params, run.data.tags,
                                        run.data.metrics,
                                        {key: [(m.step, m.value, m.timestamp) for m in
                                               client.get_metric_history(run.info.run_id, key)]
                                         for key in run.data.metrics})
            for run in _runs(uri, experiment)}


def _assert_mlflow_equals_records(uri: str, experiment: str, records: list) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = _runs(uri, experiment)
    assert sorted(run.data.tags[RUN_ID_TAG] for run in runs) == sorted(r.run_id for r in records)
    by_id = {run.data.tags[RUN_ID_TAG]: run for run in runs}
    for record in records:
        run = by_id[record.run_id]
        assert run.info.status == ("FINISHED" if record.status == "done" else "FAILED")
        assert run.data.tags["kdbench.status"] == record.status
        if record.final is not None:
            for key in ("top1", "top5", "balanced_acc"):
                assert run.data.metrics[f"final_{key}"] == getattr(record.final, key)
            assert PER_CLASS_ARTIFACT in {a.path for a in client.list_artifacts(run.info.run_id)}
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "test_top1")]
        assert sorted(steps) == [entry.epoch for entry in record.history]


@pytest.mark.slow
def test_two_grids_started_together_on_a_fresh_store_are_both_tracked(tmp_path):
    grids = [_grid_file(tmp_path, name) for name in ("alpha", "beta")]
    processes = [_kdbench("run", str(path)) for path, _ in grids]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == EXIT_OK, output
        assert "unavailable" not in output, output  # the store was created once, under the lock
        assert "MLflow sync: 0 created, 0 completed, 1 in sync" in output, output  # the sink logged it all
    uri = default_tracking_uri(tmp_path / "results")
    for _, raw in grids:
        records = gather_records(tmp_path / "results" / raw["name"] / "runs")
        assert len(records) == 1 and records[0].status == "done"
        _assert_mlflow_equals_records(uri, raw["name"], records)


@pytest.mark.slow
def test_sync_completes_a_run_killed_between_record_and_mlflow_and_is_idempotent(tmp_path, capsys):
    path, raw = _grid_file(tmp_path, "killed")
    process = _kdbench("run", str(path), env={"KDBENCH_FAILPOINT": "after-record"})
    output = process.communicate(timeout=300)[0]
    assert process.returncode == -9, output  # SIGKILL right after the run's record was written
    uri = default_tracking_uri(tmp_path / "results")
    records = gather_records(tmp_path / "results" / "killed" / "runs")
    assert len(records) == 1 and records[0].status == "done"
    assert [run.info.status for run in _runs(uri, "killed")] == ["RUNNING"]

    capsys.readouterr()
    report = ["report", "killed", "--from-mlflow", uri, "--format", "csv", "--out", str(tmp_path / "report")]
    assert main(report) == EXIT_BAD_INPUT  # no ended run yet, and the report says why rather than staying silent
    assert "holds 1 run(s) that did not end there (RUNNING)" in capsys.readouterr().err

    assert main(["sync", str(path)]) == EXIT_OK
    assert "MLflow sync: 0 created, 1 completed, 0 in sync" in capsys.readouterr().out
    _assert_mlflow_equals_records(uri, "killed", records)
    before = _snapshot(uri, "killed")

    assert main(["sync", str(path)]) == EXIT_OK
    assert "MLflow sync: 0 created, 0 completed, 1 in sync" in capsys.readouterr().out
    assert _snapshot(uri, "killed") == before


@pytest.mark.slow
def test_sync_creates_runs_tracked_nowhere_and_the_mlflow_report_equals_the_records_report(tmp_path, capsys):
    path, raw = _grid_file(tmp_path, "untracked", tracking={"mlflow": False})
    assert main(["run", str(path)]) == EXIT_OK
    uri = default_tracking_uri(tmp_path / "results")
    assert not (tmp_path / "results" / "mlflow.db").exists()
    capsys.readouterr()
    blocker = tmp_path / "not_a_dir"  # a store that cannot be created: the sync at the end of run only warns
    blocker.write_text("a file where the store's folder should be")
    raw["tracking"] = {"uri": f"sqlite:///{blocker}/sub/mlflow.db"}
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path)]) == EXIT_OK  # nothing left to train
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if line.startswith("warning: MLflow sync failed")]) == 1, lines
    assert not any(line.startswith("MLflow sync:") for line in lines)

    raw["tracking"] = {"mlflow": True}
    path.write_text(yaml.safe_dump(raw))

    assert main(["sync", str(path)]) == EXIT_OK
    assert "MLflow sync: 1 created, 0 completed, 0 in sync" in capsys.readouterr().out
    records = gather_records(tmp_path / "results" / "untracked" / "runs")
    _assert_mlflow_equals_records(uri, "untracked", records)

    assert main(["report", str(path), "--format", "csv", "--out", str(tmp_path / "from-records")]) == EXIT_OK
    assert main(["report", "untracked", "--from-mlflow", uri, "--results", str(tmp_path / "results"),
                 "--format", "csv", "--out", str(tmp_path / "from-mlflow")]) == EXIT_OK
    assert "warning" not in capsys.readouterr().err
    main_csv = [(tmp_path / source / "main.csv").read_text() for source in ("from-records", "from-mlflow")]
    assert main_csv[0] == main_csv[1]


def _hand_records():
    records = [make_record("teacher", 0, 71.0, stage="teacher", best_val=70.0, seconds=(1.0, 1.5, 2.0))]
    records += [make_record(method, seed, 60.0 + seed, best_val=59.0) for method in ("vanilla", "kd")
                for seed in range(2)]
    records.append(make_record("kd", 2, 0.0, status="failed"))
    return records


def test_sync_of_hand_written_records_completes_creates_warns_and_is_idempotent(tmp_path, capsys):
    records = _hand_records()
    for record in records:
        write_record(tmp_path / "g" / "runs" / record.run_id, record)
    gathered = gather_records(tmp_path / "g" / "runs")
    assert sorted(r.run_id for r in gathered) == sorted(r.run_id for r in records)
    uri, artifacts = default_tracking_uri(tmp_path), tmp_path / "artifacts"
    half, others = gathered[0], gathered[1:]
    ensure_experiment(uri, "g", artifacts)
    sink = MlflowSink(uri, "g")  # logged by the sink up to its last epoch, killed before its end
    sink.on_start(half.run_id, "half", half.spec, resumed_epoch=0)
    for entry in half.history:
        sink.on_epoch(entry)

    first = sync_records(uri, "g", others, artifacts)
    assert (first.created, first.completed, first.unchanged) == (len(others), 0, 0)
    capsys.readouterr()
    assert len(frames_from_mlflow(uri, "g").runs) == len(others)
    warning = capsys.readouterr().err
    assert "holds 1 run(s) that did not end there (RUNNING)" in warning and "kdbench sync" in warning

    second = sync_records(uri, "g", gathered, artifacts)
    assert (second.created, second.completed, second.unchanged) == (0, 1, len(others))
    _assert_mlflow_equals_records(uri, "g", records)
    before = _snapshot(uri, "g")
    third = sync_records(uri, "g", gathered, artifacts)
    assert (third.created, third.completed, third.unchanged) == (0, 0, len(records))
    assert _snapshot(uri, "g") == before

    from_records, from_mlflow = frames_from_records(records), frames_from_mlflow(uri, "g")
    assert "warning" not in capsys.readouterr().err
    for name in ("runs", "per_class", "curves"):
        pd.testing.assert_frame_equal(getattr(from_mlflow, name), getattr(from_records, name))
