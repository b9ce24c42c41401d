"""AT: at_loss against an independent loop computation and hand-computed cases, pooling, gradients, stage
pairing, and 2 real training steps through the shared method harness."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_harness import checkpoint_round_trip, classifier_params, train_steps

from kdbench.loss import METHODS, LossContext, Progress
from kdbench.methods.at import AT, at_loss, stage_names


def _reference_pool(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Adaptive average pooling written out: output cell i averages rows floor(i·H/h) … ceil((i+1)·H/h) − 1."""
    batch, channels, in_h, in_w = x.shape
    out = np.zeros((batch, channels, height, width))
    for i in range(height):
        for j in range(width):
            rows = slice(math.floor(i * in_h / height), math.ceil((i + 1) * in_h / height))
            cols = slice(math.floor(j * in_w / width), math.ceil((j + 1) * in_w / width))
            out[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
    return out


def _reference_attention(x: np.ndarray, p: float) -> np.ndarray:
    batch, channels, height, width = x.shape
    maps = np.zeros((batch, height * width))
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                maps[b, i * width + j] = sum(abs(x[b, c, i, j]) ** p for c in range(channels)) / channels
        norm = math.sqrt(sum(v * v for v in maps[b]))
        maps[b] /= max(norm, 1e-12)
    return maps


def _reference_at(student: np.ndarray, teacher: np.ndarray, p: float) -> float:
    height, width = min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3])
    a_s = _reference_attention(_reference_pool(student, height, width), p)
    a_t = _reference_attention(_reference_pool(teacher, height, width), p)
    return float(((a_s - a_t) ** 2).mean())


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "p"),
    [
        ((3, 4, 8, 8), (3, 6, 8, 8), 2.0),  # same size
        ((3, 4, 8, 8), (3, 6, 4, 4), 2.0),  # student pooled
        ((3, 4, 4, 4), (3, 6, 8, 8), 2.0),  # teacher pooled
        ((3, 4, 6, 4), (3, 6, 3, 8), 2.0),  # non-square: each dimension pooled to the smaller
        ((3, 4, 5, 5), (3, 6, 3, 3), 2.0),  # non-integer ratio: overlapping windows
        ((3, 4, 8, 8), (3, 6, 4, 4), 1.0),
        ((3, 4, 8, 8), (3, 6, 4, 4), 3.0),
    ],
)
def test_at_loss_matches_independent_computation(student_shape, teacher_shape, p):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=student_shape), rng.normal(size=teacher_shape) * 3
    value = at_loss(torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32), p)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(_reference_at(student, teacher, p), rel=1e-5)


def test_at_hand_computed_cases():
    # one channel, 2×2: a_s = [1, 0, 0, 0], a_t = normalize([0, 4, 0, 0]) = [0, 1, 0, 0] → mean of (1, 1, 0, 0) = ½
    student = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    teacher = torch.tensor([[[[0.0, 2.0], [0.0, 0.0]]]])
    assert at_loss(student, teacher, 2).item() == pytest.approx(0.5, rel=1e-6)
    # identical maps, and maps that differ by a scale or by repeated channels, give 0
    maps = torch.randn(2, 3, 4, 4)
    assert at_loss(maps, maps, 2).item() == 0.0
    assert at_loss(maps, 5 * torch.cat([maps, maps], dim=1), 2).item() == pytest.approx(0.0, abs=1e-7)
    # the 4×4 student is pooled to 2×2 BEFORE |F|^p: its top-left block [[1, −1], [−1, 1]] averages to 0, so
    # a_s = 0 and the loss is mean((0 − [1, 0, 0, 0])²) = ¼ (pooling after squaring would give 0 instead)
    student = torch.zeros(1, 1, 4, 4)
    student[0, 0, :2, :2] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    teacher = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert at_loss(student, teacher, 2).item() == pytest.approx(0.25, rel=1e-6)
    assert at_loss(teacher, student, 2).item() == pytest.approx(0.25, rel=1e-6)  # and the teacher side alike


def test_at_pools_the_larger_map():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    pooled = F.avg_pool2d(student, 2)  # for an exact 2× ratio adaptive pooling is 2×2 block averaging
    assert at_loss(student, teacher, 2).item() == pytest.approx(at_loss(pooled, teacher, 2).item(), rel=1e-6)
    assert at_loss(teacher, student, 2).item() == pytest.approx(at_loss(teacher, pooled, 2).item(), rel=1e-6)
    with pytest.raises(ValueError, match="B×C×H×W"):
        at_loss(torch.randn(2, 8), torch.randn(2, 8), 2)


def test_at_gradient_finite_differences_and_teacher_side_without_grad():
    torch.manual_seed(0)
    student = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: at_loss(s, teacher, 2.0), (student,))
    assert torch.autograd.gradcheck(lambda s: at_loss(s, teacher, 3.0), (student,))
    small = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    big_teacher = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: at_loss(s, big_teacher, 2.0), (small,))
    at_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and teacher.grad is None


def test_at_low_precision_is_computed_in_fp32():
    student, teacher = torch.randn(2, 3, 8, 8).bfloat16(), torch.randn(2, 4, 4, 4).bfloat16()
    value = at_loss(student, teacher, 2)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(at_loss(student.float(), teacher.float(), 2).item(), rel=1e-6)
    student, teacher = torch.randn(2, 3, 8, 8), torch.randn(2, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_value = at_loss(student, teacher, 2)
    assert autocast_value.item() == pytest.approx(at_loss(student, teacher, 2).item(), rel=1e-6)


def test_at_pairs_stages_in_order_and_truncates():
    assert stage_names({"stage10": (1,), "pooled": (4,), "stage2": (1,), "stage1": (1,), "pre_stage1": (1,)}) == [
        "stage1",
        "stage2",
        "stage10",
    ]
    ctx = LossContext(
        num_classes=10,
        student_shapes={"logits": (10,), "stage1": (4, 8, 8), "stage2": (8, 4, 4), "stage3": (16, 2, 2)},
        teacher_shapes={"stage1": (6, 4, 4), "stage2": (12, 2, 2)},
    )
    method = AT(ctx, at_weight=10.0)
    assert method.pairs == [("stage1", "stage1"), ("stage2", "stage2")]
    torch.manual_seed(0)
    student = {
        "logits": torch.randn(4, 10),
        **{k: torch.randn(4, *s) for k, s in ctx.student_shapes.items() if k.startswith("stage")},
    }
    teacher = {k: torch.randn(4, *s) for k, s in ctx.teacher_shapes.items()}
    target = torch.randint(0, 10, (4,))
    terms = method(student, teacher, {"target": target}, Progress(1, 1))
    assert set(terms) == {"ce", "at"}
    expected = 10.0 * sum(at_loss(student[k], teacher[k], 2).item() for k in ("stage1", "stage2"))
    assert terms["at"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(student["logits"], target).item(), rel=1e-6)
    with pytest.raises(ValueError, match="stage taps on both sides"):
        AT(LossContext(num_classes=10, student_shapes={"logits": (10,)}, teacher_shapes={}))
    with pytest.raises(ValueError, match="C×H×W"):  # an MLP's stage taps are vectors
        AT(LossContext(num_classes=10, student_shapes={"stage1": (800,)}, teacher_shapes={"stage1": (1200,)}))


def test_at_method_registration_and_defaults():
    assert METHODS.get("at") is AT
    assert AT.defaults == {"ce_weight": 1.0, "at_weight": 1000.0, "p": 2.0}
    assert AT.needs.student_taps == ("logits", "stage*") and AT.needs.teacher_taps == ("stage*",)


def test_at_trains_same_family_pair_and_gives_teacher_no_gradient():
    result = train_steps("at", "resnet32", "resnet8")
    assert [k for k in result.ctx.student_shapes if k.startswith("stage")] == ["stage1", "stage2", "stage3"]
    assert len(result.loss.pairs) == 3
    assert len(result.terms) == 2 and set(result.terms[0]) == {"ce", "at"}
    assert result.student_grads == result.student_params and result.extra_parameters == 0
    probe = train_steps("at", "resnet32", "resnet8", {"ce_weight": 0.0}, steps=1, teacher_grad=True)
    classifier = classifier_params(probe.student)
    assert probe.student_grads == probe.student_params - classifier  # AT reaches every stage, not the fc
    assert not probe.teacher_grads


@pytest.mark.slow
def test_at_trains_cross_family_pair_with_different_stages():
    result = train_steps("at", "vgg13", "MobileNetV2")
    # The pairs RepDistiller (feat[1:-1]) and mdistiller (feats[1:]) distil: vgg13's stageK is feats[K] of their
    # vgg.py (block0, feats[0], is the stem and not distilled), MobileNetV2's stageK is feats[K] of their
    # mobilenetv2.py. Only the last pair differs in size (4² teacher, 2² student): the teacher map is pooled.
    assert result.loss.pairs == [(f"stage{k}", f"stage{k}") for k in range(1, 5)]
    teacher = [result.ctx.teacher_shapes[f"stage{k}"] for k in range(1, 5)]
    student = [result.ctx.student_shapes[f"stage{k}"] for k in range(1, 5)]
    assert teacher == [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]  # vgg.py feats[1], …, feats[4]
    assert student == [(12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]  # mobilenetv2.py feats[1], …, feats[4]
    assert all(math.isfinite(total) for total in result.totals())
    assert result.student_grads and not result.teacher_grads


def test_at_checkpoint_round_trip():
    result = train_steps("at", "resnet32", "resnet8", {"p": 4}, steps=1)
    fresh = checkpoint_round_trip(result.loss)
    assert isinstance(fresh, AT) and fresh.hparams == result.loss.hparams and fresh.pairs == result.loss.pairs
    assert fresh.hparams["p"] == 4.0 and isinstance(fresh.hparams["p"], float)  # resolved like the grid does
    torch.manual_seed(0)
    student = {
        "logits": torch.randn(4, 10),
        **{k: torch.rand(4, *s) for k, s in result.ctx.student_shapes.items() if k.startswith("stage")},
    }
    teacher = {k: torch.rand(4, *s) for k, s in result.ctx.teacher_shapes.items()}
    args = (student, teacher, {"target": torch.randint(0, 10, (4,))}, Progress(1, 1))
    assert {k: v.item() for k, v in fresh(*args).items()} == {k: v.item() for k, v in result.loss(*args).items()}
