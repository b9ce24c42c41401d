"""A whole grid through the local and debug executors: records, MLflow runs, re-runs, failures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from kdbench.config import parse_grid
from kdbench.grid import grid_paths, run_grid, tracking_target
from kdbench.report import load_records, summary_table

pytestmark = pytest.mark.slow

NAN_PLUGIN = '''
import torch
from kdbench.loss import DistillLoss, Needs, register_method

@register_method("explodes")
class Explodes(DistillLoss):
    """A test method whose loss is NaN."""
    needs = Needs(teacher_taps=())
    def forward(self, student, teacher, batch, progress):
        return {"ce": student["logits"].sum() * float("nan")}
'''


def _mlflow_runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_local_grid_records_mlflow_and_rerun_trains_nothing(tiny_grid_raw):
    grid = parse_grid(tiny_grid_raw)
    outcome = run_grid(grid, "grid text")
    assert len(outcome.ran) == 2 + 4 + 4 and not outcome.failed and not outcome.blocked
    paths = grid_paths(grid)
    assert (paths.grid_dir / "grid.yaml").read_text() == "grid text"
    records = load_records(paths.runs_root)
    assert len(records) == 10 and set(records["status"]) == {"done"}
    table = summary_table(records)
    students = table[table["stage"] == "student"]
    assert set(students["method"]) == {"vanilla", "kd"} and set(students["n"]) == {2}

    uri, experiment = tracking_target(grid, paths)
    assert uri == f"sqlite:///{paths.results_root / 'mlflow.db'}"
    runs = _mlflow_runs(uri, experiment)
    assert len(runs) == 10 and {r.info.status for r in runs} == {"FINISHED"}
    by_id = {r.data.tags["kdbench.run_id"]: r for r in runs}
    for row in records.itertuples():
        assert by_id[row.run_id].data.metrics["final_top1"] == pytest.approx(row.top1)
    one = next(iter(by_id.values()))
    assert "recipe.lr" in one.data.params and "test_top1" in one.data.metrics

    mtimes = {p: p.stat().st_mtime_ns for p in paths.runs_root.glob("*/record.json")}
    again = run_grid(grid, "grid text")
    assert again.ran == [] and again.skipped_done == 10
    assert {p: p.stat().st_mtime_ns for p in paths.runs_root.glob("*/record.json")} == mtimes
    assert len(_mlflow_runs(uri, experiment)) == 10


def test_debug_executor_runs_through_submitit(tiny_grid_raw):
    raw = copy.deepcopy(tiny_grid_raw)
    raw.update(datasets=raw["datasets"][:1], seeds=[0], executor={"kind": "debug", "device": "cpu"},
               tracking={"mlflow": False})
    grid = parse_grid(raw)
    outcome = run_grid(grid, "x")
    assert len(outcome.ran) == 3 and all(r.status == "done" for r in outcome.ran)
    assert any((grid_paths(grid).grid_dir / "submitit").iterdir())


def test_failed_run_does_not_stop_the_grid_and_rerun_keeps_history(tiny_grid_raw, tmp_path):
    plugin = tmp_path / "explodes.py"
    plugin.write_text(NAN_PLUGIN)
    raw = copy.deepcopy(tiny_grid_raw)
    raw.update(datasets=raw["datasets"][:1], seeds=[0], plugins=[str(plugin)], methods=["explodes", "kd"])
    grid = parse_grid(raw, base_dir=tmp_path)
    outcome = run_grid(grid, "x")
    statuses = {r.method: r.status for r in outcome.ran if r.stage == "student"}
    assert statuses == {"explodes": "failed", "kd": "done"}
    failed = outcome.failed[0]
    assert "NonFiniteLossError" in failed.reason and failed.traceback

    assert run_grid(grid, "x").skipped_failed == 1  # not retried unless asked
    retried = run_grid(grid, "x", rerun=["failed"])
    assert [r.method for r in retried.ran] == ["explodes"]
    run_dir = grid_paths(grid).runs_root / failed.run_id
    archived = list(run_dir.glob("record.failed-*.json"))
    assert len(archived) == 1 and json.loads(archived[0].read_text())["status"] == "failed"


def test_tracking_failure_never_fails_a_run(tiny_grid_raw, tmp_path):
    raw = copy.deepcopy(tiny_grid_raw)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the store's folder should be")
    raw.update(datasets=raw["datasets"][:1], seeds=[0], methods=["vanilla"],
               tracking={"uri": f"sqlite:///{blocker}/sub/mlflow.db"})
    outcome = run_grid(parse_grid(raw), "x")
    assert [r.status for r in outcome.ran] == ["done"]


def test_results_root_is_configurable(tiny_grid_raw, tmp_path):
    raw = copy.deepcopy(tiny_grid_raw)
    raw.update(datasets=raw["datasets"][:1], seeds=[0], methods=["vanilla"], tracking={"mlflow": False})
    grid = parse_grid(raw)
    run_grid(grid, "x", results_root=tmp_path / "elsewhere")
    assert list((tmp_path / "elsewhere" / "tiny" / "runs").glob("*/record.json"))
    assert not Path(raw["output"]).exists()


CE_PLUGIN = '''
import torch.nn.functional as F
from kdbench.loss import DistillLoss, Needs, register_method

@register_method("plugin_ce")
class PluginCE(DistillLoss):
    """A plugin method: cross-entropy only."""
    needs = Needs(teacher_taps=())
    def forward(self, student, teacher, batch, progress):
        return {"ce": F.cross_entropy(student["logits"], batch["target"])}
'''


def test_local_process_pool_runs_in_parallel_with_plugins(tiny_grid_raw, tmp_path):
    plugin = tmp_path / "plugin_ce.py"
    plugin.write_text(CE_PLUGIN)
    raw = copy.deepcopy(tiny_grid_raw)
    raw.update(datasets=raw["datasets"][:1], seeds=[0], methods=["vanilla", "plugin_ce"], plugins=["plugin_ce.py"],
               executor={"kind": "local", "workers": 2, "device": "cpu"})
    grid = parse_grid(raw, base_dir=tmp_path)
    outcome = run_grid(grid, "x")
    assert sorted(r.method for r in outcome.ran) == ["plugin_ce", "vanilla"]  # each in a spawned worker
    assert {r.status for r in outcome.ran} == {"done"}, [r.reason for r in outcome.ran]
    uri, experiment = tracking_target(grid, grid_paths(grid))
    assert len(_mlflow_runs(uri, experiment)) == 2
