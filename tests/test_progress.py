"""Elapsed time and ETA: formatting, the per-run and per-grid arithmetic, Slurm's wait line, and the FLOPs table."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from kdbench.config import parse_grid
from kdbench.estimate.flops import TABLE_CLASSES, count_forward_flops, flops_table, table_flops
from kdbench.grid import expand_grid
from kdbench.grid.progress import GridProgress, relative_costs
from kdbench.grid.slurm_status import SlurmRunState
from kdbench.grid.slurm_submit import wait_line
from kdbench.grid.status import PlannedRun
from kdbench.models import build_model, model_info, model_names
from kdbench.progress import epoch_eta, format_duration, progress_text, rate_eta


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0:00"), (7.4, "0:07"), (59.6, "1:00"), (754, "12:34"), (3723, "1:02:03"), (86_400 * 3 + 14_706, "3d 04:05:06"),
    (None, "?"), (-1, "?"), (math.inf, "?"), (math.nan, "?"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_epoch_eta_is_mean_epoch_time_times_epochs_left():
    assert epoch_eta(30.0, 3, 7) == pytest.approx(70.0)  # 10 s per epoch, 7 left
    assert epoch_eta(30.0, 3, 0) == 0.0
    assert epoch_eta(0.0, 0, 5) is None  # no epoch trained in this session yet
    assert progress_text(83, epoch_eta(30.0, 3, 19)) == "elapsed 1:23, ETA 3:10"


def test_rate_eta():
    assert rate_eta(done_cost=2.0, elapsed=60.0, remaining_cost=6.0) == pytest.approx(180.0)
    assert rate_eta(done_cost=0.0, elapsed=60.0, remaining_cost=6.0) is None
    assert rate_eta(done_cost=2.0, elapsed=60.0, remaining_cost=0.0) == 0.0


class Clock:
    """A clock the test sets by hand (GridProgress takes any callable returning seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _specs(tiny_grid_raw, **changes):
    return expand_grid(parse_grid({**tiny_grid_raw, **changes}))


def test_grid_eta_weighs_remaining_runs_by_their_relative_cost(tiny_grid_raw):
    specs = _specs(tiny_grid_raw, pairs=[{"teacher": "cnn_large", "student": "cnn_small"}], datasets=[
        tiny_grid_raw["datasets"][0]])
    costs = relative_costs(specs)
    teacher = next(s for s in specs if s.stage == "teacher")
    assert costs[teacher.run_id] > max(costs[s.run_id] for s in specs if s.stage == "student")  # cnn_large trains

    clock = Clock()
    progress = GridProgress(specs, clock=clock)
    assert progress.line() == f"runs 0/{len(specs)} done, elapsed 0:00, ETA ?"
    clock.now += 120.0
    progress.finish(teacher.run_id)
    remaining = sum(costs.values()) - costs[teacher.run_id]
    expected = remaining * 120.0 / costs[teacher.run_id]
    assert progress.eta() == pytest.approx(expected)
    assert progress.line() == f"runs 1/{len(specs)} done, elapsed 2:00, ETA {format_duration(expected)}"

    student = next(s for s in specs if s.stage == "student")
    progress.drop(next(s.run_id for s in specs if s.stage == "student" and s is not student))  # blocked
    clock.now += 30.0
    progress.finish(student.run_id, failed=True)
    assert progress.line().startswith(f"runs 2/{len(specs) - 1} done (1 failed), elapsed 2:30, ETA ")


def test_runs_the_model_cannot_cost_weigh_the_mean_of_the_others(tiny_grid_raw, tmp_path):
    specs = _specs(tiny_grid_raw, datasets=[tiny_grid_raw["datasets"][0],
                                            {"name": "image_folder", "root": str(tmp_path / "absent")}])
    costs = relative_costs(specs)
    known = [costs[s.run_id] for s in specs if s.dataset.name == "synthetic"]
    for spec in specs:
        if spec.dataset.name == "image_folder":  # its size needs its files
            assert costs[spec.run_id] == pytest.approx(sum(known) / len(known))


def test_slurm_wait_line_counts_states_and_estimates_from_runs_ended_while_waiting(tiny_grid_raw):
    specs = _specs(tiny_grid_raw, datasets=[tiny_grid_raw["datasets"][0]], seeds=[0])
    teacher, *students = specs
    costs = {teacher.run_id: 4.0, **{s.run_id: 1.0 for s in students}}

    def states(teacher_state: str, student_state: str) -> list[SlurmRunState]:
        return ([SlurmRunState(PlannedRun(teacher, "new", None), teacher_state)]
                + [SlurmRunState(PlannedRun(s, "new", None), student_state) for s in students])

    waiting = wait_line(states("running", "pending"), costs, set(), 65.0)
    assert waiting == ("[elapsed 1:05] teacher runs: 1 (0 done, 1 running, 0 pending, 0 failed) | student runs: "
                       f"{len(students)} (0 done, 0 running, {len(students)} pending, 0 failed) | ETA ?")
    # the teacher (cost 4) ended after 100 s: the students' cost 2 takes 50 s more at that rate
    line = wait_line(states("done", "running"), costs, set(), 100.0)
    assert line.endswith("| ETA 0:50") and "teacher runs: 1 (1 done" in line
    # a teacher done before the wait began says nothing about the rate
    assert wait_line(states("done", "running"), costs, {teacher.run_id}, 100.0).endswith("| ETA ?")


def test_flops_table_covers_every_model_at_its_input():
    table = flops_table()
    for arch in model_names(include_unlisted=True):
        info = model_info(arch)
        for classes in TABLE_CLASSES:
            assert (arch, info.in_channels, info.input_size, classes) in table, (
                f"{arch} with {classes} classes is missing: run `python benchmarks/model_flops.py`")


@pytest.mark.parametrize(("arch", "classes"), [("resnet8x4", 100), ("wrn_16_2", 100), ("cnn_small", 10),
                                               ("resnet20", 10)])
def test_flops_table_rows_match_a_count_on_the_cpu(arch, classes):
    info = model_info(arch)
    model = build_model(arch, classes).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, info.in_channels, info.input_size, info.input_size))
    assert flops_table()[(arch, info.in_channels, info.input_size, classes)] == counter.get_total_flops()


def test_flops_table_mlp_rows_equal_their_multiply_adds():
    for arch, hidden in (("mlp_800x2", 800), ("mlp_1200x2", 1200)):
        for classes in TABLE_CLASSES:
            assert flops_table()[(arch, 1, 28, classes)] == 2 * (784 * hidden + hidden * hidden + hidden * classes)


def test_flops_are_linear_in_classes_so_other_class_counts_interpolate_exactly():
    table = flops_table()
    for arch, channels, size, _ in {key[:3] + (0,) for key in table}:
        f10, f100, f1000 = (table[(arch, channels, size, c)] for c in TABLE_CLASSES)
        assert f1000 - f10 == pytest.approx((f100 - f10) * 11, abs=1), arch  # one line through all three rows
    for arch, classes in (("cnn_small", 4), ("resnet8x4", 200)):
        info = model_info(arch)
        counted = count_forward_flops(arch, classes, info.input_size, info.in_channels)
        assert table_flops(arch, info.in_channels, info.input_size, classes) == pytest.approx(counted, abs=1)
