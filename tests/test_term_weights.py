"""DistillLoss.term_weights: every method declares the weight of each term it returns, and the declaration is true
(scaling a declared weight scales exactly its terms), so the report can plot the terms unweighted."""

from __future__ import annotations

import numpy as np
import pytest
from method_harness import train_steps

import kdbench.methods  # noqa: F401  (registers the built-in methods)
from kdbench.loss import METHODS, DistillLoss, Needs, register_method

#: Methods the single-view harness can run (crd needs batch extras, mlkd and mlld multi-view batches).
HARNESS_METHODS = ["vanilla", "kd", "dkd", "at", "fitnet", "rkd", "bkd", "rrd", "trg"]


@pytest.mark.parametrize("name", METHODS.names())
def test_every_declared_weight_is_a_numeric_hyper_parameter(name):
    method = METHODS.get(name)
    assert "ce" in method.term_weights, f"{name}: the CE term's weight is not declared"
    for term, weight in method.term_weights.items():
        value = method.defaults[weight]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (name, term, weight)


@pytest.mark.parametrize("name", HARNESS_METHODS)
def test_scaling_a_declared_weight_scales_exactly_its_terms(name):
    method = METHODS.get(name)
    weights = sorted(set(method.term_weights.values()))
    factor = {weight: 2.0 + k for k, weight in enumerate(weights)}  # a different factor per weight
    # epoch 20 is past DKD's warm-up (factor 1); the first step's terms are computed before any update
    run = {"steps": 1, "batch_size": 16, "num_classes": 4, "input_shape": (1, 28, 28), "epoch": 20, "epochs": 20}
    base = train_steps(name, "cnn_large", "cnn_small", **run)
    scaled = train_steps(name, "cnn_large", "cnn_small",
                         {weight: method.defaults[weight] * factor[weight] for weight in weights}, **run)
    terms = base.terms[0]
    assert set(terms) <= set(method.term_weights), f"{name}: undeclared terms {set(terms) - set(method.term_weights)}"
    for term, value in terms.items():
        expected = value * factor[method.term_weights[term]]
        assert scaled.terms[0][term] == pytest.approx(expected, rel=1e-5), (name, term)


def test_term_scales_divide_by_the_run_s_weights_and_dkd_by_its_warm_up():
    kd = METHODS.get("kd").term_scales({"ce_weight": 0.25}, np.array([1, 2]))
    assert kd["ce"].tolist() == [0.25, 0.25] and kd["kd"].tolist() == [0.9, 0.9]  # kd_weight from the defaults
    dkd = METHODS.get("dkd").term_scales({"alpha": 2.0, "beta": 8.0, "warmup": 4.0}, np.array([1, 2, 4, 9]))
    assert dkd["tckd"].tolist() == [0.5, 1.0, 2.0, 2.0]  # α · min(epoch / 4, 1)
    assert dkd["nckd"].tolist() == [2.0, 4.0, 8.0, 8.0]
    assert dkd["ce"].tolist() == [1.0] * 4
    no_warmup = METHODS.get("dkd").term_scales({"warmup": 0.0}, np.array([1]))
    assert no_warmup["tckd"].tolist() == [1.0]


def test_a_declared_weight_that_is_no_hyper_parameter_is_refused_at_registration():
    class Broken(DistillLoss):
        needs = Needs(teacher_taps=())
        defaults = {"ce_weight": 1.0, "mode": "fast"}
        term_weights = {"ce": "ce_weight", "extra": "extra_weight"}

    with pytest.raises(ValueError, match=r"term_weights\['extra'\] = 'extra_weight'.*allowed: ce_weight"):
        register_method("broken_weights_test")(Broken)

    class WeightedByText(DistillLoss):
        needs = Needs(teacher_taps=())
        defaults = {"ce_weight": 1.0, "mode": "fast"}
        term_weights = {"ce": "mode"}

    with pytest.raises(ValueError, match="must name a numeric hyper-parameter"):
        register_method("text_weight_test")(WeightedByText)
    assert "broken_weights_test" not in METHODS and "text_weight_test" not in METHODS


def test_a_method_without_ce_weight_keeps_the_inherited_declaration_and_has_no_scale():
    class Plain(DistillLoss):
        needs = Needs(teacher_taps=())
        defaults = {"temperature": 1.0}

    registered = register_method("plain_no_weights_test")(Plain)
    try:
        assert registered.term_scales({}, np.array([1])) == {}  # its CE is plotted as logged
    finally:
        METHODS._items.pop("plain_no_weights_test")
