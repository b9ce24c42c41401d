"""RKD: rkd_loss against an independent loop computation and a hand-computed case, invariances, gradients,
and 2 real training steps through the shared method harness."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_harness import checkpoint_round_trip, classifier_params, train_steps

from kdbench.loss import METHODS, LossContext, Progress
from kdbench.methods.rkd import RKD, rkd_loss, rkd_terms


def _smooth_l1(pairs) -> float:
    values = [0.5 * (a - b) ** 2 if abs(a - b) < 1 else abs(a - b) - 0.5 for a, b in pairs]
    return sum(values) / len(values)


def _reference_relations(embedding: np.ndarray) -> tuple[list[float], list[float]]:
    """Flattened ψ (B²) and angle cosines (B³) with explicit loops over i, j, k."""
    count = len(embedding)
    distance = [
        [
            0.0 if i == j else math.sqrt(max(float(np.sum((embedding[i] - embedding[j]) ** 2)), 1e-12))
            for j in range(count)
        ]
        for i in range(count)
    ]
    positive = [d for row in distance for d in row if d > 0]
    mean = sum(positive) / len(positive)
    psi = [d / mean for row in distance for d in row]
    angles = []
    for i in range(count):
        for j in range(count):
            for k in range(count):
                u, v = embedding[j] - embedding[i], embedding[k] - embedding[i]
                nu, nv = float(np.linalg.norm(u)), float(np.linalg.norm(v))
                angles.append(0.0 if nu == 0 or nv == 0 else float(np.dot(u, v)) / (nu * nv))
    return psi, angles


def _reference_rkd(student: np.ndarray, teacher: np.ndarray, distance_weight: float, angle_weight: float) -> float:
    psi_s, angle_s = _reference_relations(student)
    psi_t, angle_t = _reference_relations(teacher)
    return distance_weight * _smooth_l1(zip(psi_s, psi_t, strict=True)) + angle_weight * _smooth_l1(
        zip(angle_s, angle_t, strict=True)
    )


@pytest.mark.parametrize(("distance_weight", "angle_weight"), [(25.0, 50.0), (1.0, 0.0), (0.0, 1.0)])
def test_rkd_loss_matches_independent_computation(distance_weight, angle_weight):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(5, 6)), rng.normal(size=(5, 9)) * 4  # widths differ
    value = rkd_loss(
        torch.tensor(student, dtype=torch.float32),
        torch.tensor(teacher, dtype=torch.float32),
        distance_weight,
        angle_weight,
    )
    assert value.dtype == torch.float32
    expected = _reference_rkd(student, teacher, distance_weight, angle_weight)
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_rkd_hand_computed_case():
    # student: the corners (0,0), (1,0), (0,1); teacher: collinear (0,0,0), (1,0,0), (2,0,0) (another width)
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    distance, angle = rkd_terms(student, teacher)
    # distances: student 1, 1, √2 (mean (2 + √2)/3), teacher 1, 2, 1 (mean 4/3); each pair twice in the 3×3 matrix,
    # all differences below 1, so SmoothL1 = ½·d²
    mean_s = (2 + math.sqrt(2)) / 3
    diffs = [1 / mean_s - 0.75, 1 / mean_s - 1.5, math.sqrt(2) / mean_s - 0.75]
    assert distance.item() == pytest.approx(2 * sum(0.5 * d * d for d in diffs) / 9, rel=1e-6)
    # angles differ only at (i, j, k) with j ≠ k, both ≠ i, each twice: at i=0 cos 0 vs 1 (SmoothL1 ½), at i=1
    # cos 1/√2 vs −1 (|d| − ½), at i=2 cos 1/√2 vs 1 (½·d²): 2·(½ + (1/√2 + ½) + ½·(1 − 1/√2)²) = 3.5 over 27
    assert angle.item() == pytest.approx(3.5 / 27, rel=1e-6)
    assert rkd_loss(student, teacher, 25.0, 50.0).item() == pytest.approx(
        25 * distance.item() + 50 * angle.item(), rel=1e-6
    )


def test_rkd_invariances_and_degenerate_batches():
    torch.manual_seed(0)
    student = torch.randn(6, 5, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    moved = 3.0 * student @ rotation + torch.randn(5, dtype=torch.float64)  # scaled, rotated, translated
    assert rkd_loss(student, moved, 25.0, 50.0).item() == pytest.approx(0.0, abs=1e-10)
    padded = torch.cat([2.0 * student, torch.zeros(6, 7, dtype=torch.float64)], dim=1)  # another width
    assert rkd_loss(student, padded, 25.0, 50.0).item() == pytest.approx(0.0, abs=1e-10)
    # two samples carry no relation: every normalised distance is 1 and every angle 1 or 0
    assert rkd_loss(torch.randn(2, 4), torch.randn(2, 8), 25.0, 50.0).item() == pytest.approx(0.0, abs=1e-6)
    # one sample: zero, not NaN; coincident samples: finite loss and gradient (clamped squared distance)
    assert rkd_loss(torch.randn(1, 4), torch.randn(1, 8), 25.0, 50.0).item() == 0.0
    twins = torch.randn(4, 3)
    twins[1] = twins[0]
    twins.requires_grad_(True)
    value = rkd_loss(twins, torch.randn(4, 8), 25.0, 50.0)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(twins.grad).all()


def test_rkd_gradient_finite_differences_and_teacher_side_without_grad():
    torch.manual_seed(0)
    student = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: rkd_loss(s, teacher, 25.0, 50.0), (student,))
    rkd_loss(student, teacher, 25.0, 50.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_rkd_low_precision_is_computed_in_fp32():
    student, teacher = torch.randn(4, 6).bfloat16(), torch.randn(4, 8).bfloat16()
    value = rkd_loss(student, teacher, 25.0, 50.0)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(rkd_loss(student.float(), teacher.float(), 25.0, 50.0).item(), rel=1e-6)
    # under bf16 autocast (the engine's bf16 recipe) the angle's bmm must still run in fp32
    student, teacher = torch.randn(8, 6), torch.randn(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_value = rkd_loss(student, teacher, 25.0, 50.0)
    assert autocast_value.dtype == torch.float32
    assert autocast_value.item() == pytest.approx(rkd_loss(student, teacher, 25.0, 50.0).item(), rel=1e-6)


def test_rkd_method_terms():
    assert METHODS.get("rkd") is RKD
    assert RKD.defaults == {"ce_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}
    torch.manual_seed(0)
    logits, pooled_s, pooled_t = torch.randn(4, 10), torch.randn(4, 16), torch.randn(4, 32)
    target = torch.randint(0, 10, (4,))
    terms = RKD(LossContext(num_classes=10))(
        {"logits": logits, "pooled": pooled_s}, {"pooled": pooled_t}, {"target": target}, Progress(1, 1)
    )
    distance, angle = rkd_terms(pooled_s, pooled_t)
    assert set(terms) == {"ce", "rkd_distance", "rkd_angle"}
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    assert terms["rkd_distance"].item() == pytest.approx(25 * distance.item(), rel=1e-6)
    assert terms["rkd_angle"].item() == pytest.approx(50 * angle.item(), rel=1e-6)


def test_rkd_trains_same_family_pair_and_gives_teacher_no_gradient():
    result = train_steps("rkd", "resnet32", "resnet8")
    assert len(result.terms) == 2 and set(result.terms[0]) == {"ce", "rkd_distance", "rkd_angle"}
    assert result.student_grads == result.student_params
    assert result.extra_parameters == 0
    probe = train_steps("rkd", "resnet32", "resnet8", {"ce_weight": 0.0}, steps=1, teacher_grad=True)
    classifier = classifier_params(probe.student)
    assert classifier and not probe.student_grads & classifier  # RKD acts on the pooled feature only
    assert probe.student_grads == probe.student_params - classifier
    assert not probe.teacher_grads


@pytest.mark.slow
def test_rkd_trains_cross_family_pair_with_different_widths():
    result = train_steps("rkd", "vgg13", "MobileNetV2")
    assert result.ctx.student_shapes["pooled"] != result.ctx.teacher_shapes["pooled"]  # 1280 vs 512
    assert all(math.isfinite(total) for total in result.totals())
    assert result.student_grads and not result.teacher_grads


def test_rkd_checkpoint_round_trip():
    result = train_steps("rkd", "resnet32", "resnet8", {"angle_weight": 10.0}, steps=1)
    fresh = checkpoint_round_trip(result.loss)
    assert isinstance(fresh, RKD) and fresh.hparams == result.loss.hparams
    args = (
        {"logits": torch.randn(4, 10), "pooled": torch.randn(4, 64)},
        {"pooled": torch.randn(4, 64)},
        {"target": torch.randint(0, 10, (4,))},
        Progress(1, 1),
    )
    assert {k: v.item() for k, v in fresh(*args).items()} == {k: v.item() for k, v in result.loss(*args).items()}
