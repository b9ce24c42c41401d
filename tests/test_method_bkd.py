"""BKD: bkd_loss against an independent loop computation, values pinned from the authors' released code, the
identity with KD to a shifted teacher, gradients, options, and real training steps through the method harness."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_harness import central_difference_grad, checkpoint_round_trip, train_steps

from kdbench.data import long_tailed_counts
from kdbench.loss import METHODS, LossContext, Progress
from kdbench.methods.bkd import BKD, bkd_loss, effective_number_weights
from kdbench.methods.kd import kd_loss


def _reference_weights(counts: list[int], beta: float) -> list[float]:
    """(1 − β)/(1 − β^n) per class, rescaled to sum to C, in plain Python floats."""
    raw = [(1.0 - beta) / (1.0 - beta**n) for n in counts]
    return [w / sum(raw) * len(counts) for w in raw]


def _reference_bkd(student, teacher, counts, temperature: float, beta: float) -> float:
    """T² · mean over rows of KL(q̃ ‖ p_s), q̃ = w·softmax(v/T) renormalised per row; explicit loops, no torch."""
    weights = _reference_weights(counts, beta)
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        s_exp = [math.exp(v / temperature) for v in s_row]
        t_exp = [math.exp(v / temperature) for v in t_row]
        p_s = [e / sum(s_exp) for e in s_exp]
        q = [e / sum(t_exp) for e in t_exp]
        weighted = [w * qc for w, qc in zip(weights, q, strict=True)]
        q_tilde = [x / sum(weighted) for x in weighted]
        total += sum(qt * math.log(qt / ps) for qt, ps in zip(q_tilde, p_s, strict=True))
    return temperature**2 * total / len(student)


# Inputs drawn with numpy's legacy RandomState (a frozen stream), and the values the authors' BKDLoss
# (EricZsy/BalancedKnowledgeDistillation @ 168dd0a, losses.py, their train_student.py weights; run on the CPU in
# fp32) gives on them: kd.sum()·T² ("bkd") and its returned loss α·kd_loss + CE ("total").
AUTHORS_CASES = {
    "cifar10_lt_T2": dict(seed=0, batch=8, n_max=5000, classes=10, temperature=2.0, beta=0.9999, scale=3.0,
                          alpha=1.0, bkd=6.367660999298096, total=12.251014709472656),
    "cifar100_lt_T2": dict(seed=1, batch=6, n_max=500, classes=100, temperature=2.0, beta=0.9999, scale=3.0,
                           alpha=1.0, bkd=9.64881420135498, total=18.151092529296875),
    "cifar10_lt_T4_alpha05": dict(seed=2, batch=5, n_max=5000, classes=10, temperature=4.0, beta=0.9999, scale=5.0,
                                  alpha=0.5, bkd=33.7796745300293, total=26.64474105834961),
    # their CIFAR-10 "DRW" schedule before epoch 160: β = 0, uniform weights
    "cifar10_drw_first_stage": dict(seed=3, batch=8, n_max=5000, classes=10, temperature=2.0, beta=0.0, scale=3.0,
                                    alpha=1.0, bkd=6.094611167907715, total=9.960798263549805),
}


def _authors_inputs(case: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    rng = np.random.RandomState(case["seed"])
    student = (rng.randn(case["batch"], case["classes"]) * case["scale"]).astype(np.float32)
    teacher = (rng.randn(case["batch"], case["classes"]) * case["scale"]).astype(np.float32)
    target = rng.randint(0, case["classes"], size=case["batch"])
    # CIFAR-LT counts with ρ = 100, as their IMBALANCECIFAR get_img_num_per_cls ('exp')
    return student, teacher, target, long_tailed_counts(case["n_max"], case["classes"], 100)


@pytest.mark.parametrize("name", sorted(AUTHORS_CASES))
def test_bkd_matches_the_authors_code(name):
    case = AUTHORS_CASES[name]
    student, teacher, target, counts = _authors_inputs(case)
    temperature, beta = case["temperature"], case["beta"]
    expected = _reference_bkd(student.astype(float).tolist(), teacher.astype(float).tolist(), counts, temperature, beta)
    # the authors' fp32 value agrees with the independent float64 computation to fp32 rounding
    assert case["bkd"] == pytest.approx(expected, rel=2e-7)
    for dtype in (torch.float64, torch.float32):
        value = bkd_loss(torch.tensor(student, dtype=dtype), torch.tensor(teacher, dtype=dtype), counts,
                         temperature, beta)
        assert value.dtype == dtype
        assert value.item() == pytest.approx(case["bkd"], rel=2e-7)
    # the method's total (CE weight 1, kd_weight = α) is their returned loss
    method = BKD(LossContext(num_classes=case["classes"], class_counts=tuple(counts)), temperature=temperature,
                 beta=beta, kd_weight=case["alpha"])
    terms = method({"logits": torch.tensor(student)}, {"logits": torch.tensor(teacher)},
                   {"target": torch.tensor(target)}, Progress(1, 200))
    assert sum(terms.values()).item() == pytest.approx(case["total"], rel=2e-7)


@pytest.mark.parametrize(("temperature", "beta"), [(1.0, 0.9999), (2.0, 0.999), (4.0, 0.99), (2.0, 0.5)])
def test_bkd_loss_matches_independent_computation(temperature, beta):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
    counts = [900, 400, 150, 60, 20, 8, 3]
    value = bkd_loss(torch.tensor(student), torch.tensor(teacher), counts, temperature, beta)
    expected = _reference_bkd(student.tolist(), teacher.tolist(), counts, temperature, beta)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_bkd_is_kd_to_the_teacher_shifted_by_t_log_w():
    # w_c·exp(v_c/T) = exp((v_c + T·log w_c)/T): the reweighted, renormalised target is KD's target for v + T·log w
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10, dtype=torch.float64) * 3, torch.randn(6, 10, dtype=torch.float64) * 3
    counts = long_tailed_counts(5000, 10, 100)
    for temperature in (1.0, 2.0, 4.0):
        shift = temperature * torch.tensor(_reference_weights(counts, 0.9999), dtype=torch.float64).log()
        torch.testing.assert_close(bkd_loss(student, teacher, counts, temperature, 0.9999),
                                   kd_loss(student, teacher + shift, temperature), rtol=1e-12, atol=0)
    # uniform weights (β = 0, or a balanced training set) give plain KD; long-tailed weights do not
    torch.testing.assert_close(bkd_loss(student, teacher, counts, 2.0, 0.0), kd_loss(student, teacher, 2.0))
    torch.testing.assert_close(bkd_loss(student, teacher, [50] * 10, 2.0, 0.9999), kd_loss(student, teacher, 2.0))
    assert abs(bkd_loss(student, teacher, counts, 2.0, 0.9999).item() - kd_loss(student, teacher, 2.0).item()) > 0.1


def test_effective_number_weights_hand_case():
    # counts [1, 2], β = ½: raw (½)/(½) = 1 and (½)/(¾) = ⅔, sum ⁵⁄₃ → rescaled to sum 2: [6/5, 4/5]
    torch.testing.assert_close(effective_number_weights([1, 2], 0.5), torch.tensor([1.2, 0.8], dtype=torch.float64))
    weights = effective_number_weights(long_tailed_counts(500, 100, 100), 0.9999)
    assert weights.sum().item() == pytest.approx(100.0) and bool((weights[1:] >= weights[:-1]).all())
    assert effective_number_weights([5, 50, 500], 0.0).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"positive training count.*class\(es\) \[1\]"):
        effective_number_weights([3, 0, 2], 0.9999)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got 1.0"):
        effective_number_weights([3, 2], 1.0)


def test_bkd_gradient_against_central_differences_of_the_reference():
    torch.manual_seed(1)
    student = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, dtype=torch.float64)
    counts = [40, 12, 7, 3, 1]
    bkd_loss(student, teacher, counts, 2.0, 0.99).backward()

    def reference(s: torch.Tensor) -> float:
        return _reference_bkd(s.tolist(), teacher.tolist(), counts, 2.0, 0.99)

    torch.testing.assert_close(student.grad, central_difference_grad(reference, student), rtol=1e-6, atol=1e-8)


def test_bkd_low_precision_is_computed_in_fp32():
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    counts = long_tailed_counts(5000, 10, 100)
    low = bkd_loss(student.bfloat16(), teacher.bfloat16(), counts, 2.0, 0.9999)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(
        bkd_loss(student.bfloat16().float(), teacher.bfloat16().float(), counts, 2.0, 0.9999).item(), rel=1e-6)


def test_bkd_method_terms_and_weight_start_epoch():
    assert METHODS.get("bkd") is BKD
    assert BKD.defaults == {"ce_weight": 1.0, "kd_weight": 1.0, "temperature": 2.0, "beta": 0.9999,
                            "weight_start_epoch": 0}
    counts = tuple(long_tailed_counts(5000, 10, 100))
    torch.manual_seed(2)
    student, teacher, target = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    args = ({"logits": student}, {"logits": teacher}, {"target": target})
    method = BKD(LossContext(num_classes=10, class_counts=counts), ce_weight=0.5, kd_weight=2.0,
                 weight_start_epoch=160)
    balanced = bkd_loss(student, teacher, counts, 2.0, 0.9999)
    for epoch, distill in [(1, kd_loss(student, teacher, 2.0)), (160, kd_loss(student, teacher, 2.0)),
                           (161, balanced), (200, balanced)]:
        terms = method(*args, Progress(epoch, 200))
        assert set(terms) == {"ce", "bkd"}
        assert terms["ce"].item() == pytest.approx(0.5 * F.cross_entropy(student, target).item(), rel=1e-6)
        assert terms["bkd"].item() == pytest.approx(2.0 * distill.item(), rel=1e-6), epoch
    default = BKD(LossContext(num_classes=10, class_counts=counts))
    assert default(*args, Progress(1, 200))["bkd"].item() == pytest.approx(balanced.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"beta": 1.0}, r"bkd: beta must be in \[0, 1\) \(0 gives uniform weights\), got 1.0"),
        ({"temperature": 0}, "bkd: temperature must be > 0, got 0"),
        ({"weight_start_epoch": -1}, r"bkd: weight_start_epoch must be an integer ≥ 0 .*got -1"),
        ({"weight_start_epoch": 1.5}, "bkd: weight_start_epoch must be an integer"),
        ({"kd_weight": "high"}, "bkd: kd_weight must be a number, got 'high'"),
        ({"alpha": 1.0}, "method 'bkd' has no hyper-parameter 'alpha'"),
    ],
)
def test_bkd_bad_values_fail_at_grid_validation(params, message):
    with pytest.raises(ValueError, match=message):
        BKD.check_hparams(params)


def test_bkd_needs_every_class_count():
    with pytest.raises(ValueError, match=r"bkd needs the training counts of all 4 classes.*got 0"):
        BKD(LossContext(num_classes=4))
    with pytest.raises(ValueError, match=r"bkd: every class needs a positive training count.*\[2\]"):
        BKD(LossContext(num_classes=3, class_counts=(5, 3, 0)))


def test_bkd_trains_and_gives_teacher_no_gradient():
    result = train_steps("bkd", "resnet32", "resnet8", num_classes=4, batch_size=8, teacher_grad=True)
    assert len(result.terms) == 2 and set(result.terms[0]) == {"ce", "bkd"}
    assert result.student_grads == result.student_params and not result.teacher_grads
    assert result.extra_parameters == 0 and result.loss.state_dict() == {}  # the weights are derived, not state
    fresh = checkpoint_round_trip(result.loss)
    torch.testing.assert_close(fresh.log_class_weights, result.loss.log_class_weights)
