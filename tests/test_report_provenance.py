"""The report's configuration and provenance section: recipe, method settings, teachers, data, code and environment
from hand-written records, 'not recorded' where a record lacks a field, and the section in every output."""

from __future__ import annotations

import json

import pytest
import torch
from report_support import dataset, make_record

from kdbench.cli import EXIT_OK, build_parser, main
from kdbench.recipe import Recipe
from kdbench.report.build import run_report
from kdbench.report.frames import frames_from_records
from kdbench.report.groups import RULES
from kdbench.report.provenance import provenance_tables, report_provenance, teachers_table
from kdbench.report.provenance_text import NOT_RECORDED, RECIPE_ADDED_DEFAULTS, lr_phases, recipe_cells
from kdbench.report.visual import write_html_report
from kdbench.runspec import _ADDED_DEFAULTS
from kdbench.tracking.record import write_record

STUDENT_RECIPE = Recipe(epochs=20, batch_size=48, lr=0.05, lr_scaling="linear", milestones=(12, 16, 40),
                        weight_decay=5e-4, nesterov=True, precision="bf16")
TEACHER_RECIPE = Recipe(epochs=30, milestones=(20, 25))
KD = {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
MODEL_SHA, GIVEN_SHA = "ab" * 32, "cd" * 32
PROVENANCE = {"git_commit": "0123456789abcdef0123456789abcdef01234567+dirty",
              "versions": {"kdbench": "0.1.0", "torch": "2.3.0+cu121", "python": "3.11.7", "numpy": "2.0.0",
                           "torchvision": "0.18.0", "timm": None},
              "device": "cuda:0", "device_name": "NVIDIA A100", "hostname": "node1", "threads": 8,
              "slurm_job_id": "4242", "train_seconds": 600.0, "resumed_after_epochs": [],
              "train_source_indices_sha256": "feedfacefeedface",
              "started_at": "2026-01-02T03:04:05+00:00", "finished_at": "2026-01-02T04:00:00+00:00"}
CODE = {"method": "c" * 64, "training": "d" * 64}


def _with(record, provenance=None, **changes):
    return record.model_copy(update={"provenance": dict(provenance if provenance is not None else PROVENANCE),
                                     "code": CODE, **changes})


def _records():
    teacher = make_record("teacher", 0, 72.5, stage="teacher", recipe=TEACHER_RECIPE)
    teacher = _with(teacher, {**PROVENANCE, "resumed_after_epochs": [12], "started_at": "2026-01-01T00:00:00+00:00"},
                    model_sha256=MODEL_SHA)
    given = make_record("teacher", 0, 80.0, stage="teacher", recipe=TEACHER_RECIPE, data=dataset(rho=10),
                        class_counts=[200, 10])
    given = _with(given, {**PROVENANCE, "weights": {"source": "/w/teacher.pt", "sha256": GIVEN_SHA},
                          "finished_at": "2026-01-03T00:00:00+00:00"},
                  spec={**given.spec, "weights": {"source": "/w/teacher.pt", "sha256": GIVEN_SHA}})
    students = [_with(make_record("vanilla", seed, 60.0, recipe=STUDENT_RECIPE, params={"ce_weight": 1.0}))
                for seed in range(2)]
    for seed, params in ((0, KD), (1, KD), (2, {**KD, "temperature": 2.0})):
        record = make_record("kd", seed, 65.0, recipe=STUDENT_RECIPE, params=params, teacher_run=teacher.run_id)
        info = record.teacher.model_copy(update={"sha256": MODEL_SHA if seed < 2 else "0" * 64})
        students.append(_with(record, teacher=info))
    students[-1] = students[-1].model_copy(update={"provenance": {}, "code": {}})  # written before provenance
    failed = make_record("kd", 3, 0.0, status="failed", recipe=Recipe(epochs=99), params=KD)
    return [teacher, given, *students, failed]


@pytest.fixture(scope="module")
def tables():
    return {table.name: table for table in provenance_tables(_records())}


def _cells(table, key_column="setting"):
    return table.display.set_index(key_column)


def test_recipe_as_run_with_effective_lr_and_schedule(tables):
    recipe = _cells(tables["config_recipe"])
    assert list(recipe.columns) == ["teachers (2 runs)", "students (5 runs)"]  # the failed run is left out
    students, teachers = recipe["students (5 runs)"], recipe["teachers (2 runs)"]
    assert students["epochs"] == "20" and students["batch size"] == "48" and students["lr (as given)"] == "0.05"
    assert students["lr scaling"] == "linear, reference batch 256"
    assert students["lr at epoch 1"] == "0.009375 (= 0.05 × 48 / 256)"
    assert students["lr schedule"] == ("×0.1 after epochs 12, 16: epochs 1–12: 0.009375; epochs 13–16: 0.0009375; "
                                       "epochs 17–20: 9.375e-5 (milestone 40 at or after the last epoch: never "
                                       "reached)")
    assert students["momentum"] == "0.9, Nesterov" and students["weight decay"] == "0.0005"
    assert students["precision"] == "bf16" and students["speed options"] == "none"
    assert teachers["lr at epoch 1"] == "0.05" and teachers["lr scaling"] == "none"
    assert teachers["lr schedule"] == "×0.1 after epochs 20, 25: epochs 1–20: 0.05; epochs 21–25: 0.005; " \
                                      "epochs 26–30: 0.0005"
    assert "000000" not in tables["config_recipe"].display.to_string()


def test_lr_phases_match_torch_multisteplr():
    """The schedule shown is the one the engine runs: SGD + MultiStepLR stepped once per epoch, from the scaled lr."""
    recipe = STUDENT_RECIPE
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.effective_lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.milestones), gamma=recipe.gamma)
    used = []
    for _ in range(recipe.epochs):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    shown = [lr for first, last, lr in lr_phases(recipe.model_dump(mode="json")) for _ in range(first, last + 1)]
    assert shown == pytest.approx(used, rel=1e-12) and len(shown) == recipe.epochs


def test_method_settings_as_run_and_a_label_that_disagrees(tables):
    methods = tables["config_methods"].display
    assert methods["method"].tolist() == ["teacher", "vanilla", "kd (⚠ 2 settings)", "kd (⚠ 2 settings)"]
    kd = methods[methods["trained as"] == "kd"].set_index("hyper-parameters")
    assert kd.loc["ce_weight=0.1, kd_weight=0.9, temperature=4", "runs"] == 2
    assert kd.loc["ce_weight=0.1, kd_weight=0.9, temperature=2", "runs"] == 1
    assert set(kd["where"]) == {"cifar100 resnet56->resnet20"}
    vanilla = methods.set_index("method").loc["vanilla"]
    assert vanilla["hyper-parameters"] == "ce_weight=1" and vanilla["where"] == "all its runs"
    assert vanilla["method code sha256"] == "cccccccccccccccc…"
    assert kd.loc["ce_weight=0.1, kd_weight=0.9, temperature=2", "method code sha256"] == NOT_RECORDED


def test_teachers_accuracy_checksums_and_given_weights(tables):
    teachers = tables["config_teachers"].display.set_index("dataset")
    trained, given = teachers.loc["cifar100"], teachers.loc["cifar100-lt-exp-10"]
    assert trained["test top-1 (%)"] == "72.50" and trained["sha256"] == "abababababababab…"
    assert trained["weights"] == "trained (seed 0)"
    assert trained["students"] == "3 runs, 1 used other weights (sha256 0000000000000000…)"
    assert given["weights"] == "given: teacher.pt (sha256 cdcdcdcdcdcdcdcd…)" and given["sha256"] == "cdcdcdcdcdcdcdcd…"
    assert given["test top-1 (%)"] == "80.00" and given["students"] == "none in this report"
    data = tables["config_teachers"].data.set_index("dataset")
    assert data.loc["cifar100", "sha256"] == MODEL_SHA and data.loc["cifar100", "students_other_weights"] == 1
    # a student of the given teacher: without the teacher's model.pt checksum there is nothing to compare with
    student = make_record("kd", 0, 60.0, data=dataset(rho=10), teacher_run=_records()[1].run_id)
    given_row = teachers_table([_records()[1], student]).display.iloc[0]
    assert given_row["students"] == f"1 run, not compared (the teacher's model checksum is {NOT_RECORDED})"


def test_code_and_environment_with_a_record_that_predates_provenance(tables):
    env = _cells(tables["config_environment"])["value"]
    assert env["runs"] == "7"
    assert env["git commit"] == f"0123456789ab+dirty (6 runs), {NOT_RECORDED} (1 run)"
    assert env["training code sha256"] == f"dddddddddddddddd… (6 runs), {NOT_RECORDED} (1 run)"
    assert env["torch"] == f"2.3.0+cu121 (6 runs), {NOT_RECORDED} (1 run)"
    assert env["timm"] == f"not installed (6 runs), {NOT_RECORDED} (1 run)"
    assert env["device"] == f"cuda:0 (NVIDIA A100) (6 runs), {NOT_RECORDED} (1 run)"
    assert env["Slurm jobs"] == "1" and env["resumed runs"] == "1 of 6"
    assert env["first start"] == f"2026-01-01 00:00:00 UTC (1 run: {NOT_RECORDED})"
    assert env["last end"] == f"2026-01-03 00:00:00 UTC (1 run: {NOT_RECORDED})"
    assert env["training time"] == "60.0 min over 6 runs"  # 6 × 600 s
    data = _cells(tables["config_data"], "dataset")
    assert data.loc["cifar100", "train subset"] == f"feedfacefeedface (5 runs), {NOT_RECORDED} (1 run)"
    assert data.loc["cifar100", "validation"] == "none" and data.loc["cifar100", "runs"] == 6
    assert data.loc["cifar100-lt-exp-10", "source"] == "cifar100, long-tailed (exp, ρ = 10)"


def test_old_records_read_not_recorded():
    """A record with an empty spec and no provenance (the oldest format) fills every cell with 'not recorded'."""
    record = make_record("kd", 0, 50.0).model_copy(update={"spec": {}, "provenance": {}, "code": {}})
    tables = {table.name: table for table in provenance_tables([record])}
    recipe = tables["config_recipe"].display
    assert set(recipe.iloc[:, 1]) == {NOT_RECORDED}
    assert tables["config_methods"].display.loc[0, "hyper-parameters"] == NOT_RECORDED
    env = _cells(tables["config_environment"])["value"].drop("runs")
    assert set(env) == {NOT_RECORDED}
    assert recipe_cells(None)["lr schedule"] == NOT_RECORDED
    assert _ADDED_DEFAULTS["recipe"] == RECIPE_ADDED_DEFAULTS  # what older records meant by a missing field


def test_two_grids_are_told_apart():
    records = [make_record("kd", 0, 50.0, grid="a"), make_record("kd", 0, 51.0, grid="b", params={"T": 2})]
    tables = {table.name: table for table in provenance_tables(records)}
    assert list(tables["config_environment"].display.columns) == ["setting", "a", "b"]
    assert tables["config_methods"].display["grid"].tolist() == ["a", "b"]
    reversed_order = {t.name: t for t in provenance_tables(records[::-1])}  # the report's first grid comes first
    assert reversed_order["config_methods"].display["grid"].tolist() == ["b", "a"]
    assert list(reversed_order["config_environment"].display.columns) == ["setting", "b", "a"]
    assert list(tables["config_recipe"].display.columns) == ["setting", "a: students (1 run)", "b: students (1 run)"]


def test_section_in_markdown_json_and_html(tmp_path, capsys):
    records = _records()
    for record in records:
        write_record(tmp_path / "g" / "runs" / record.run_id, record)
    out = tmp_path / "out"
    args = build_parser().parse_args(["report", str(tmp_path / "g"), "--format", "terminal", "--out", str(out)])
    report = run_report(args)
    text = (out / "report.md").read_text()
    assert "## Configuration and provenance" in text and "### Training recipe" in text
    assert "0.009375 (= 0.05 × 48 / 256)" in text and NOT_RECORDED in text
    assert not (out / "provenance.json").exists()  # machine-readable form with csv (or all)

    assert main(["report", str(tmp_path / "g"), "--format", "csv", "--out", str(out)]) == EXIT_OK
    payload = json.loads((out / "provenance.json").read_text())
    assert set(payload["tables"]) == {"config_recipe", "config_methods", "config_teachers", "config_data",
                                      "config_environment"}
    assert len(payload["runs"]) == 7 and {run["model_sha256"] for run in payload["runs"]} >= {MODEL_SHA}
    teachers = {row["dataset"]: row for row in payload["tables"]["config_teachers"]}
    assert teachers["cifar100"]["sha256"] == MODEL_SHA and teachers["cifar100-lt-exp-10"]["sha256"] == GIVEN_SHA

    page = write_html_report(report, frames_from_records(records), out, RULES["default"], plots=[])[0].read_text()
    assert page.count('<h2 id="configuration-and-provenance">Configuration and provenance</h2>') == 1
    assert page.count("<h3 ") == 5 and page.count("<table") == len(report.tables) + 5
    assert '<li><a href="#configuration-and-provenance">' in page and ">Teachers</h3>" in page
    assert "0.009375 (= 0.05 × 48 / 256)" in page and "abababababababab…" in page


def test_a_report_from_mlflow_says_where_provenance_lives():
    tables, entries, skipped = report_provenance([("g", None, ["x"])])
    assert tables == [] and entries == [] and "read from MLflow alone" in skipped[0]
