"""The shipped grid files: cifar100.yaml and trg_cifar100_lt.yaml plan cleanly; smoke.yaml runs every method."""

from __future__ import annotations

import pytest

from kdbench.config import load_grid
from kdbench.grid import plan_grid, run_grid
from kdbench.loss import METHODS
from kdbench.report import load_records
from tests_support import REPO

LIGHT_STUDENTS = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}
DKD_BETA = {("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0, ("wrn_40_2", "wrn_16_2"): 6.0,
            ("wrn_40_2", "wrn_40_1"): 6.0, ("vgg13", "vgg8"): 6.0, ("vgg13", "MobileNetV2"): 6.0}


def _empty_cifar100(tmp_path) -> str:
    folder = tmp_path / "cifar" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"")  # plan-time checks look for the files, they do not read them
    return str(tmp_path / "cifar")


def test_cifar100_grid_plans_with_its_per_pair_settings(tmp_path):
    grid = load_grid(REPO / "experiments" / "cifar100.yaml", data_root=_empty_cifar100(tmp_path))
    _, planned = plan_grid(grid, tmp_path / "results")
    specs = [run.spec for run in planned]
    pairs = {(p.teacher.arch, p.student.arch) for p in grid.pairs}
    assert len(pairs) == 13 and len(grid.methods) == 12 and grid.seeds == [0, 1, 2, 3, 4]
    teachers = [s for s in specs if s.stage == "teacher"]
    students = [s for s in specs if s.stage == "student"]
    assert len(teachers) == len({t for t, _ in pairs})
    assert len(students) == 11 * 13 * 5 + len({s for _, s in pairs}) * 5
    for spec in students:
        assert spec.recipe.lr == (0.01 if spec.arch in LIGHT_STUDENTS else 0.05), spec.describe()
        if spec.method == "dkd":
            assert spec.params["beta"] == DKD_BETA.get((spec.teacher.arch, spec.arch), 8.0), spec.describe()
    assert all(t.recipe.lr == 0.05 and t.recipe.epochs == 240 for t in teachers)


def test_trg_grid_plans_with_its_ablations(tmp_path):
    grid = load_grid(REPO / "experiments" / "trg_cifar100_lt.yaml", data_root=_empty_cifar100(tmp_path))
    _, planned = plan_grid(grid, tmp_path / "results")
    specs = [run.spec for run in planned]
    variants = {s.dataset.variant for s in specs}
    assert len(variants) == 4 and len(grid.pairs) == 2 and grid.seeds == [0, 1, 2, 3, 4]
    teachers = [s for s in specs if s.stage == "teacher"]
    students = [s for s in specs if s.stage == "student"]
    assert len(teachers) == 4 * 2  # one per (dataset, teacher): long-tailed teachers train on their LT set
    labels = {s.display_method for s in students}
    ablations = {"trg-no-kd": "kd_weight", "trg-no-inner": "inner_weight", "trg-no-local": "local_weight",
                 "trg-no-global": "global_weight"}
    assert labels == {"vanilla", "kd", "dkd", "crd", "rkd", "mlkd", "mlld", "trg", "trg-fixed-tau", *ablations}
    assert len(students) == 4 * 2 * 5 * (len(labels) - 1) + 4 * 2 * 5  # vanilla once per student arch
    for spec in students:
        if spec.method != "trg":
            continue
        off = [key for key, value in spec.params.items() if key.endswith("_weight") and value == 0]
        assert off == ([ablations[spec.label]] if spec.label in ablations else []), spec.describe()
        fixed = spec.params["tau_global_start"] == spec.params["tau_global_end"]
        assert fixed == (spec.label == "trg-fixed-tau")
    assert {s.params["beta"] for s in students if s.method == "dkd" and s.arch == "wrn_16_2"} == {6.0}


@pytest.mark.slow
def test_smoke_grid_runs_every_method(tmp_path):
    grid = load_grid(REPO / "experiments" / "smoke.yaml")
    shipped = {name for name in METHODS.names() if METHODS.get(name).__module__.startswith("kdbench.methods.")}
    assert {m.name for m in grid.methods} == shipped  # every built-in method, new ones too (not test plugins)
    outcome = run_grid(grid, "smoke", results_root=tmp_path)
    assert not outcome.failed and not outcome.blocked, [r.reason for r in outcome.failed]
    records = load_records(tmp_path / "smoke" / "runs")
    assert set(records["status"]) == {"done"} and len(records) == 1 + len(grid.methods)
    extra = {r.label: r.extra_params for r in outcome.ran}
    for with_heads in ("crd", "rrd", "fitnet", "mlkd", "trg"):
        assert extra[with_heads] > 0
    for without in ("vanilla", "kd", "dkd", "at", "rkd", "mlld"):
        assert extra[without] == 0
