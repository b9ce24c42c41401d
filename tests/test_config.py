"""Grid validation: every bad input fails early with one clear line naming the field, value and what is allowed."""

import copy
from pathlib import Path

import pytest

from kdbench.config import ConfigError, load_grid, parse_grid

BASE = {
    "name": "t",
    "datasets": [{"name": "synthetic"}],
    "pairs": [{"teacher": "cnn_large", "student": "cnn_small"}],
    "methods": ["vanilla", "kd"],
    "seeds": [0, 1],
    "recipe": {"epochs": 2, "batch_size": 16, "milestones": [1]},
}


def _with(**changes):
    grid = copy.deepcopy(BASE)
    grid.update(changes)
    return grid


def _error(raw) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_grid(raw)
    return str(caught.value)


def test_valid_grid_parses():
    grid = parse_grid(copy.deepcopy(BASE))
    assert [m.name for m in grid.methods] == ["vanilla", "kd"]
    assert grid.pairs[0].teacher.arch == "cnn_large"


def test_unknown_method_names_closest_match():
    message = _error(_with(methods=["vanilla", "kdd"]))
    assert "methods[1].name" in message and "'kdd'" in message and "did you mean 'kd'" in message


def test_unknown_model_names_closest_match():
    message = _error(_with(pairs=[{"teacher": "resnet32x4", "student": "resnet8X4"}]))
    assert "pairs[0].student.arch" in message and "'resnet8X4'" in message and "did you mean 'resnet8x4'" in message


def test_rho_below_one():
    message = _error(_with(datasets=[{"name": "synthetic", "long_tail": {"imbalance_ratio": 0.5}}]))
    assert "datasets[0].long_tail.imbalance_ratio = 0.5" in message and "greater than or equal to 1" in message


@pytest.mark.parametrize("epochs", [0, -3])
def test_epochs_not_positive(epochs):
    message = _error(_with(recipe={"epochs": epochs}))
    assert f"recipe.epochs = {epochs}" in message and "greater than 0" in message


def test_missing_dataset_root_plans_and_preflight_names_it(tmp_path):
    from kdbench.grid.preflight import preflight_problems

    grid = parse_grid(_with(datasets=[{"name": "mnist", "root": str(tmp_path / "nowhere")}]))  # planning needs no data
    (problem,) = preflight_problems(grid)  # `kdbench run` stops on it before anything is trained or submitted
    assert problem.startswith("datasets[0].root: ") and "nowhere" in problem


def test_dataset_root_required_for_mnist():
    from kdbench.grid.preflight import preflight_problems

    (problem,) = preflight_problems(parse_grid(_with(datasets=[{"name": "mnist"}])))
    assert problem.startswith("datasets[0].root: ") and "none is set" in problem


def test_long_tail_checks_run_without_the_files(tmp_path):
    message = _error(_with(datasets=[{"name": "cifar100", "root": str(tmp_path),
                                      "long_tail": {"imbalance_ratio": 1000}}]))
    assert "datasets[0]: dataset.long_tail.imbalance_ratio: 1000" in message


def test_duplicate_pair():
    pair = {"teacher": "cnn_large", "student": "cnn_small"}
    message = _error(_with(pairs=[pair, dict(pair)]))
    assert "pairs[1]" in message and "duplicate pair cnn_large->cnn_small" in message and "pairs[0]" in message


def test_unknown_hyperparameter():
    message = _error(_with(methods=[{"name": "kd", "params": {"temprature": 2}}]))
    assert "temprature" in message and "did you mean 'temperature'" in message


def test_unknown_field_is_named_with_the_allowed_fields():
    message = _error(_with(recipe={"epochs": 2, "learning_rate": 0.1}))
    assert "recipe.learning_rate: unknown field" in message
    assert "allowed: " in message and "batch_size" in message and "epochs" in message
    nested = _error(_with(methods=[{"name": "kd", "parms": {}}]))
    assert "methods[0].parms: unknown field (did you mean 'params'?); allowed: label, name, params" in nested


def test_override_that_matches_nothing():
    message = _error(_with(overrides=[{"when": {"student": "cnn_smal"}, "recipe": {"lr": 0.01}}]))
    assert "overrides[0].when.student = 'cnn_smal' matches nothing" in message and "cnn_small" in message


def test_pair_with_different_inputs():
    message = _error(_with(pairs=[{"teacher": "resnet8", "student": "cnn_small"}]))
    assert "pairs[0]" in message and "must share its input" in message


def test_repeated_method_needs_label():
    message = _error(_with(methods=["kd", {"name": "kd", "params": {"temperature": 8}}]))
    assert "methods[1]" in message and "label" in message


def test_unreadable_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\npairs: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_grid(path)
    assert "bad.yaml" in str(caught.value) and "unreadable YAML" in str(caught.value)
    assert "line" in str(caught.value)


def test_missing_grid_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read grid file"):
        load_grid(tmp_path / "absent.yaml")


def test_yaml_is_safe_loaded(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="unreadable YAML"):
        load_grid(path)


def test_method_whose_needs_the_dataset_cannot_meet(tmp_path):
    from kdbench.grid import plan_grid

    plugin = tmp_path / "rotation_method.py"
    plugin.write_text(
        "from kdbench.loss import DistillLoss, Needs, register_method\n"
        "@register_method('needs_rotations')\n"
        "class NeedsRotations(DistillLoss):\n"
        "    '''A test method that asks for a view the data layer does not give.'''\n"
        "    needs = Needs(views='stereo_pair')\n"
    )
    grid = parse_grid(_with(plugins=[str(plugin)], methods=["needs_rotations"]), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="method 'needs_rotations' on pair cnn_large->cnn_small, dataset synthetic: "
                       "needs views 'stereo_pair'"):
        plan_grid(grid, tmp_path / "results")


def test_method_needing_a_tap_the_model_lacks(tmp_path):
    from kdbench.grid import plan_grid

    plugin = tmp_path / "token_method.py"
    plugin.write_text(
        "from kdbench.loss import DistillLoss, Needs, register_method\n"
        "@register_method('needs_tokens')\n"
        "class NeedsTokens(DistillLoss):\n"
        "    '''A test method that needs token maps.'''\n"
        "    needs = Needs(student_taps=('logits', 'tokens'))\n"
    )
    raw = _with(plugins=[str(plugin)], methods=["needs_tokens"],
                pairs=[{"teacher": "mlp_1200x2", "student": "mlp_800x2"}])
    grid = parse_grid(raw, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="pair mlp_1200x2->mlp_800x2.*needs the student tap 'tokens', "
                       "which student mlp_800x2"):
        plan_grid(grid, tmp_path / "results")


def test_plugin_file_missing(tmp_path):
    message = _error(_with(plugins=["no_such_plugin.py"]))
    assert "plugins[0] = 'no_such_plugin.py'" in message


def test_shipped_grids_parse(monkeypatch):
    root = Path(__file__).resolve().parents[1]
    grid = load_grid(root / "experiments" / "demo.yaml")
    assert grid.name == "demo" and len(grid.datasets) == 2
    mnist_raw = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"
    if mnist_raw.is_dir():
        grid = load_grid(root / "experiments" / "mnist_hinton.yaml", data_root=str(mnist_raw))
        assert grid.datasets[0].root == str(mnist_raw)


def test_fitnet_hint_stage_the_pair_lacks_fails_at_plan_time(tmp_path):
    from kdbench.grid import plan_grid

    raw = _with(pairs=[{"teacher": "resnet20", "student": "resnet8"}],
                methods=[{"name": "fitnet", "params": {"hint_stage": 5}}])
    with pytest.raises(ConfigError, match="'fitnet' on pair resnet20->resnet8.*tap 'stage5'.*resnet8 does not have"):
        plan_grid(parse_grid(raw), tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_cnn_teacher_with_timm_vit_student_sizes_by_kwargs():
    vit = {"arch": "timm:vit_tiny_patch16_224",
           "kwargs": {"img_size": 32, "patch_size": 4, "depth": 2, "embed_dim": 64, "num_heads": 2}}
    grid = parse_grid(_with(pairs=[{"teacher": "resnet8", "student": vit}]))
    assert grid.pairs[0].student.kwargs["img_size"] == 32
    message = _error(_with(pairs=[{"teacher": "resnet8", "student": {**vit, "kwargs": {"depth": 2}}}]))
    assert "must share its input" in message and "224" in message  # the default ViT takes 224×224
