"""MLLD (Jin et al., CVPR 2023): pure functions and both variants against independent loops, masks, real steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from method_harness import checkpoint_round_trip
from test_method_mlkd import train_with_views

from kdbench.loss import METHODS, LossContext, Progress
from kdbench.methods.mlld import MLLD, batch_correlation_loss, class_correlation_loss, confidence_masks

PROGRESS = Progress(epoch=1, epochs=1)
TEMPS = [2.0, 3.0, 4.0, 5.0, 6.0]


# ---------------------------------------------------------------------------------------------------- references


def _probs(logits: np.ndarray, temperature: float) -> np.ndarray:
    out = np.zeros(logits.shape)
    for i, row in enumerate(logits):
        exps = [math.exp(v / temperature) for v in row]
        out[i] = [e / sum(exps) for e in exps]
    return out


def _ref_kl_rows(student: np.ndarray, teacher: np.ndarray, temperature: float) -> list[float]:
    """T²·KL(p_t ‖ p_s) for every sample."""
    p_s, p_t = _probs(student, temperature), _probs(teacher, temperature)
    return [temperature**2 * sum(t * (math.log(t) - math.log(s)) for s, t in zip(p_s[i], p_t[i], strict=True))
            for i in range(len(student))]


def _ref_batch_rows(student: np.ndarray, teacher: np.ndarray, temperature: float) -> list[float]:
    """Σ_j (G_t − G_s)_ij², G_ij = Σ_c p_ic·p_jc, for every sample i."""
    p_s, p_t = _probs(student, temperature), _probs(teacher, temperature)
    rows = []
    for i in range(len(p_s)):
        total = 0.0
        for j in range(len(p_s)):
            g_s = sum(p_s[i, c] * p_s[j, c] for c in range(p_s.shape[1]))
            g_t = sum(p_t[i, c] * p_t[j, c] for c in range(p_t.shape[1]))
            total += (g_t - g_s) ** 2
        rows.append(total)
    return rows


def _ref_class_rows(student: np.ndarray, teacher: np.ndarray, temperature: float) -> list[float]:
    """Σ_d (M_t − M_s)_cd², M_cd = Σ_i p_ic·p_id, for every class c."""
    p_s, p_t = _probs(student, temperature), _probs(teacher, temperature)
    classes = p_s.shape[1]
    rows = []
    for c in range(classes):
        total = 0.0
        for d in range(classes):
            m_s = sum(p_s[i, c] * p_s[i, d] for i in range(len(p_s)))
            m_t = sum(p_t[i, c] * p_t[i, d] for i in range(len(p_t)))
            total += (m_t - m_s) ** 2
        rows.append(total)
    return rows


def _ref_masks(teacher_weak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = _probs(teacher_weak, 1.0)
    confidence, class_total = probs.max(axis=1), probs.sum(axis=0)
    return confidence <= np.percentile(confidence, 50), class_total <= np.percentile(class_total, 50)


def _ref_ce(logits: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean([-math.log(_probs(logits[i : i + 1], 1.0)[0, target[i]]) for i in range(len(logits))]))


def _reference_mlld(student: np.ndarray, teacher: np.ndarray, target: np.ndarray, variant: str,
                    temps=TEMPS, ce_weight: float = 0.1, kd_weight: float = 0.9) -> dict[str, float]:
    """Both variants, written from the docstring's formulas with the loops above."""
    size, classes = len(target), student.shape[1]
    s_w, s_s, t_w, t_s = student[:size], student[size:], teacher[:size], teacher[size:]
    mask, class_mask = _ref_masks(t_w)
    instance = batch = klass = 0.0
    for temp in temps:
        if variant == "described":
            instance += sum(m * v for m, v in zip(mask, _ref_kl_rows(s_w, t_w, temp), strict=True)) / size
            instance += sum(_ref_kl_rows(s_s, t_s, temp)) / size
            batch += sum(m * v for m, v in zip(mask, _ref_batch_rows(s_w, t_w, temp), strict=True)) / size
            batch += sum(m * v for m, v in zip(mask, _ref_batch_rows(s_s, t_s, temp), strict=True)) / size
            klass += sum(m * v for m, v in zip(class_mask, _ref_class_rows(s_w, t_w, temp), strict=True)) / classes
            klass += sum(_ref_class_rows(s_s, t_s, temp)) / classes
        else:
            weak_kd = sum(_ref_kl_rows(s_w, t_w, temp)) / size
            instance += weak_kd * mask.mean()
            instance += weak_kd if temp in (2.0, 6.0) else sum(_ref_kl_rows(s_s, t_s, temp)) / size
            batch += sum(_ref_batch_rows(s_w, t_w, temp)) / size * mask.mean()
            klass += sum(_ref_class_rows(s_w, t_w, temp)) / classes * class_mask.mean()
    ce = _ref_ce(s_w, target) + _ref_ce(s_s, target)
    return {"ce": ce_weight * ce, "instance": kd_weight * instance, "batch": kd_weight * batch,
            "class": kd_weight * klass}


# ---------------------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_batch_and_class_correlation_match_loops(temperature: float) -> None:
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
    s, t = torch.tensor(student), torch.tensor(teacher)
    assert batch_correlation_loss(s, t, temperature).item() == pytest.approx(
        sum(_ref_batch_rows(student, teacher, temperature)) / 5, rel=1e-9)
    assert class_correlation_loss(s, t, temperature).item() == pytest.approx(
        sum(_ref_class_rows(student, teacher, temperature)) / 7, rel=1e-9)


def test_correlation_hand_case() -> None:
    # one sample, 2 classes, T=1: p_s = [.5, .5], p_t = [.75, .25]
    # G_s = .5, G_t = .625 → batch = (.125)²/1 = .015625
    # M_s = [[.25,.25],[.25,.25]], M_t = [[.5625,.1875],[.1875,.0625]] → Σ diff² = .140625, /C=2 → .0703125
    student = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    assert batch_correlation_loss(student, teacher, 1.0).item() == pytest.approx(0.015625, rel=1e-6)
    assert class_correlation_loss(student, teacher, 1.0).item() == pytest.approx(0.0703125, rel=1e-6)
    logits = torch.randn(4, 6)
    assert batch_correlation_loss(logits, logits, 3.0).item() == 0.0
    assert class_correlation_loss(logits, logits, 3.0).item() == 0.0


def test_pure_functions_finite_difference_gradients() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(4, 5, dtype=torch.float64) * 2
    student = (torch.randn(4, 5, dtype=torch.float64) * 2).requires_grad_()
    for temperature in (1.0, 4.0):
        assert torch.autograd.gradcheck(lambda s, t=temperature: batch_correlation_loss(s, teacher, t), (student,))
        assert torch.autograd.gradcheck(lambda s, t=temperature: class_correlation_loss(s, teacher, t), (student,))


# ---------------------------------------------------------------------------------------------------- masks


def _logits_with_max_prob(max_probs: list[float], classes: int = 3) -> torch.Tensor:
    """Rows whose softmax has max ``p`` on class 0 and (1 − p)/(C − 1) elsewhere."""
    rows = [[math.log(p)] + [math.log((1 - p) / (classes - 1))] * (classes - 1) for p in max_probs]
    return torch.tensor(rows)


def test_masks_keep_the_less_confident_half_at_or_below_the_median() -> None:
    # even B: median interpolates (.6 + .7)/2 = .65 → keep .5 and .6
    sample_mask, _ = confidence_masks(_logits_with_max_prob([0.9, 0.5, 0.7, 0.6]))
    assert sample_mask.tolist() == [False, True, False, True]
    # odd B: the median .7 itself is kept ("at or below")
    sample_mask, _ = confidence_masks(_logits_with_max_prob([0.9, 0.5, 0.7]))
    assert sample_mask.tolist() == [False, True, True]
    # classes: summed probability per class, kept at or below the median over classes
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0]])
    _, class_mask = confidence_masks(logits)
    assert class_mask.tolist() == [False, False, True, True]
    rng = np.random.default_rng(3)
    for rows in (6, 7):
        teacher = rng.normal(size=(rows, 9)) * 3
        sample_mask, class_mask = confidence_masks(torch.tensor(teacher))
        ref_sample, ref_class = _ref_masks(teacher)
        assert sample_mask.tolist() == ref_sample.tolist() and class_mask.tolist() == ref_class.tolist()


# ---------------------------------------------------------------------------------------------------- the module


def _ctx(classes: int = 6) -> LossContext:
    return LossContext(num_classes=classes, student_shapes={"logits": (classes,)},
                       teacher_shapes={"logits": (classes,)})


def _inputs(batch: int = 6, classes: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    student, teacher = rng.normal(size=(2 * batch, classes)) * 2, rng.normal(size=(2 * batch, classes)) * 3
    target = rng.integers(0, classes, size=batch)
    return student, teacher, target


def _run(loss: MLLD, student: np.ndarray, teacher: np.ndarray, target: np.ndarray, grad: bool = False):
    s = torch.tensor(student, dtype=torch.float32, requires_grad=grad)
    t = torch.tensor(teacher, dtype=torch.float32, requires_grad=grad)
    terms = loss({"logits": s}, {"logits": t}, {"target": torch.tensor(target)}, PROGRESS)
    return terms, s, t


def test_registration_needs_defaults_and_hparam_checks() -> None:
    assert METHODS.get("mlld") is MLLD
    assert MLLD.needs.views == "weak_strong" and MLLD.needs.student_taps == MLLD.needs.teacher_taps == ("logits",)
    assert MLLD.defaults == {"ce_weight": 0.1, "kd_weight": 0.9, "temperatures": TEMPS, "variant": "described"}
    assert "Jin" in MLLD.paper
    resolved = MLLD.resolve_hparams({"temperatures": [1, 2, 3, 5, 6]})
    assert resolved["temperatures"] == [1.0, 2.0, 3.0, 5.0, 6.0] and resolved["variant"] == "described"
    for bad in ({"variant": "paper"}, {"temperatures": []}, {"temperatures": [2, -1]}, {"temperatures": "2"}):
        with pytest.raises(ValueError, match="mlld"):
            MLLD.resolve_hparams(bad)
        with pytest.raises(ValueError, match="mlld"):
            MLLD(_ctx(), **bad)


@pytest.mark.parametrize("variant", ["described", "released"])
def test_variants_match_the_documented_formulas(variant: str) -> None:
    student, teacher, target = _inputs()
    terms, _, _ = _run(MLLD(_ctx(), variant=variant), student, teacher, target)
    expected = _reference_mlld(student, teacher, target, variant)
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=2e-5), name


def test_custom_temperatures_and_weights() -> None:
    student, teacher, target = _inputs(batch=5, classes=4, seed=1)
    for variant in ("described", "released"):
        loss = MLLD(_ctx(4), variant=variant, temperatures=[1, 2, 6], ce_weight=0.5, kd_weight=0.5)
        terms, _, _ = _run(loss, student, teacher, target)
        expected = _reference_mlld(student, teacher, target, variant, [1.0, 2.0, 6.0], 0.5, 0.5)
        for name, value in expected.items():
            assert terms[name].item() == pytest.approx(value, rel=2e-5), (variant, name)


def test_described_and_released_differ() -> None:
    student, teacher, target = _inputs()
    described, _, _ = _run(MLLD(_ctx()), student, teacher, target)
    released, _, _ = _run(MLLD(_ctx(), variant="released"), student, teacher, target)
    assert described["ce"].item() == pytest.approx(released["ce"].item())
    for name in ("instance", "batch", "class"):
        assert described[name].item() != pytest.approx(released[name].item(), rel=1e-3), name


def test_strong_batch_and_class_terms_only_count_in_described() -> None:
    student, teacher, target = _inputs()
    moved = student.copy()
    moved[6:] += np.random.default_rng(5).normal(size=moved[6:].shape) * 2  # student strong-view logits only
    for variant, strong_counts in (("described", True), ("released", False)):
        loss = MLLD(_ctx(), variant=variant)
        before, _, _ = _run(loss, student, teacher, target)
        after, _, _ = _run(loss, moved, teacher, target)
        for name in ("batch", "class"):
            same = after[name].item() == pytest.approx(before[name].item(), rel=1e-6)
            assert same != strong_counts, (variant, name)
        assert after["instance"].item() != pytest.approx(before["instance"].item(), rel=1e-6)
    # released: at T ∈ {2, 6} the "strong" instance sum reads the weak logits
    loss = MLLD(_ctx(), variant="released", temperatures=[2, 6])
    assert _run(loss, moved, teacher, target)[0]["instance"].item() == pytest.approx(
        _run(loss, student, teacher, target)[0]["instance"].item(), rel=1e-6)


def test_described_weak_instance_ignores_the_samples_the_mask_drops() -> None:
    student, teacher, target = _inputs()
    sample_mask, _ = confidence_masks(torch.tensor(teacher[:6]))
    dropped = (~sample_mask).nonzero().flatten().tolist()
    assert 0 < len(dropped) < 6
    moved = student.copy()
    moved[dropped] += 3.0 * np.arange(6)  # weak logits of confident (dropped) samples only
    described = MLLD(_ctx())
    assert _run(described, moved, teacher, target)[0]["instance"].item() == pytest.approx(
        _run(described, student, teacher, target)[0]["instance"].item(), rel=1e-6)
    released = MLLD(_ctx(), variant="released")  # released averages over every sample, then scales
    assert _run(released, moved, teacher, target)[0]["instance"].item() != pytest.approx(
        _run(released, student, teacher, target)[0]["instance"].item(), rel=1e-6)
    # and the gradient of the described instance term is zero on the dropped weak rows
    terms, s, _ = _run(described, student, teacher, target, grad=True)
    terms["instance"].backward()
    assert s.grad[dropped].abs().sum() == 0 and s.grad[sample_mask.nonzero().flatten()].abs().sum() > 0


@pytest.mark.parametrize("variant", ["described", "released"])
def test_gradients_reach_the_student_only(variant: str) -> None:
    student, teacher, target = _inputs()
    terms, s, t = _run(MLLD(_ctx(), variant=variant), student, teacher, target, grad=True)
    sum(terms.values()).backward()
    assert s.grad is not None and s.grad[:6].abs().sum() > 0 and s.grad[6:].abs().sum() > 0
    assert t.grad is None


def test_wrong_view_is_a_clear_error() -> None:
    student, teacher, target = _inputs()
    with pytest.raises(ValueError, match="weak_strong"):
        _run(MLLD(_ctx()), student, teacher, target[:4])


def test_bf16_autocast_keeps_the_terms_close() -> None:
    student, teacher, target = _inputs()
    loss = MLLD(_ctx())
    full, _, _ = _run(loss, student, teacher, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _, _ = _run(loss, student, teacher, target)
    for name in full:
        assert low[name].dtype == torch.float32
        assert low[name].item() == pytest.approx(full[name].item(), rel=1e-5), name


# ---------------------------------------------------------------------------------------------------- real steps


@pytest.mark.parametrize("variant", ["described", "released"])
def test_trains_two_steps_resnet20_to_resnet8(variant: str) -> None:
    result = train_with_views("mlld", "resnet20", "resnet8", {"variant": variant})
    assert result["rows"] == 2 * 4
    assert set(result["terms"][0]) == {"ce", "instance", "batch", "class"}
    for step in result["terms"]:
        assert all(math.isfinite(v) for v in step.values())
    assert all(p.grad is None for p in result["teacher"].parameters())
    assert result["changed"]  # the student moved
    fresh = checkpoint_round_trip(result["loss"])  # no parameters, no state: the round trip is trivial
    assert fresh.state_dict() == {} and fresh.hparams == result["loss"].hparams


@pytest.mark.slow
def test_trains_two_steps_cross_family_vgg13_to_mobilenetv2() -> None:
    result = train_with_views("mlld", "vgg13", "MobileNetV2")
    assert result["rows"] == 2 * 4
    for step in result["terms"]:
        assert all(math.isfinite(v) for v in step.values())
    assert all(p.grad is None for p in result["teacher"].parameters())
    assert result["changed"]
