"""One pair naming everywhere: a teacher-less student (vanilla) and a teacher are listed under the same pairs in
the report's tables, the end-of-run summary and MLflow's kdbench.pairs tag, also when two pairs share a student.

Hand-written records, a real sqlite MLflow store logged by kdbench's own sink and sync.
"""

from __future__ import annotations

import pandas as pd
import pytest
from report_support import make_record

from kdbench.pairs import pairs_of_records
from kdbench.report import format_summary, frames_from_records, load_records, summary_table
from kdbench.report.mlflow_frames import frames_from_mlflow
from kdbench.report.tables import table_runs
from kdbench.tracking.mlflow_sink import PAIRS_TAG, RUN_ID_TAG, MlflowSink, default_tracking_uri, ensure_experiment
from kdbench.tracking.mlflow_sync import sync_records
from kdbench.tracking.record import write_record

# resnet20 is the student of two pairs; resnet8x4 of one, whose name is a prefix-extension of no other pair
PAIRS = ("resnet56->resnet20", "resnet110->resnet20", "resnet32x4->resnet8x4")


def _records():
    records, vanilla = [], {}
    for pair in PAIRS:
        teacher_arch, student_arch = pair.split("->")
        teacher = make_record("teacher", 0, 75.0, stage="teacher", teacher_arch=teacher_arch)
        records.append(teacher)
        records.append(make_record("kd", 0, 70.0, teacher_run=teacher.run_id, teacher_arch=teacher_arch,
                                   student_arch=student_arch))
        # one vanilla run per student architecture, shared by its pairs (as the grid expansion makes it)
        vanilla.setdefault(student_arch, make_record("vanilla", 0, 65.0, student_arch=student_arch))
    return records + list(vanilla.values())


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """(records, runs folder, tracking uri, MLflow client, experiment id) after the sink logged every run."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("pairs")
    records = _records()
    for record in records:
        write_record(root / "g" / "runs" / record.run_id, record)
    uri = default_tracking_uri(root)
    experiment_id = ensure_experiment(uri, "g", root / "artifacts")
    for record in records:  # as a grid run logs them: start, epochs, end
        sink = MlflowSink(uri, "g")
        sink.on_start(record.run_id, f"{record.label}/{record.pair}", record.spec, resumed_epoch=0)
        for entry in record.history:
            sink.on_epoch(entry)
        sink.on_end(record)
    return records, root / "g" / "runs", uri, MlflowClient(tracking_uri=uri), experiment_id


def _report_pairs(records) -> dict[str, set[str]]:
    placed = table_runs(frames_from_records(records))
    return {pair: set(group["run_id"]) for pair, group in placed.groupby("pair")}


def test_report_and_summary_list_the_shared_baseline_under_both_pairs(logged):
    records, runs_root, *_ = logged
    by_pair = _report_pairs(records)
    assert set(by_pair) == set(PAIRS)
    shared = next(r.run_id for r in records if r.label == "vanilla" and r.arch == "resnet20")
    assert shared in by_pair["resnet56->resnet20"] and shared in by_pair["resnet110->resnet20"]
    assert all(len(ids) == 3 for ids in by_pair.values())  # teacher, kd, vanilla

    table = summary_table(load_records(runs_root))
    assert sorted(zip(table["pair"], table["method"], table["n"], strict=True)) == sorted(
        (pair, method, 1) for pair in PAIRS for method in ("teacher", "kd", "vanilla"))
    text = format_summary(table)
    assert "resnet20 " not in text.replace("->resnet20", "")  # no row under the bare architecture
    for pair in PAIRS:
        assert sum(pair in line for line in text.splitlines()) == 3


def test_mlflow_pairs_tag_finds_the_same_runs_as_the_report(logged):
    records, runs_root, uri, client, experiment_id = logged
    tags = {run.data.tags[RUN_ID_TAG]: run.data.tags for run in client.search_runs([experiment_id])}
    for record in records:  # the sink sees one run: its own pair (exact for a distilled student), until the sync
        assert tags[record.run_id][PAIRS_TAG] == f"|{record.pair}|"
        assert tags[record.run_id]["kdbench.pair"] == record.pair  # the recorded pair is kept as it was

    artifacts = runs_root.parent.parent / "artifacts"
    first = sync_records(uri, "g", records, artifacts)
    assert (first.created, first.completed, first.unchanged, first.retagged) == (0, 0, 3, 5)
    assert first.summary() == "0 created, 0 completed, 3 in sync, 5 tagged with their pairs"

    by_pair = _report_pairs(records)
    for pair in PAIRS:  # the filter a user types in the MLflow UI
        found = client.search_runs([experiment_id], f"tags.kdbench.pairs LIKE '%|{pair}|%'")
        assert {run.data.tags[RUN_ID_TAG] for run in found} == by_pair[pair], pair
    assert client.search_runs([experiment_id], "tags.kdbench.pairs LIKE '%|resnet32x4->resnet8|%'") == []
    listed = pairs_of_records(records)
    shared = next(r.run_id for r in records if r.label == "vanilla" and r.arch == "resnet20")
    assert listed[shared] == ["resnet110->resnet20", "resnet56->resnet20"]

    second = sync_records(uri, "g", records, artifacts)
    assert (second.created, second.completed, second.unchanged, second.retagged) == (0, 0, len(records), 0)
    pd.testing.assert_frame_equal(frames_from_mlflow(uri, "g").runs, frames_from_records(records).runs)


def test_sync_creates_runs_with_their_pairs(tmp_path):
    """A record MLflow never saw gets its run from the sync, with kdbench.pairs set at once."""
    from mlflow.tracking import MlflowClient

    records = [r for r in _records() if r.arch == "resnet20"]  # both distilled students and their shared baseline
    uri = default_tracking_uri(tmp_path)
    result = sync_records(uri, "g", records, tmp_path / "artifacts")
    assert result.created == len(records) and result.retagged == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("g")
    runs = client.search_runs([experiment.experiment_id])
    tags = {run.data.tags[RUN_ID_TAG]: run.data.tags[PAIRS_TAG] for run in runs}
    assert tags == {run_id: "|" + "|".join(pairs) + "|" for run_id, pairs in pairs_of_records(records).items()}
    assert sorted(tags.values()) == sorted(["|resnet110->resnet20|resnet56->resnet20|", "|resnet110->resnet20|",
                                            "|resnet56->resnet20|"])
