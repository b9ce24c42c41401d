"""Grid expansion into RunSpecs: counts, teacher links, overrides, and stable, unique run ids."""

import copy
import subprocess
import sys

import pytest

from kdbench.config import ConfigError, parse_grid
from kdbench.grid import expand_grid

BASE = {
    "name": "t",
    "datasets": [{"name": "synthetic"}, {"name": "synthetic", "long_tail": {"imbalance_ratio": 5}}],
    "pairs": [{"teacher": "cnn_large", "student": "cnn_small"}, {"teacher": "mlp_1200x2", "student": "cnn_small"}],
    "methods": ["vanilla", "kd"],
    "seeds": [0, 1, 2],
    "recipe": {"epochs": 2, "batch_size": 16, "milestones": [1]},
}


def _grid(**changes):
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return parse_grid(raw)


def test_counts_and_order():
    specs = expand_grid(_grid())
    teachers = [s for s in specs if s.stage == "teacher"]
    students = [s for s in specs if s.stage == "student"]
    assert len(teachers) == 2 * 2  # datasets × teacher archs, one teacher seed
    # vanilla students do not depend on the teacher: shared by both pairs
    assert sum(s.method == "vanilla" for s in students) == 2 * 3
    assert sum(s.method == "kd" for s in students) == 2 * 2 * 3
    assert specs.index(teachers[-1]) < specs.index(students[0])
    assert len({s.run_id for s in specs}) == len(specs)
    teacher_ids = {t.run_id for t in teachers}
    for spec in students:
        assert (spec.teacher is None) == (spec.method == "vanilla")
        if spec.teacher:
            assert spec.teacher.run_id in teacher_ids


def test_teacher_seed_same_gives_a_teacher_per_seed():
    specs = expand_grid(_grid(teacher_seed="same"))
    assert sum(s.stage == "teacher" for s in specs) == 2 * 2 * 3
    for spec in specs:
        if spec.teacher:
            teacher = next(t for t in specs if t.run_id == spec.teacher.run_id)
            assert teacher.seed == spec.seed and teacher.dataset == spec.dataset


def test_overrides_apply_in_order_to_matching_runs_only():
    grid = _grid(overrides=[
        {"when": {"student": "cnn_small", "teacher": "mlp_1200x2"}, "recipe": {"lr": 0.01}},
        {"when": {"method": "kd", "dataset": "synthetic-lt-exp-5"}, "params": {"temperature": 8}},
        {"when": {"stage": "teacher"}, "recipe": {"epochs": 3}},
    ])
    specs = expand_grid(grid)
    for spec in specs:
        if spec.stage == "teacher":
            assert spec.recipe.epochs == 3 and spec.recipe.lr == 0.05
            continue
        assert spec.recipe.epochs == 2
        from_mlp = spec.teacher is not None and spec.teacher.arch == "mlp_1200x2"
        assert spec.recipe.lr == (0.01 if from_mlp else 0.05)
        if spec.method == "kd":
            assert spec.params["temperature"] == (8.0 if spec.dataset.long_tail else 4.0)


def test_override_params_unknown_to_a_matched_method():
    grid = _grid(overrides=[{"when": {"stage": "student"}, "params": {"temperature": 8}}])
    with pytest.raises(ConfigError, match="overrides\\[0\\].params.*vanilla.*temperature"):
        expand_grid(grid)


def test_run_id_ignores_location_and_label_and_number_spelling(tmp_path):
    a = expand_grid(_grid(methods=[{"name": "kd", "params": {"temperature": 4}}]))
    b = expand_grid(_grid(methods=[{"name": "kd", "label": "hinton", "params": {"temperature": 4.0}}]))
    assert [s.run_id for s in a] == [s.run_id for s in b]
    c = expand_grid(_grid(methods=[{"name": "kd", "params": {"temperature": 5}}]))
    assert {s.run_id for s in a if s.stage == "student"}.isdisjoint({s.run_id for s in c if s.stage == "student"})


def test_every_field_changes_the_run_id():
    spec = expand_grid(_grid())[-1]
    variants = [
        spec.model_copy(update={"seed": spec.seed + 1}),
        spec.model_copy(update={"recipe": spec.recipe.model_copy(update={"lr": 0.2})}),
        spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"subset_seed": 9})}),
        spec.model_copy(update={"arch": "cnn_large"}),
        spec.model_copy(update={"params": {**spec.params, "temperature": 1.0}}),
    ]
    assert len({spec.run_id, *(v.run_id for v in variants)}) == 1 + len(variants)


def test_run_id_is_stable_across_processes():
    spec = expand_grid(_grid())[0]
    code = (
        "from kdbench.config import parse_grid; from kdbench.grid import expand_grid; import json, sys;"
        "print(expand_grid(parse_grid(json.loads(sys.argv[1])))[0].run_id)"
    )
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(BASE)], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == spec.run_id
    assert len(spec.run_id) == 16 and int(spec.run_id, 16) >= 0


def test_run_ids_are_stable_across_kdbench_versions():
    """Pinned ids (measured before the fields added for ImageNet, teachers from weights, tuning and student_ce):
    a field added at its default must not change the id of any run planned before it, or its results are lost."""
    from kdbench.config import parse_grid

    small = parse_grid({"name": "g", "datasets": [{"name": "synthetic"}], "seeds": [0], "methods": ["kd"],
                        "pairs": [{"teacher": "resnet8", "student": "resnet8"}]})
    assert [s.run_id for s in expand_grid(small)] == ["dba669e575008458", "87e60d235fcd9ad7"]
    lt = parse_grid({"name": "g", "datasets": [{"name": "cifar100", "root": "/nonexistent", "download": True,
                                                 "long_tail": {"imbalance_ratio": 100}}],
                     "pairs": [{"teacher": "resnet32x4", "student": "resnet8x4"}], "methods": ["dkd"], "seeds": [1]})
    assert [s.run_id for s in expand_grid(lt)] == ["48c3bc0c39df3dfe", "9375a1e079838bcf"]
