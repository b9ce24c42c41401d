"""FitNet: the hint term against an independent NumPy conv/BN/ReLU/MSE computation and a hand-computed case, the
regressor for each size relation, needs per hint stage, gradients, and 2 real training steps."""

import math
import re

import numpy as np
import pytest
import torch
from method_harness import checkpoint_round_trip, classifier_params, train_steps
from torch import nn
from torch.func import functional_call

from kdbench.loss import METHODS, LossContext, Progress
from kdbench.methods.fitnet import FitNet, build_regressor, hint_loss
from kdbench.models import FeatureTaps, available_taps, build_model

BN_EPS = 1e-5


def _reference_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation with explicit loops; weight is C_out×C_in×kH×kW."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    batch, _, height, width = x.shape
    c_out, c_in, k_h, k_w = weight.shape
    out_h, out_w = (height - k_h) // stride + 1, (width - k_w) // stride + 1
    out = np.zeros((batch, c_out, out_h, out_w))
    for b in range(batch):
        for o in range(c_out):
            for i in range(out_h):
                for j in range(out_w):
                    window = x[b, :, i * stride : i * stride + k_h, j * stride : j * stride + k_w]
                    out[b, o, i, j] = float(np.sum(window * weight[o])) + bias[o]
    return out


def _reference_conv_transpose(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, pad: int):
    """Transposed conv by scattering each input pixel; weight is C_in×C_out×kH×kW; crop ``pad`` on every side."""
    batch, c_in, height, width = x.shape
    _, c_out, k_h, k_w = weight.shape
    full = np.zeros((batch, c_out, (height - 1) * stride + k_h, (width - 1) * stride + k_w))
    for b in range(batch):
        for c in range(c_in):
            for i in range(height):
                for j in range(width):
                    full[b, :, i * stride : i * stride + k_h, j * stride : j * stride + k_w] += (
                        x[b, c, i, j] * weight[c]
                    )
    out = full[:, :, pad : full.shape[2] - pad, pad : full.shape[3] - pad]
    return out + bias.reshape(1, -1, 1, 1)


def _reference_hint(student: np.ndarray, teacher: np.ndarray, regressor: nn.Sequential) -> float:
    """MSE(ReLU(BN_train(conv(student))), teacher) with the regressor's own weights, in NumPy."""
    conv, bn = regressor[0], regressor[1]
    weight, bias = conv.weight.detach().double().numpy(), conv.bias.detach().double().numpy()
    if isinstance(conv, nn.ConvTranspose2d):
        out = _reference_conv_transpose(student, weight, bias, conv.stride[0], conv.padding[0])
    else:
        out = _reference_conv(student, weight, bias, conv.stride[0], conv.padding[0])
    mean = out.mean(axis=(0, 2, 3), keepdims=True)
    var = out.var(axis=(0, 2, 3), keepdims=True)  # biased, as BN normalises in training mode
    gamma = bn.weight.detach().double().numpy().reshape(1, -1, 1, 1)
    beta = bn.bias.detach().double().numpy().reshape(1, -1, 1, 1)
    out = np.maximum((out - mean) / np.sqrt(var + BN_EPS) * gamma + beta, 0.0)
    return float(np.mean((out - teacher) ** 2))


CASES = {
    "student twice the teacher": ((2, 4, 4), (3, 2, 2), nn.Conv2d, (3, 3), (2, 2)),
    "student half the teacher": ((2, 2, 2), (3, 4, 4), nn.ConvTranspose2d, (4, 4), (2, 2)),
    "equal sizes": ((2, 3, 3), (3, 3, 3), nn.Conv2d, (1, 1), (1, 1)),
    "student larger, not 2x": ((2, 5, 4), (3, 3, 3), nn.Conv2d, (3, 2), (1, 1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_regressor_shapes(case):
    student_shape, teacher_shape, conv_type, kernel, stride = CASES[case]
    regressor = build_regressor(student_shape, teacher_shape)
    conv = regressor[0]
    assert type(conv) is conv_type and conv.kernel_size == kernel and conv.stride == stride
    assert isinstance(regressor[1], nn.BatchNorm2d) and isinstance(regressor[2], nn.ReLU)
    assert regressor(torch.randn(2, *student_shape)).shape == (2, *teacher_shape)


@pytest.mark.parametrize(("student_shape", "teacher_shape"), [((8, 4, 4), (8, 6, 6)), ((8, 4, 4), (8, 8, 4))])
def test_regressor_rejects_unmatchable_maps(student_shape, teacher_shape):
    with pytest.raises(ValueError, match=rf"{re.escape(str(student_shape))}.*{re.escape(str(teacher_shape))}"):
        build_regressor(student_shape, teacher_shape)
    ctx = LossContext(
        num_classes=10, student_shapes={"stage2": student_shape}, teacher_shapes={"stage2": teacher_shape}
    )
    with pytest.raises(ValueError, match="cannot regress"):
        FitNet(ctx)


@pytest.mark.parametrize("case", list(CASES))
def test_hint_matches_independent_computation(case):
    student_shape, teacher_shape, *_ = CASES[case]
    torch.manual_seed(0)
    ctx = LossContext(num_classes=5, student_shapes={"stage2": student_shape}, teacher_shapes={"stage2": teacher_shape})
    method = FitNet(ctx, hint_weight=7.0).double()
    nn.init.normal_(method.regressor[1].weight, 1.0, 0.2)  # non-trivial BN affine
    nn.init.normal_(method.regressor[1].bias, 0.0, 0.2)
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(3, *student_shape)), rng.normal(size=(3, *teacher_shape))
    logits, target = torch.randn(3, 5, dtype=torch.float64), torch.tensor([0, 3, 4])
    terms = method(
        {"logits": logits, "stage2": torch.tensor(student)},
        {"stage2": torch.tensor(teacher)},
        {"target": target},
        Progress(1, 1),
    )
    assert set(terms) == {"ce", "hint"}
    assert terms["hint"].item() == pytest.approx(7.0 * _reference_hint(student, teacher, method.regressor), rel=1e-9)


def test_hint_hand_computed_case():
    # 1×1 conv with weight 1, bias 0; one channel, 1×1 maps, batch [1, 3]: BN (train) → [−1, 1]/√(1 + eps),
    # ReLU → [0, 1/√(1 + eps)]; teacher [0, 0] → MSE = ½·1/(1 + eps), times the hint weight 100
    ctx = LossContext(num_classes=2, student_shapes={"stage2": (1, 1, 1)}, teacher_shapes={"stage2": (1, 1, 1)})
    method = FitNet(ctx)
    with torch.no_grad():
        method.regressor[0].weight.fill_(1.0)
        method.regressor[0].bias.zero_()
    student = {"logits": torch.zeros(2, 2), "stage2": torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)}
    terms = method(student, {"stage2": torch.zeros(2, 1, 1, 1)}, {"target": torch.tensor([0, 1])}, Progress(1, 1))
    assert terms["hint"].item() == pytest.approx(100 * 0.5 / (1 + BN_EPS), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert hint_loss(torch.ones(2, 3), torch.zeros(2, 3)).item() == 1.0  # mean, not sum


def test_hint_gradient_finite_differences():
    torch.manual_seed(0)
    ctx = LossContext(num_classes=3, student_shapes={"stage2": (1, 4, 4)}, teacher_shapes={"stage2": (2, 2, 2)})
    method = FitNet(ctx).double()
    teacher = torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    student = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = method.regressor[0].weight.detach().clone().requires_grad_(True)

    def hint(student_map: torch.Tensor, conv_weight: torch.Tensor) -> torch.Tensor:
        regressed = functional_call(method.regressor, {"0.weight": conv_weight}, (student_map,))
        return hint_loss(regressed, teacher)

    assert torch.autograd.gradcheck(hint, (student, weight))
    hint(student, weight).backward()
    assert teacher.grad is None


def test_fitnet_needs_follow_the_hint_stage():
    assert METHODS.get("fitnet") is FitNet
    assert FitNet.defaults == {"ce_weight": 1.0, "hint_weight": 100.0, "hint_stage": 2}
    assert FitNet.needs_for({}) == FitNet.needs
    assert FitNet.needs_for({"hint_stage": 2}).teacher_taps == ("stage2",)
    assert FitNet.needs_for({"hint_stage": 3}).student_taps == ("logits", "stage3")
    # resnet8 has stages 1–3: hint stage 4 asks for a tap the model lacks, which the harness then refuses
    needs = FitNet.needs_for({"hint_stage": 4})
    model = build_model("resnet8", 10)
    assert "stage4" in needs.teacher_taps and "stage4" not in available_taps(model)
    with pytest.raises(ValueError, match="no tap 'stage4'"):
        FeatureTaps(model, needs.student_taps)
    for bad in (0, -1, 2.5, "2", True):
        with pytest.raises(ValueError, match="hint_stage"):
            FitNet.needs_for({"hint_stage": bad})
    with pytest.raises(ValueError, match="'stage3' shape"):
        FitNet(LossContext(num_classes=10, student_shapes={"stage2": (4, 4, 4)}, teacher_shapes={}), hint_stage=3)


def test_fitnet_trains_same_family_pair_and_the_regressor_learns():
    result = train_steps("fitnet", "resnet32", "resnet8")
    assert len(result.terms) == 2 and set(result.terms[0]) == {"ce", "hint"}
    assert type(result.loss.regressor[0]) is nn.Conv2d and result.loss.regressor[0].kernel_size == (1, 1)
    assert result.extra_parameters == 32 * 32 + 32 + 2 * 32  # 1×1 conv with bias, BN affine
    assert (
        result.loss_grads
        == result.loss_params
        == {"regressor.0.weight", "regressor.0.bias", "regressor.1.weight", "regressor.1.bias"}
    )
    assert result.student_grads == result.student_params
    # the hint alone (CE weight 0) reaches the regressor and the student up to stage 2 — and not the teacher
    probe = train_steps("fitnet", "resnet32", "resnet8", {"ce_weight": 0.0}, steps=1, teacher_grad=True)
    assert probe.loss_grads == probe.loss_params
    up_to_hint = {n for n in probe.student_params if n.split(".")[0] in {"conv1", "bn1", "layer1", "layer2"}}
    assert probe.student_grads == up_to_hint
    assert not probe.student_grads & classifier_params(probe.student)
    assert not probe.teacher_grads


@pytest.mark.slow
def test_fitnet_trains_cross_family_pair_vgg13_to_mobilenetv2():
    result = train_steps("fitnet", "vgg13", "MobileNetV2")
    # hint_stage 2 is the references' hint_layer 2 (RepDistiller --hint_layer, mdistiller FITNET.HINT_LAYER):
    # feats[2] of their vgg.py (block2, 256×8×8) and of their mobilenetv2.py (16×8×8); equal sizes → 1×1 conv
    assert result.ctx.teacher_shapes["stage2"] == (256, 8, 8) and result.ctx.student_shapes["stage2"] == (16, 8, 8)
    assert type(result.loss.regressor[0]) is nn.Conv2d and result.loss.regressor[0].kernel_size == (1, 1)
    assert all(math.isfinite(total) for total in result.totals())
    assert result.loss_grads == result.loss_params and result.student_grads and not result.teacher_grads


@pytest.mark.slow
def test_fitnet_trains_cross_family_pair_with_an_upsampling_regressor():
    result = train_steps("fitnet", "resnet32x4", "ShuffleV2")
    # resnet32x4 stage2 is 128×16×16, ShuffleV2 stage2 232×8×8: the student map is half → transposed conv
    assert result.ctx.teacher_shapes["stage2"] == (128, 16, 16) and result.ctx.student_shapes["stage2"] == (232, 8, 8)
    assert type(result.loss.regressor[0]) is nn.ConvTranspose2d
    assert all(math.isfinite(total) for total in result.totals())
    assert result.loss_grads == result.loss_params and result.student_grads and not result.teacher_grads


def test_fitnet_checkpoint_round_trip_keeps_regressor_and_bn_statistics():
    result = train_steps("fitnet", "resnet32", "resnet8", {"hint_weight": 50.0})
    trained = result.loss
    untouched = FitNet(trained.ctx, **trained.hparams)
    fresh = checkpoint_round_trip(trained)
    assert fresh.hparams == trained.hparams
    state, fresh_state = trained.state_dict(), fresh.state_dict()
    assert set(state) == set(fresh_state) and "regressor.1.running_mean" in state
    for key, value in state.items():
        assert torch.equal(fresh_state[key], value), key
    assert not torch.equal(untouched.state_dict()["regressor.1.running_mean"], state["regressor.1.running_mean"])
    trained.eval()
    fresh.eval()  # eval mode uses the running statistics
    torch.manual_seed(0)
    args = (
        {"logits": torch.randn(4, 10), "stage2": torch.rand(4, 32, 16, 16)},
        {"stage2": torch.rand(4, 32, 16, 16)},
        {"target": torch.randint(0, 10, (4,))},
        Progress(1, 1),
    )
    assert {k: v.item() for k, v in fresh(*args).items()} == {k: v.item() for k, v in trained(*args).items()}
