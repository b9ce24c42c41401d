"""DKD: dkd_loss against an independent loop computation and hand-computed cases, gradients, labels, warm-up,
and 2 real training steps through the shared method harness."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_harness import central_difference_grad, checkpoint_round_trip, train_steps

from kdbench.loss import METHODS, LossContext, Progress
from kdbench.methods.dkd import DKD, _dkd_parts, dkd_loss, dkd_terms, warmup_factor


def _softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def _reference_dkd(student, teacher, target, alpha, beta, temperature) -> float:
    """α·TCKD + β·NCKD written out per sample with explicit loops (float64, no torch)."""
    tckd = nckd = 0.0
    for s_row, t_row, g in zip(student, teacher, target, strict=True):
        p_s = _softmax([v / temperature for v in s_row])
        p_t = _softmax([v / temperature for v in t_row])
        b_s, b_t = [p_s[g], 1.0 - p_s[g]], [p_t[g], 1.0 - p_t[g]]
        tckd += sum(bt * math.log(bt / bs) for bt, bs in zip(b_t, b_s, strict=True))
        others = [c for c in range(len(s_row)) if c != g]
        q_s = _softmax([s_row[c] / temperature for c in others])
        q_t = _softmax([t_row[c] / temperature for c in others])
        nckd += sum(qt * math.log(qt / qs) for qt, qs in zip(q_t, q_s, strict=True))
    return temperature**2 * (alpha * tckd + beta * nckd) / len(student)


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (1.0, 0.5, 1.0), (2.0, 6.0, 2.0)])
def test_dkd_loss_matches_independent_computation(alpha, beta, temperature):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
    target = rng.integers(0, 7, size=5)
    value = dkd_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(target), alpha, beta, temperature)
    expected = _reference_dkd(student.tolist(), teacher.tolist(), target.tolist(), alpha, beta, temperature)
    assert value.dtype == torch.float64  # float64 inputs are kept (fp16/bf16 would be upcast to fp32)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_dkd_hand_computed_cases():
    student = torch.zeros(1, 3)  # uniform: b_s = [1/3, 2/3], non-target p̂_s = [1/2, 1/2]
    target = torch.tensor([0])
    # teacher softmax [1/2, 1/4, 1/4] (T=1): only the target probability differs → NCKD = 0,
    # TCKD = ½·ln(½ / ⅓) + ½·ln(½ / ⅔) = ½·ln(9/8)
    tckd, nckd = dkd_terms(student, torch.tensor([[math.log(2.0), 0.0, 0.0]]), target, 1.0)
    assert tckd.item() == pytest.approx(0.5 * math.log(9 / 8), rel=1e-6)
    assert nckd.item() == pytest.approx(0.0, abs=1e-7)
    # teacher logits [0, 2·ln 3, 0] at T=2: softmax [1/5, 3/5, 1/5] → b_t = [1/5, 4/5], p̂_t = [3/4, 1/4]
    # TCKD = T²·(⅕·ln(⅕ / ⅓) + ⅘·ln(⅘ / ⅔)), NCKD = T²·(¾·ln(¾ / ½) + ¼·ln(¼ / ½))
    teacher = torch.tensor([[0.0, 2 * math.log(3.0), 0.0]])
    tckd_expected = 4 * (0.2 * math.log(0.6) + 0.8 * math.log(1.2))
    nckd_expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    value = dkd_loss(student, teacher, target, alpha=1.0, beta=8.0, temperature=2.0)
    assert value.item() == pytest.approx(tckd_expected + 8 * nckd_expected, rel=1e-6)


def test_dkd_is_zero_for_identical_logits_and_batch_averaged():
    logits, target = torch.randn(4, 10), torch.randint(0, 10, (4,))
    assert dkd_loss(logits, logits, target, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    a, b, y = torch.randn(1, 10), torch.randn(1, 10), torch.tensor([3])
    single = dkd_loss(a, b, y, 1.0, 8.0, 4.0)
    doubled = dkd_loss(torch.cat([a, a]), torch.cat([b, b]), torch.cat([y, y]), 1.0, 8.0, 4.0)
    assert doubled.item() == pytest.approx(single.item(), rel=1e-6)  # divided by B, not by B·C


def test_dkd_gradient_finite_differences():
    torch.manual_seed(0)
    student = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 5, dtype=torch.float64)
    target = torch.tensor([0, 4, 2])
    # the computation itself, in float64 (dkd_loss only adds the label checks and the cast to fp32)
    assert torch.autograd.gradcheck(lambda s: _dkd_parts(s, teacher, target, 2.0), (student,))
    # the public fp32 function: its analytic gradient against central differences of the independent reference
    s32 = student.detach().float().requires_grad_(True)
    dkd_loss(s32, teacher.float(), target, 1.0, 8.0, 2.0).backward()

    def reference(s: torch.Tensor) -> float:
        return _reference_dkd(s.tolist(), teacher.tolist(), target.tolist(), 1.0, 8.0, 2.0)

    numeric = central_difference_grad(reference, student)
    torch.testing.assert_close(s32.grad.double(), numeric, rtol=1e-4, atol=1e-6)


def test_dkd_stays_finite_when_the_target_probability_rounds_to_one():
    # at T=1 a logit gap of 300 makes 1 − p_g = e^-300: naive log(sum of masked softmax) would be −inf
    student = torch.tensor([[300.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[5.0, 0.0, 0.0], [200.0, 0.0, 0.0]])
    target = torch.tensor([0, 0])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        s = student.detach().to(dtype).requires_grad_(True)
        value = dkd_loss(s, teacher.to(dtype), target, 1.0, 8.0, 1.0)
        value.backward()
        assert value.dtype == torch.float32
        assert torch.isfinite(value) and torch.isfinite(s.grad).all(), dtype
    # low-precision inputs give the fp32 result of their rounded values
    logits_s, logits_t = torch.randn(4, 10).bfloat16(), torch.randn(4, 10).bfloat16()
    y = torch.randint(0, 10, (4,))
    assert dkd_loss(logits_s, logits_t, y, 1.0, 8.0, 4.0).item() == pytest.approx(
        dkd_loss(logits_s.float(), logits_t.float(), y, 1.0, 8.0, 4.0).item(), rel=1e-6
    )
    logits_s, logits_t = torch.randn(4, 10), torch.randn(4, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_value = dkd_loss(logits_s, logits_t, y, 1.0, 8.0, 4.0)
    assert autocast_value.item() == pytest.approx(dkd_loss(logits_s, logits_t, y, 1.0, 8.0, 4.0).item(), rel=1e-6)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer class labels"),
        (F.one_hot(torch.tensor([0, 1, 2, 3]), 10).float(), "soft labels"),
        (torch.tensor([[0], [1], [2], [3]]), "one integer class label per sample"),
        (torch.tensor([0, 1, 2]), r"shape \(4,\); got shape \(3,\)"),
        (torch.tensor([0, -1, 2, 3]), r"\[0, 10\), got \[-1\]"),
        (torch.tensor([0, 1, 10, 3]), r"\[0, 10\), got \[10\]"),
    ],
)
def test_dkd_rejects_soft_and_out_of_range_labels(target, message):
    student, teacher = torch.randn(4, 10), torch.randn(4, 10)
    with pytest.raises(ValueError, match=message):
        dkd_loss(student, teacher, target, 1.0, 8.0, 4.0)
    method = DKD(LossContext(num_classes=10))
    with pytest.raises(ValueError, match=message):  # raised before the CE sees the labels
        method({"logits": student}, {"logits": teacher}, {"target": target}, Progress(1, 1))


def test_dkd_method_terms_and_warmup():
    assert METHODS.get("dkd") is DKD
    assert DKD.defaults == {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20.0}
    torch.manual_seed(1)
    student, teacher, target = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    method = DKD(LossContext(num_classes=10), ce_weight=0.5, alpha=2.0, beta=3.0, temperature=4.0)
    tckd, nckd = dkd_terms(student, teacher, target, 4.0)
    for epoch, factor in [(1, 1 / 20), (10, 0.5), (20, 1.0), (240, 1.0)]:
        assert warmup_factor(epoch, 20.0) == pytest.approx(factor)
        terms = method({"logits": student}, {"logits": teacher}, {"target": target}, Progress(epoch, 240))
        assert set(terms) == {"ce", "tckd", "nckd"}
        assert terms["ce"].item() == pytest.approx(0.5 * F.cross_entropy(student, target).item(), rel=1e-6)
        assert terms["tckd"].item() == pytest.approx(factor * 2.0 * tckd.item(), rel=1e-6)
        assert terms["nckd"].item() == pytest.approx(factor * 3.0 * nckd.item(), rel=1e-6)
        distill = (terms["tckd"] + terms["nckd"]).item()
        assert distill == pytest.approx(factor * dkd_loss(student, teacher, target, 2.0, 3.0, 4.0).item(), rel=1e-6)
    assert warmup_factor(1, 0) == 1.0  # no warm-up


def test_dkd_trains_same_family_pair_and_gives_teacher_no_gradient():
    result = train_steps("dkd", "resnet32", "resnet8", epoch=20)
    assert len(result.terms) == 2 and set(result.terms[0]) == {"ce", "tckd", "nckd"}
    assert result.student_grads == result.student_params  # CE + DKD reach every student parameter
    assert result.extra_parameters == 0 and not result.loss_params
    # distillation alone (CE weight 0) still reaches the student, and never the teacher
    probe = train_steps("dkd", "resnet32", "resnet8", {"ce_weight": 0.0}, epoch=20, steps=1, teacher_grad=True)
    assert probe.student_grads and not probe.teacher_grads
    assert probe.terms[-1]["tckd"] + probe.terms[-1]["nckd"] > 0


@pytest.mark.slow
def test_dkd_trains_cross_family_pair():
    result = train_steps("dkd", "vgg13", "MobileNetV2")
    assert all(math.isfinite(total) for total in result.totals())
    assert result.student_grads and not result.teacher_grads


def test_dkd_checkpoint_round_trip():
    result = train_steps("dkd", "resnet32", "resnet8", {"beta": 6.0}, steps=1)
    fresh = checkpoint_round_trip(result.loss)
    assert isinstance(fresh, DKD) and fresh.hparams == result.loss.hparams and fresh.hparams["beta"] == 6.0
    student, teacher, target = torch.randn(4, 10), torch.randn(4, 10), torch.randint(0, 10, (4,))
    args = ({"logits": student}, {"logits": teacher}, {"target": target}, Progress(3, 10))
    expected, got = result.loss(*args), fresh(*args)
    assert {k: v.item() for k, v in got.items()} == {k: v.item() for k, v in expected.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dkd_on_cuda_matches_cpu():
    student, teacher, target = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    cpu = dkd_loss(student, teacher, target, 1.0, 8.0, 4.0)
    cuda = dkd_loss(student.cuda(), teacher.cuda(), target.cuda(), 1.0, 8.0, 4.0)
    assert cuda.item() == pytest.approx(cpu.item(), rel=1e-5)
