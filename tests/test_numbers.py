"""Floats as people read them: no binary noise in MLflow params and the lr metric, tuning labels (describe()),
table cells, and the configuration section; clean values keep the spelling they had before."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
from conftest import TINY_GRID

from kdbench.config import parse_grid
from kdbench.grid.expand import expand_grid
from kdbench.numfmt import clean_float, format_number, format_value, param_text
from kdbench.recipe import Recipe
from kdbench.report.render import cell_text, markdown
from kdbench.report.tables import Table
from kdbench.tracking.mlflow_sink import epoch_values, flatten_params
from kdbench.tracking.record import EpochLog

NOISY_LR = 0.05 * 0.1 * 0.1  # what a step schedule makes of 0.05 after two milestones
NOISY_SCALED = 0.05 * 48 / 256  # linear lr scaling at batch 48


def test_the_awkward_floats_are_really_noisy():
    assert repr(NOISY_LR) == "0.0005000000000000001" and repr(NOISY_SCALED) == "0.009375000000000001"
    assert repr(0.1 + 0.2) == "0.30000000000000004"


@pytest.mark.parametrize(("value", "text"), [
    (NOISY_LR, "0.0005"), (NOISY_SCALED, "0.009375"), (0.1 + 0.2, "0.3"), (4.0, "4"), (5e-05, "5e-5"),
    (2.5e-7, "2.5e-7"), (1e13, "1e13"), (1234567.0, "1234567"), (1 / 3, "0.333333333333"), (-0.0, "0"),
    (7, "7"), (True, "true"), (math.nan, "nan"), (-math.inf, "-inf"), ("fp32", "fp32"),
])
def test_format_number(value, text):
    assert format_number(value) == text


def test_format_value_and_clean_float():
    assert format_value([0.1 + 0.2, 2, "x"]) == "[0.3, 2, x]" and format_value(None) == "none"
    assert format_value({"a": NOISY_LR}) == "{a: 0.0005}"
    assert clean_float(NOISY_LR) == 0.0005 and clean_float(0.1) == 0.1 and math.isnan(clean_float(math.nan))


@pytest.mark.parametrize(("value", "text"), [
    (NOISY_LR, "0.0005"), (4.0, "4.0"), (5e-05, "5e-05"), (0.05, "0.05"), ([0.1, 0.1 + 0.2], "[0.1, 0.3]"),
    ([1, 2], "[1, 2]"), (["a", 0.5], "['a', 0.5]"), ("plain", "plain"), (None, "None"), (True, "True"),
])
def test_param_text_keeps_python_spelling_without_noise(value, text):
    assert param_text(value) == text


def test_mlflow_params_and_lr_metric_have_no_noise():
    spec = {"recipe": Recipe(lr=NOISY_LR, milestones=(12, 16)).model_dump(mode="json"),
            "params": {"temperature": 0.1 + 0.2, "weights": [0.1, 0.1 + 0.2]}, "teacher": None}
    params = flatten_params(spec)
    assert params["recipe.lr"] == "0.0005" and params["params.temperature"] == "0.3"
    assert params["params.weights"] == "[0.1, 0.3]" and params["recipe.milestones"] == "[12, 16]"
    clean = Recipe(lr=0.05, weight_decay=5e-4, momentum=0.9).model_dump(mode="json")
    # clean values read exactly as str() logged them before (no param of an existing MLflow run changes)
    assert flatten_params({"recipe": clean}) == {f"recipe.{k}": str(v) for k, v in clean.items()}
    entry = EpochLog(epoch=17, lr=NOISY_LR, train={"total": 1.0}, test_top1=1.0, test_top5=1.0, seconds=1.0,
                     images_per_s=1.0)
    assert epoch_values(entry)["lr"] == 0.0005 and entry.lr == NOISY_LR  # the record keeps the exact float


def test_tuning_labels_and_describe_have_no_noise():
    raw = copy.deepcopy(TINY_GRID)
    raw["methods"] = ["vanilla", {"name": "kd", "sweep": {"temperature": [0.1 + 0.2, 4.0]}}]
    raw["tuning"] = {"budget": 2, "seeds": [0]}
    raw["datasets"] = raw["datasets"][1:]  # the long-tailed one has a validation split
    specs = [spec for spec in expand_grid(parse_grid(raw)) if spec.tuning]
    assert sorted(spec.label for spec in specs) == ["kd[temperature=0.3]", "kd[temperature=4.0]"]
    assert all("0000" not in spec.describe() for spec in specs)


def test_table_cells_show_floats_without_noise_in_every_format():
    assert cell_text(NOISY_LR) == "0.0005" and cell_text(None) == "—" and cell_text(pd.NA) == "—"
    display = pd.DataFrame({"setting": ["lr"], "value": [NOISY_LR], "n": [3]})
    table = Table("t", "T", display, display)
    text = markdown(table)
    assert "0.0005 |" in text and "000000" not in text
