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


def test_trg_grid_plans_with_its_ablations_long_tail_baselines_and_tuning_stage(tmp_path):
    grid = load_grid(REPO / "experiments" / "trg_cifar100_lt.yaml", data_root=_empty_cifar100(tmp_path))
    _, planned = plan_grid(grid, tmp_path / "results")
    specs = [run.spec for run in planned]
    variants = {s.dataset.variant for s in specs}
    assert len(variants) == 4 and len(grid.pairs) == 2 and grid.seeds == [0, 1, 2, 3, 4]
    teachers = [s for s in specs if s.stage == "teacher"]
    students = [s for s in specs if s.stage == "student" and not s.tuning]
    tuning = [s for s in specs if s.tuning]
    assert len(teachers) == 4 * 2  # one per (dataset, teacher): long-tailed teachers train on their LT set
    labels = {s.display_method for s in students}
    ablations = {"trg-no-kd": "kd_weight", "trg-no-inner": "inner_weight", "trg-no-local": "local_weight",
                 "trg-no-global": "global_weight"}
    assert labels == {"vanilla", "kd", "dkd", "crd", "rkd", "mlkd", "mlld", "trg", "trg-fixed-tau", *ablations,
                      "bkd", "kd+la", "trg+la"}  # the *-tuned rows wait for their tuning (stage 1)
    assert len(students) == 4 * 2 * 5 * (len(labels) - 1) + 4 * 2 * 5  # vanilla once per student arch
    for spec in students:
        if spec.method != "trg":
            continue
        off = [key for key, value in spec.params.items() if key.endswith("_weight") and value == 0]
        assert off == ([ablations[spec.label]] if spec.label in ablations else []), spec.describe()
        fixed = spec.params["tau_global_start"] == spec.params["tau_global_end"]
        assert fixed == (spec.label == "trg-fixed-tau")
        assert spec.params.get("student_ce", "plain") == ("logit_adjusted" if spec.label == "trg+la" else "plain")
    assert {s.params["beta"] for s in students if s.method == "dkd" and s.arch == "wrn_16_2"} == {6.0}
    # stage 1: 12 configurations (the budget) of each tuned method, per dataset and pair, on seed 0 only
    assert grid.tuning.budget == 12 and len(tuning) == 3 * 12 * 4 * 2
    assert {s.seed for s in tuning} == {0} and {s.label.split("[")[0] for s in tuning} == {
        "trg-tuned", "dkd-tuned", "mlld-tuned"}
    assert {s.dataset.val_fraction for s in tuning if s.dataset.long_tail is None} == {0.1}


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


def test_imagenet_grids_plan_without_any_data_and_carry_their_published_settings(tmp_path):
    from kdbench.grid.preflight import preflight_problems

    imagenet = load_grid(REPO / "experiments" / "imagenet.yaml", data_root=str(tmp_path / "no-imagenet"))
    _, planned = plan_grid(imagenet, tmp_path / "results")
    students = [run.spec for run in planned if run.spec.stage == "student"]
    assert {(p.teacher.arch, p.student.arch) for p in imagenet.pairs} == {("resnet34", "resnet18"),
                                                                          ("resnet50", "mobilenet_v1")}
    assert len(students) == 2 * 3 * 7 and {run.status for run in planned} == {"new"}
    for spec in students:
        assert spec.recipe.effective_lr == pytest.approx(0.2) and spec.recipe.milestones == (30, 60, 90)
        if spec.method == "kd":
            assert (spec.params["temperature"], spec.params["ce_weight"], spec.params["kd_weight"]) == (1, .5, .5)
        if spec.method == "dkd":
            assert spec.params["beta"] == (0.5 if spec.arch == "resnet18" else 2.0)
            assert (spec.params["alpha"], spec.params["temperature"], spec.params["warmup"]) == (0.5, 1.0, 1.0)
    [missing] = preflight_problems(imagenet)
    assert missing.startswith("datasets[0].root: ") and "does not exist" in missing

    lt = load_grid(REPO / "experiments" / "imagenet_lt.yaml")
    _, planned = plan_grid(lt, tmp_path / "results")
    teachers = [run.spec for run in planned if run.spec.stage == "teacher"]
    assert [(t.arch, t.weights, t.dataset.name) for t in teachers] == [("resnet50", None, "imagenet_lt")]
    assert len(planned) == 1 + 3 * 7 and not lt.allow_leaky_teacher
