"""kd_loss against an independent NumPy computation, and a finite-difference gradient check."""

import math

import numpy as np
import pytest
import torch

from kdbench.loss import LossContext, Progress
from kdbench.methods.kd import KD, kd_loss


def _reference_kd(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """T² · mean over rows of Σ_c p_t (log p_t − log p_s), written out with explicit exponentials."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        s_exp = [math.exp(v / temperature) for v in s_row]
        t_exp = [math.exp(v / temperature) for v in t_row]
        p_s = [v / sum(s_exp) for v in s_exp]
        p_t = [v / sum(t_exp) for v in t_exp]
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
    return temperature**2 * total / len(student)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_loss_matches_independent_computation(temperature):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
    value = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert value.item() == pytest.approx(_reference_kd(student, teacher, temperature), rel=1e-5)


def test_kd_loss_golden_value():
    student = torch.tensor([[1.0, 2.0, 3.0]])
    teacher = torch.tensor([[3.0, 2.0, 1.0]])
    # hand computation at T=1: p_t = softmax([3,2,1]) = [.6652, .2447, .0900]; KL = Σ p_t (log p_t - log p_s)
    # log p_t - log p_s = [3-1, 0, 1-3] = [2, 0, -2] (the normalisers cancel) → KL = 2(.6652 - .0900)
    expected = 2 * (0.66524096 - 0.09003057)
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_batch_averaged():
    logits = torch.randn(4, 10)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    a, b = torch.randn(1, 10), torch.randn(1, 10)
    single = kd_loss(a, b, 4.0)
    doubled = kd_loss(torch.cat([a, a]), torch.cat([b, b]), 4.0)
    assert doubled.item() == pytest.approx(single.item(), rel=1e-6)  # batchmean, not sum or per-class mean


def test_kd_loss_gradient_finite_differences():
    student = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, dtype=torch.float64)

    def loss64(s):
        log_ps = torch.log_softmax(s / 4.0, 1)
        log_pt = torch.log_softmax(teacher / 4.0, 1)
        return (log_pt.exp() * (log_pt - log_ps)).sum() / s.shape[0] * 16.0

    assert torch.autograd.gradcheck(loss64, (student,))
    # kd_loss computes in fp32: compare its analytic gradient with the float64 finite differences
    s32 = student.detach().float().requires_grad_(True)
    kd_loss(s32, teacher.float(), 4.0).backward()
    numeric = torch.zeros_like(student)
    eps = 1e-6
    with torch.no_grad():
        for index in np.ndindex(*student.shape):
            plus, minus = student.clone(), student.clone()
            plus[index] += eps
            minus[index] -= eps
            numeric[index] = (loss64(plus) - loss64(minus)) / (2 * eps)
    torch.testing.assert_close(s32.grad.double(), numeric, rtol=1e-4, atol=1e-6)


def test_kd_method_weights_terms_and_gives_teacher_no_gradient():
    method = KD(LossContext(num_classes=4), temperature=2.0, ce_weight=0.3, kd_weight=0.7)
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(6, 4, requires_grad=True)
    target = torch.randint(0, 4, (6,))
    terms = method({"logits": student}, {"logits": teacher.detach()}, {"target": target}, Progress(1, 1))
    assert set(terms) == {"ce", "kd"}
    expected_kd = 0.7 * kd_loss(student, teacher, 2.0)
    torch.testing.assert_close(terms["kd"], expected_kd)
    torch.testing.assert_close(terms["ce"], 0.3 * torch.nn.functional.cross_entropy(student, target))
    sum(terms.values()).backward()
    assert student.grad is not None and teacher.grad is None


def test_unknown_hyperparameter_names_closest_match():
    with pytest.raises(ValueError, match="no hyper-parameter 'temprature'.*did you mean 'temperature'"):
        KD(LossContext(num_classes=4), temprature=3.0)


def test_check_view_rows_names_the_view_and_the_wrong_tensor():
    from kdbench.loss import check_view_rows

    target = torch.zeros(3, dtype=torch.long)
    assert check_view_rows("m", "weak_strong", 2, target, student=torch.zeros(6, 5)) == 3
    with pytest.raises(ValueError, match="m needs the weak_strong view: 2×3 rows, got 3 teacher rows"):
        check_view_rows("m", "weak_strong", 2, target, student=torch.zeros(6, 5), teacher=torch.zeros(3, 5))
