"""Equal tuning: bad sweeps, the configurations a budget gives, the two stages, selection on validation."""

from __future__ import annotations

import copy

import pytest
from report_support import make_record

from kdbench.config import ConfigError, parse_grid
from kdbench.grid import plan_grid, run_grid
from kdbench.grid.expand import tuning_cells
from kdbench.grid.runner import grid_paths, tuning_selections
from kdbench.grid.tuning import sweep_configs
from kdbench.report.tuning_table import tuning_table
from kdbench.tracking.record import EvalResult, write_record

GRID = {
    "name": "tune",
    "datasets": [{"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 12,
                  "synthetic_test_per_class": 4, "val_fraction": 0.25}],
    "pairs": [{"teacher": {"arch": "cnn_small", "kwargs": {"in_channels": 3}},
               "student": {"arch": "cnn_small", "kwargs": {"in_channels": 3}}}],
    "methods": ["vanilla", {"name": "kd", "sweep": {"temperature": [1.0, 4.0], "kd_weight": [0.5, 0.9]}},
                {"name": "dkd", "sweep": {"beta": [2.0, 8.0]}}],
    "seeds": [0, 1],
    "tuning": {"budget": 3, "seeds": [0, 1], "epochs": 2},
    "recipe": {"epochs": 4, "batch_size": 16, "milestones": [2, 3], "eval_batch_size": 64},
    "executor": {"kind": "local", "device": "cpu"},
    "tracking": {"mlflow": False},
}


def _grid(tmp_path, **changes):
    raw = copy.deepcopy(GRID) | {"output": str(tmp_path / "results")} | changes
    return parse_grid(raw)


@pytest.mark.parametrize(("change", "message"), [
    ({"methods": [{"name": "kd", "sweep": {"temprature": [1.0]}}]},
     r"methods\[0\]: sweep\.temprature: method 'kd' has no hyper-parameter 'temprature' \(did you mean "
     r"'temperature'\?\)"),
    ({"methods": [{"name": "kd", "sweep": {"temperature": []}}]}, r"sweep\.temperature = \[\]: a sweep needs at least"),
    ({"tuning": {"budget": 0}}, r"tuning\.budget = 0: Input should be greater than or equal to 1"),
    ({"tuning": {"budget": 2, "select_on": "test_top1"}}, r"tuning\.select_on = 'test_top1': Input should be "
                                                          r"'val_top1', 'val_balanced_acc' or 'best_val_top1'"),
    ({"datasets": [{"name": "synthetic"}], "tuning": {"budget": 2, "val_fraction": 0.0}},
     r"datasets\[0\] \(synthetic\) has no validation split to tune on"),
    ({"datasets": [{"name": "synthetic", "long_tail": {"imbalance_ratio": 2}, "val_per_class": 0}]},
     r"datasets\[0\] \(synthetic-lt-exp-2\) has no validation split to tune on"),
    ({"tuning": None}, r"methods\[1\]\.sweep needs a `tuning:` section"),
    ({"methods": [{"name": "kd", "params": {"temperature": 2.0}, "sweep": {"temperature": [1.0]}}]},
     r"sweep\.temperature: also fixed in params"),
])
def test_bad_tuning_input_is_one_line_before_anything_runs(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        _grid(tmp_path, **change)


def test_a_balanced_dataset_without_validation_holds_out_a_slice_for_tuning_runs_only(tmp_path):
    grid = _grid(tmp_path, datasets=[{**GRID["datasets"][0], "val_fraction": 0.0}])
    _write_tuning_results(grid, {"kd": [60.0, 70.0, 65.0], "dkd": [55.0, 56.0]})
    _, planned = plan_grid(grid)
    specs = [run.spec for run in planned if run.spec.stage == "student"]
    assert {s.dataset.val_fraction for s in specs if s.tuning} == {0.1}
    assert {s.dataset.val_fraction for s in specs if not s.tuning} == {0.0}  # final runs train on all of train
    assert {s.method for s in specs if not s.tuning} == {"vanilla", "kd", "dkd"}


def test_the_budget_picks_configurations_deterministically(tmp_path):
    grid = _grid(tmp_path)
    kd, dkd = grid.methods[1], grid.methods[2]
    everything = [{"kd_weight": w, "temperature": t} for w in (0.5, 0.9) for t in (1.0, 4.0)]
    picked = sweep_configs(kd, grid.tuning)
    assert len(picked) == 3 and all(c in everything for c in picked) and picked == sweep_configs(kd, grid.tuning)
    assert sweep_configs(dkd, grid.tuning) == [{"beta": 2.0}, {"beta": 8.0}]  # smaller than the budget: all
    first = grid.tuning.model_copy(update={"sampling": "grid"})
    assert sweep_configs(kd, first) == everything[:3]
    samples = {tuple(map(str, sweep_configs(kd, grid.tuning.model_copy(update={"seed": s})))) for s in range(8)}
    assert len(samples) > 1  # the sampling seed matters


def test_stage_one_plans_tuning_runs_and_waits_for_the_selection(tmp_path):
    grid = _grid(tmp_path)
    _, planned = plan_grid(grid)
    tuning = [run.spec for run in planned if run.spec.tuning]
    finals = [run.spec for run in planned if run.spec.stage == "student" and not run.spec.tuning]
    assert len(tuning) == (3 + 2) * 2  # configs × tuning seeds
    assert {s.method for s in finals} == {"vanilla"}  # kd and dkd wait for their selection
    for spec in tuning:
        assert spec.recipe.epochs == 2 and spec.recipe.milestones == (1, 2)  # 4 → 2 epochs, milestones scaled
        assert spec.label.startswith(f"{spec.method}[")
    assert len({s.run_id for s in tuning}) == len(tuning)


def _val(top1: float) -> EvalResult:
    return EvalResult(top1=top1, top5=100.0, balanced_acc=top1 / 2, loss=1.0, num_images=4,
                      per_class_correct=[1, 1], per_class_total=[2, 2])


def _write_tuning_results(grid, scores: dict[str, list[float]]) -> None:
    """Done records for every tuning run: scores[method][config] as the final validation top-1 (seed 0; seed 1
    gets 10 less, so the mean is score − 5)."""
    paths = grid_paths(grid)
    for cell in tuning_cells(grid):
        for index, specs in enumerate(cell.specs):
            for spec in specs:
                record = make_record(spec.method, spec.seed, 50.0).model_copy(update={
                    "run_id": spec.run_id, "grid": grid.name, "spec": spec.model_dump(mode="json"),
                    "final_val": _val(scores[cell.method][index] - 10.0 * spec.seed)})
                write_record(paths.runs_root / spec.run_id, record)


def test_selection_on_validation_and_ties_broken_by_sweep_order(tmp_path):
    grid = _grid(tmp_path)
    _write_tuning_results(grid, {"kd": [60.0, 70.0, 65.0], "dkd": [55.0, 55.0]})
    cells = {cell.method: cell for cell in tuning_selections(grid, grid_paths(grid))}
    assert cells["kd"].scores == [55.0, 65.0, 60.0] and cells["kd"].selected == 1
    assert cells["dkd"].selected == 0  # a tie: the first configuration in sweep order
    _, planned = plan_grid(grid)
    finals = [run.spec for run in planned if run.spec.method == "kd" and not run.spec.tuning]
    assert [s.seed for s in finals] == [0, 1]
    assert {(s.params["temperature"], s.params["kd_weight"]) for s in finals} == {
        tuple(sweep_configs(grid.methods[1], grid.tuning)[1][k] for k in ("temperature", "kd_weight"))}
    assert all(s.recipe.epochs == 4 and s.label == "kd" for s in finals)  # stage 2: the full recipe

    balanced = _grid(tmp_path, tuning={**GRID["tuning"], "select_on": "val_balanced_acc"})
    assert {c.method: c.scores for c in tuning_selections(balanced, grid_paths(balanced))}["kd"] == [27.5, 32.5, 30.0]


def test_an_unfinished_configuration_keeps_the_final_runs_waiting(tmp_path):
    grid = _grid(tmp_path)
    _write_tuning_results(grid, {"kd": [60.0, 70.0, 65.0], "dkd": [55.0, 56.0]})
    lost = tuning_cells(grid)[0].run_ids[2][1]
    (grid_paths(grid).runs_root / lost / "record.json").unlink()
    (grid_paths(grid).runs_root / lost / "record.backup.json").unlink()
    cells = {cell.method: cell for cell in tuning_selections(grid, grid_paths(grid))}
    assert cells["kd"].scores[2] is None and cells["kd"].selected is None and cells["dkd"].selected == 1
    _, planned = plan_grid(grid)
    assert not [r for r in planned if r.spec.method == "kd" and not r.spec.tuning]


def test_tuning_table_marks_the_selection_and_an_unequal_budget():
    rows = [{"dataset": "d", "pair": "t->s", "method": "trg", "select_on": "val_top1", "budget": 3,
             "configs": [{"k": 4}, {"k": 8}, {"k": 16}], "scores": [70.0, 71.5, None], "run_ids": [], "selected": 1},
            {"dataset": "d", "pair": "t->s", "method": "dkd", "select_on": "val_top1", "budget": 3,
             "configs": [{"beta": 2.0}], "scores": [69.0], "run_ids": [], "selected": 0}]
    table = tuning_table(rows)
    shown = table.display
    assert list(shown["selected"]) == ["", "✓", "", "✓"]
    assert list(shown["validation score"]) == ["70.00", "71.50", "not done", "69.00"]
    assert list(shown["configs / budget"]) == ["3 / 3", "3 / 3", "3 / 3", "1 / 3 ‡"]
    assert list(table.data["fewer_configs"]) == [False, False, False, True]


@pytest.mark.slow
def test_one_command_tunes_then_trains_the_selection(tmp_path):
    grid = _grid(tmp_path, methods=[{"name": "kd", "sweep": {"temperature": [1.0, 4.0]}}], seeds=[0],
                 tuning={"budget": 2, "seeds": [0], "epochs": 1},
                 recipe={**GRID["recipe"], "epochs": 2, "milestones": [1]})
    outcome = run_grid(grid, "tune")
    assert not outcome.failed and not outcome.blocked
    stages = sorted((r.stage, r.spec.get("tuning", False)) for r in outcome.ran)
    assert stages == [("student", False), ("student", True), ("student", True), ("teacher", False)]
    [cell] = tuning_selections(grid, grid_paths(grid))
    final = next(r for r in outcome.ran if r.stage == "student" and not r.spec.get("tuning"))
    assert final.spec["params"]["temperature"] == cell.configs[cell.selected]["temperature"]
    assert (grid_paths(grid).grid_dir / "tuning.json").is_file()
