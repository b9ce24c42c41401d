"""The dry-run plan: summary counts per stage × method × pair × dataset, --verbose, and the GPU-hour estimate."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml

from kdbench.cli import main
from kdbench.config import parse_grid
from kdbench.estimate import ASSUMED_TFLOPS, CostModel, model_cost
from kdbench.grid import grid_paths, plan_grid
from kdbench.grid.plan_summary import GROUPINGS, choose_grouping, format_hours, plan_items
from kdbench.tracking.record import EpochLog, EvalResult, RunRecord, write_record

REPO = Path(__file__).resolve().parents[1]


def _record(spec, status: str = "done", seconds: float = 3.0) -> RunRecord:
    """A finished run's record as the engine writes it (no training): two epochs of ``seconds`` each."""
    final = EvalResult(top1=50.0, top5=90.0, balanced_acc=50.0, loss=1.0, num_images=32,
                       per_class_correct=[4] * 4, per_class_total=[8] * 4) if status == "done" else None
    history = [EpochLog(epoch=e, lr=0.05, train={"total": 1.0, "top1": 50.0}, test_top1=50.0, test_top5=90.0,
                        seconds=seconds, images_per_s=96 / seconds) for e in (1, 2)] if status == "done" else []
    return RunRecord(run_id=spec.run_id, grid="tiny", status=status, reason=None if status == "done" else "boom",
                     stage=spec.stage, method=spec.method, label=spec.display_method, arch=spec.arch, pair=spec.pair,
                     dataset=spec.dataset.variant, seed=spec.seed, subset_seed=0, spec=spec.model_dump(mode="json"),
                     config_sha256="0" * 64, class_counts=[24] * 4, final=final, history=history,
                     provenance={"device": "cpu", "device_name": "test-cpu"})


def _dry_run(path: Path, capsys, *extra: str) -> str:
    assert main(["run", str(path), "--dry-run", *extra]) == 0
    return capsys.readouterr().out


def _table_rows(out: str) -> dict[tuple[str, ...], list[str]]:
    """Summary rows keyed by their first four cells (stage, method, pair, dataset)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("plan: "))
    rows = {}
    for line in lines[start + 2:]:
        if line.strip().startswith("---"):
            break
        cells = line.split()
        rows[tuple(cells[:4])] = cells[4:]
    return rows


@pytest.fixture
def tiny_grid_file(tiny_grid_raw, tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_raw))
    return path


def test_summary_counts_with_some_runs_done_and_one_failed(tiny_grid_raw, tiny_grid_file, capsys):
    grid = parse_grid(tiny_grid_raw)
    paths, planned = plan_grid(grid)
    specs = [run.spec for run in planned]
    balanced = [s for s in specs if s.dataset.long_tail is None]
    teacher = next(s for s in balanced if s.stage == "teacher")
    kd = [s for s in balanced if s.method == "kd"]
    vanilla = [s for s in balanced if s.method == "vanilla" and s.stage == "student"]
    for spec in (teacher, kd[0], vanilla[0], vanilla[1]):
        write_record(paths.runs_root / spec.run_id, _record(spec))
    write_record(paths.runs_root / kd[1].run_id, _record(kd[1], status="failed"))

    rows = _table_rows(_dry_run(tiny_grid_file, capsys))
    # 2 datasets × (1 teacher, vanilla and kd on 2 seeds): six rows, every key kept
    assert rows[("teacher", "teacher", "cnn_small", "synthetic")][:3] == ["1", "1", "0"]
    assert rows[("teacher", "teacher", "cnn_small", "synthetic-lt-exp-4")][:3] == ["1", "0", "1"]
    assert rows[("student", "vanilla", "cnn_small", "synthetic")][:3] == ["2", "2", "0"]
    assert rows[("student", "kd", "cnn_small->cnn_small", "synthetic")][:3] == ["2", "1", "0"]  # failed: not rerun
    assert rows[("student", "kd", "cnn_small->cnn_small", "synthetic-lt-exp-4")][:3] == ["2", "0", "2"]
    assert len(rows) == 6

    rerun = _table_rows(_dry_run(tiny_grid_file, capsys, "--rerun", "failed"))
    assert rerun[("student", "kd", "cnn_small->cnn_small", "synthetic")][:3] == ["2", "1", "1"]


def test_done_runs_are_costed_from_their_measured_epochs(tiny_grid_raw, tiny_grid_file, capsys):
    grid = parse_grid(tiny_grid_raw)
    paths, planned = plan_grid(grid)
    vanilla = [run.spec for run in planned if run.spec.label == "vanilla" and run.spec.dataset.long_tail is None]
    write_record(paths.runs_root / vanilla[0].run_id, _record(vanilla[0], seconds=1800.0))
    out = _dry_run(tiny_grid_file, capsys)
    cells = _table_rows(out)[("student", "vanilla", "cnn_small", "synthetic")]
    # measured: 1800 s per epoch × 2 epochs per run = 1 hour each; one run left to do
    assert cells[:5] == ["2", "1", "1", "1.00", "2.00"] and cells[5] == "measured"
    assert "test-cpu" in out and "ESTIMATE" in out


def test_verbose_lists_every_run_and_the_default_lists_none(tiny_grid_raw, tiny_grid_file, capsys):
    planned = plan_grid(parse_grid(tiny_grid_raw))[1]
    quiet = _dry_run(tiny_grid_file, capsys)
    verbose = _dry_run(tiny_grid_file, capsys, "--verbose")
    for run in planned:
        assert run.spec.run_id not in quiet
        line = next(line for line in verbose.splitlines() if run.spec.run_id in line)
        assert line.split()[0] == run.status and run.spec.describe() in line and "GPU-h" in line
    assert not (grid_paths(parse_grid(tiny_grid_raw)).runs_root).exists()  # a dry run writes nothing


def _mlp_forward_flops(hidden: int, classes: int) -> float:
    """Hinton's MNIST MLPs: 784 → hidden → hidden → classes, 2 FLOPs per multiply-add (biases not counted)."""
    return 2.0 * (784 * hidden + hidden * hidden + hidden * classes)


def _factor(method: str) -> float:
    """The factor as the shipped table states it, read here with the csv module."""
    text = (REPO / "kdbench" / "estimate" / "method_factors.csv").read_text().splitlines()
    rows = csv.DictReader(line for line in text if not line.startswith("#"))
    return next(float(row["factor"]) for row in rows if row["method"] == method)


def test_estimate_equals_an_independent_computation(tiny_grid_raw, tmp_path, capsys):
    epochs = 40_000_000  # nothing trains in a dry run: epochs only scale the estimate to hours
    raw = {**tiny_grid_raw, "pairs": [{"teacher": "mlp_1200x2", "student": "mlp_800x2"}],
           "methods": ["vanilla", "kd", "crd"], "recipe": {**tiny_grid_raw["recipe"], "epochs": epochs}}
    path = tmp_path / "mlp.yaml"
    path.write_text(yaml.safe_dump(raw))
    student, teacher = _mlp_forward_flops(800, 4), _mlp_forward_flops(1200, 4)
    rate = ASSUMED_TFLOPS * 1e12
    lt_counts = [int(24 * 0.25 ** (c / 3)) for c in range(4)]  # exp profile, rho 4: 24, 15, 9, 6
    sizes = {"synthetic": (96, 32), "synthetic-lt-exp-4": (sum(lt_counts), 32 + sum(min(2, 24 - k) for k in lt_counts))}

    def expected(stage: str, method: str, dataset: str) -> float:
        train, evaluated = sizes[dataset]
        if stage == "teacher":
            return epochs * (train * 3 * teacher + evaluated * teacher) / rate
        step = 3 * student + (teacher if method != "vanilla" else 0.0)
        return epochs * (train * step * _factor(method) + evaluated * student) / rate

    planned = plan_grid(parse_grid(raw))[1]
    for run in planned:
        got = model_cost(run.spec)
        assert got.basis == "model"
        assert math.isclose(got.seconds, expected(run.spec.stage, run.spec.method, run.spec.dataset.variant),
                            rel_tol=1e-9), run.spec.describe()

    total = sum(expected(r.spec.stage, r.spec.method, r.spec.dataset.variant) for r in planned)
    out = _dry_run(path, capsys)
    total_line = next(line for line in out.splitlines() if line.strip().startswith("total"))
    assert total_line.split()[1:6] == [str(len(planned)), "0", str(len(planned)), format_hours(total, 0, 1),
                                       format_hours(total, 0, 1)]
    assert float(format_hours(total, 0, 1).replace(",", "")) > 1  # the check compares real digits


def test_grouping_sums_keys_until_the_table_fits(tiny_grid_raw):
    grid = parse_grid({**tiny_grid_raw, "seeds": [0], "methods": ["vanilla", "kd", "dkd", "rkd"]})
    items = plan_items(plan_grid(grid)[1], [], CostModel())
    assert choose_grouping(items) == GROUPINGS[0]
    # 2 teacher rows + 2 datasets × 4 methods = 10 rows; with room for 9, summing pairs gains nothing (one pair
    # per method), summing datasets leaves 1 teacher row + 4 method rows
    assert choose_grouping(items, max_rows=9) == ("stage", "method", "pair")
    assert choose_grouping(items, max_rows=1) == ("stage",)


@pytest.mark.parametrize(("seconds", "unknown", "runs", "text"), [
    (0.0, 0, 0, "0"), (36.0, 0, 1, "0.01"), (3.0, 0, 1, "<0.01"), (3600 * 12.34, 0, 3, "12.3"),
    (3600 * 1234.4, 0, 9, "1,234"), (7200.0, 1, 3, "≥ 2.00"), (0.0, 2, 2, "unknown"),
])
def test_format_hours(seconds, unknown, runs, text):
    assert format_hours(seconds, unknown, runs) == text
