"""Tests for kdbench.models: the CIFAR KD zoo, small models, registry behaviour and feature taps."""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from kdbench.models import (
    MODELS,
    FeatureTaps,
    ModelInfo,
    available_taps,
    build_model,
    get_classifier,
    model_info,
    model_names,
    register_model,
    tap_shapes,
)
from kdbench.registry import UnknownNameError

# Parameter counts with num_classes=100. "lit" = the CIFAR-100 KD literature's count (RepDistiller/mdistiller
# architectures); "measured" = computed from the reproduced architecture, not confirmed against a published table.
PARAMS_100 = {
    "resnet8": 83_892,  # measured
    "resnet14": 181_108,  # measured
    "resnet20": 278_324,  # lit
    "resnet32": 472_756,  # measured
    "resnet44": 667_188,  # measured
    "resnet56": 861_620,  # lit
    "resnet110": 1_736_564,  # lit
    "resnet8x4": 1_233_540,  # lit
    "resnet32x4": 7_433_860,  # lit
    "wrn_16_1": 180_916,  # measured
    "wrn_16_2": 703_284,  # lit
    "wrn_40_1": 569_780,  # lit
    "wrn_40_2": 2_255_156,  # lit
    "vgg8": 3_965_028,  # lit
    "vgg11": 9_277_284,  # measured
    "vgg13": 9_462_180,  # lit
    "vgg16": 14_774_436,  # measured
    "vgg19": 20_086_692,  # measured
    "MobileNetV2": 812_836,  # measured; no published count found to confirm it
    "ShuffleV1": 949_258,  # measured; no published count found to confirm it
    "ShuffleV2": 1_355_528,  # measured; no published count found to confirm it
    "ResNet18": 11_220_132,  # lit
    "ResNet50": 23_705_252,  # lit
    # small models (exact by construction: 784-1200-1200-100, 784-800-800-100; CNNs as defined in small.py)
    "mlp_1200x2": 2_503_300,
    "mlp_800x2": 1_348_900,
    "cnn_small": 8_148,
    "cnn_large": 105_796,
    "cnn2_w32": 25_412,  # the demo's models, for native 8×8 digits
    "cnn2_w8": 2_972,
}
ZOO = [n for n in PARAMS_100 if not n.startswith(("mlp", "cnn"))]
IMAGENET = {"resnet18", "resnet34", "resnet50", "mobilenet_v1"}  # 224 px models, tested in test_imagenet_models.py
SMALL = ["mlp_1200x2", "mlp_800x2", "cnn_small", "cnn_large", "cnn2_w32", "cnn2_w8"]
SLOW = {"ResNet50", "vgg19"}
NUM_STAGES = {"vgg": 4, "resnet": 4, "mobilenetv2": 4, "cifar_resnet": 3, "wide_resnet": 3, "shufflenet": 3, "mlp": 2}
# Models whose stageK is ReLU(pre_stageK).
POST_ACTIVATION_FAMILIES = {"cifar_resnet", "resnet", "vgg", "cnn"}


def _params(names: list[str]) -> list[object]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _input(name: str, batch: int = 2) -> torch.Tensor:
    info = model_info(name)
    shape = (batch, info.in_channels, info.input_size, info.input_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_exactly_the_expected_models() -> None:
    assert set(model_names()) == set(PARAMS_100) | IMAGENET
    assert model_names() == sorted(model_names())
    assert set(MODELS.names()) == set(PARAMS_100) | IMAGENET


@pytest.mark.parametrize("name", _params(list(PARAMS_100)))
def test_build_forward_and_parameter_count(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=100)
    assert _count(model) == PARAMS_100[name]
    with torch.no_grad():
        out = model.eval()(_input(name))
    assert out.shape == (2, 100)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ZOO)
def test_zoo_info(name: str) -> None:
    info = model_info(name)
    assert isinstance(info, ModelInfo)
    assert (info.name, info.input_size, info.in_channels) == (name, 32, 3)
    assert info.family in NUM_STAGES and info.description
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.input_size = 64  # type: ignore[misc]


@pytest.mark.parametrize("name", SMALL)
def test_small_models_info_and_kwargs(name: str) -> None:
    info = model_info(name)
    assert (info.input_size, info.in_channels) == ((8, 1) if name.startswith("cnn2_") else (28, 1))
    model = build_model(name, 10, input_size=12, in_channels=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 12, 12)).shape == (2, 10)


@pytest.mark.parametrize("name", ["cnn_small", "cnn_large"])
def test_cnns_accept_any_input_size_from_8(name: str) -> None:
    model = build_model(name, 10).eval()
    with torch.no_grad():
        for size in (8, 28, 33):
            assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_mlp_dropout_kwargs() -> None:
    model = build_model("mlp_800x2", 10, dropout=0.5, input_dropout=0.2)
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.2, 0.5, 0.5]
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [800, 800, 10]


def test_vgg_uses_the_fourth_pool_only_for_64px_inputs() -> None:
    model = build_model("vgg8", 10).eval()
    assert tap_shapes(model, ["stage3", "stage4"], (3, 32, 32)) == {"stage3": (512, 4, 4), "stage4": (512, 4, 4)}
    assert tap_shapes(model, ["stage3", "stage4"], (3, 64, 64)) == {"stage3": (512, 8, 8), "stage4": (512, 4, 4)}


# RepDistiller models/vgg.py and mdistiller mdistiller/models/cifar/vgg.py return feats = [f0, f1, f2, f3, f4]
# (+ the pooled f5) and preact feats = [f0, f1_pre, f2_pre, f3_pre, f4_pre]: f0 is block0 after its ReLU, the
# stem, not counted as a stage (AT distils feats[1:-1], FitNet's hint_layer 2 is feats[2]). kdbench's tap for
# each reference index, with its shape on a 32-px input (vgg13; vgg8 has the same shapes):
VGG_REFERENCE_FEATS = {
    "stem": ("feats[0] (= preact feats[0])", (64, 32, 32)),
    "stage1": ("feats[1]", (128, 16, 16)),
    "stage2": ("feats[2]", (256, 8, 8)),
    "stage3": ("feats[3]", (512, 4, 4)),
    "stage4": ("feats[4]", (512, 4, 4)),
    "pre_stage1": ("preact feats[1]", (128, 16, 16)),
    "pre_stage2": ("preact feats[2]", (256, 8, 8)),
    "pre_stage3": ("preact feats[3]", (512, 4, 4)),
    "pre_stage4": ("preact feats[4]", (512, 4, 4)),
}


@pytest.mark.parametrize("name", ["vgg8", "vgg13"])
def test_vgg_taps_follow_the_reference_feature_indices(name: str) -> None:
    """stem/stageK/pre_stageK are the references' feats[0]/feats[K]/preact feats[K], walked block by block here."""
    torch.manual_seed(0)
    model = build_model(name, 100).eval()
    assert [t for t in available_taps(model) if "stage" in t or t == "stem"] == [
        *(f"stage{k}" for k in range(1, 5)),
        *(f"pre_stage{k}" for k in range(1, 5)),
        "stem",
    ]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = FeatureTaps(model, list(VGG_REFERENCE_FEATS))(x)
        blocks = [model.get_submodule(f"block{k}") for k in range(5)]
        feats, preact = [blocks[0](x)], [blocks[0](x)]  # the references' f0: relu(block0(x)), before pool0
        h = model.pool0(feats[0])
        for k, pool in zip(range(1, 5), (model.pool1, model.pool2, None, None), strict=True):
            preact.append(blocks[k][:-1](h))  # the block's last BN, before its final ReLU (f{k}_pre)
            feats.append(F.relu(preact[-1]))
            h = pool(feats[-1]) if pool is not None else feats[-1]  # no pool3 for a 32-px input
    expected = {"stem": feats[0], **{f"stage{k}": feats[k] for k in range(1, 5)}}
    expected |= {f"pre_stage{k}": preact[k] for k in range(1, 5)}
    for tap, (reference_index, shape) in VGG_REFERENCE_FEATS.items():
        assert tuple(out[tap].shape[1:]) == shape, (tap, reference_index)
        assert torch.equal(out[tap], expected[tap]), (tap, reference_index)
    assert torch.equal(out["logits"], model.classifier(feats[4].mean(dim=(2, 3))))


def test_state_dict_keys_follow_the_reference_implementations() -> None:
    """Key names match RepDistiller/mdistiller, so their published CIFAR-100 teacher checkpoints can be loaded."""
    expected = {
        "resnet8x4": ["conv1.weight", "layer1.0.downsample.0.weight", "layer3.0.bn2.running_var", "fc.bias"],
        "wrn_40_2": ["block1.layer.0.convShortcut.weight", "block3.layer.5.bn2.weight", "bn1.weight", "fc.weight"],
        "vgg13": ["block0.0.bias", "block0.4.running_mean", "block4.3.weight", "classifier.weight"],
        "MobileNetV2": ["conv1.0.weight", "blocks.6.0.conv.7.weight", "conv2.1.weight", "classifier.0.weight"],
        "ShuffleV1": ["layer1.0.conv1.weight", "layer3.3.bn3.weight", "linear.weight"],
        "ShuffleV2": ["layer1.0.conv5.weight", "layer3.3.bn3.weight", "conv2.weight", "bn2.weight", "linear.weight"],
        "ResNet18": ["layer2.0.shortcut.0.weight", "layer4.1.bn2.weight", "linear.weight"],
    }
    for name, keys in expected.items():
        state = build_model(name, 100).state_dict()
        assert set(keys) <= set(state), name
    assert "block1.layer.0.convShortcut.weight" not in build_model("wrn_16_1", 100).state_dict()


# ----------------------------------------------------------------------------------------------- errors


def test_unknown_model_names_closest_match() -> None:
    with pytest.raises(UnknownNameError, match=r"did you mean 'resnet8x4'.*allowed: .*wrn_40_2"):
        build_model("resnet8x5", 100)
    with pytest.raises(UnknownNameError, match="did you mean 'ShuffleV2'"):
        model_info("shufflev2")
    with pytest.raises(KeyError):  # UnknownNameError is a KeyError
        build_model("no_such_model", 10)


def test_unknown_kwarg_names_model_and_kwarg() -> None:
    with pytest.raises(TypeError, match=r"model 'mlp_800x2'.*'drop_out'.*did you mean 'dropout'"):
        build_model("mlp_800x2", 10, drop_out=0.1)
    with pytest.raises(TypeError, match=r"model 'resnet8'.*'dropout'"):
        build_model("resnet8", 10, dropout=0.1)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("resnet8", 0)


def test_unknown_tap_names_model_tap_and_available() -> None:
    model = build_model("resnet8", 10)
    expected = r"CifarResNet has no tap 'stag1' \(did you mean 'stage1'\?\); available taps: logits, pooled, stage1"
    with pytest.raises(ValueError, match=expected):
        FeatureTaps(model, ["stag1"])
    with pytest.raises(ValueError, match=r"MLP has no tap 'tokens'"):
        FeatureTaps(build_model("mlp_800x2", 10), ["tokens"])
    assert not model.layer1._forward_hooks  # nothing registered by a failed constructor


# ------------------------------------------------------------------------------------------------- taps


@pytest.mark.parametrize("name", _params(list(PARAMS_100)))
def test_taps_contract(name: str) -> None:
    """Every model: stage/pooled/tokens taps exist with the right ranks; pooled feeds the classifier exactly."""
    torch.manual_seed(0)
    model = build_model(name, 100).eval()
    info = model_info(name)
    n = NUM_STAGES.get(info.family, 3 if name == "cnn_large" else 2)
    names = available_taps(model)
    stages = [f"stage{k}" for k in range(1, n + 1)]
    assert names[:2] == ["logits", "pooled"] and names[2 : 2 + n] == stages
    assert f"stage{n + 1}" not in names
    spatial = info.family != "mlp"
    assert ("tokens" in names) == spatial
    x = _input(name)
    with torch.no_grad():
        plain = model(x)
        taps = FeatureTaps(model, names)
        out = taps(x)
        taps.remove()
    assert set(out) == set(names)
    assert torch.equal(out["logits"], plain)  # hooks do not change the result
    assert out["pooled"].dim() == 2 and out["pooled"].shape[0] == 2
    assert torch.equal(get_classifier(model)(out["pooled"]), out["logits"])
    for stage in stages:
        assert out[stage].dim() == (4 if spatial else 2)
    if spatial:
        last = out[stages[-1]]
        b, c, h, w = last.shape
        assert torch.equal(out["tokens"], last.reshape(b, c, h * w).permute(0, 2, 1))
        assert out["tokens"].shape == (2, h * w, c)
    pre = [t for t in names if t.startswith("pre_stage")]
    for t in pre:
        assert out[t].shape == out[t[4:]].shape
        if info.family in POST_ACTIVATION_FAMILIES or name == "ShuffleV1":
            assert torch.equal(F.relu(out[t]), out[t[4:]])  # stage = ReLU(pre_stage): post-activation
    if info.family in POST_ACTIVATION_FAMILIES:
        assert len(pre) == n


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "cnn_small"])
def test_tapped_tensors_are_not_modified_in_place_later(name: str) -> None:
    """A tap holds a reference, so nothing later in the forward may write into it (train mode, with grad)."""
    model = build_model(name, 10).train()
    snapshots: dict[str, torch.Tensor] = {}
    handles = []
    for tap, path in getattr(model, "tap_modules", {}).items():
        hook = (lambda t: lambda m, a, o: snapshots.__setitem__(t, o.detach().clone()))(tap)
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    for tap, path in getattr(model, "tap_inputs", {}).items():
        hook = (lambda t: lambda m, a, o: snapshots.__setitem__(t, a[0].detach().clone()))(tap)
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    taps = FeatureTaps(model, available_taps(model))
    out = taps(_input(name))
    for h in handles:
        h.remove()
    assert set(snapshots) <= set(out)
    for tap, snap in snapshots.items():
        assert torch.equal(out[tap].detach(), snap), tap


def test_wide_resnet_pre_stage_is_the_bn_the_next_relu_reads() -> None:
    """WRN is pre-activation: stageK is the residual sum; pre_stageK = BN(stageK) (RepDistiller's preact)."""
    model = build_model("wrn_16_1", 10).eval()
    with torch.no_grad():
        out = FeatureTaps(model, ["stage1", "stage3", "pre_stage1", "pre_stage3"])(torch.randn(2, 3, 32, 32))
        assert torch.equal(model.block2.layer[0].bn1(out["stage1"]), out["pre_stage1"])
        assert torch.equal(model.bn1(out["stage3"]), out["pre_stage3"])


def test_taps_carry_gradients() -> None:
    model = build_model("resnet8", 10).train()
    taps = FeatureTaps(model, ["stage1", "pre_stage2", "tokens"])
    out = taps(torch.randn(2, 3, 32, 32))
    (out["stage1"].mean() + out["pre_stage2"].mean() + out["tokens"].mean() + out["logits"].sum()).backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


def test_pooled_feeds_classifier_in_train_mode_with_dropout() -> None:
    model = build_model("mlp_1200x2", 10, dropout=0.5, input_dropout=0.2).train()
    out = FeatureTaps(model, ["pooled", "stage2"])(torch.randn(2, 1, 28, 28))
    assert torch.equal(model.fc(out["pooled"]), out["logits"])
    assert (out["stage2"] >= 0).all()  # post-ReLU


def test_only_requested_taps_are_hooked_and_returned() -> None:
    model = build_model("resnet20", 10).eval()
    taps = FeatureTaps(model, ["tokens", "stage2", "stage2"])
    assert taps.names == ["tokens", "stage2"]
    hooked = [name for name, m in model.named_modules() if m._forward_hooks]
    assert sorted(hooked) == ["layer2", "layer3"]  # tokens come from stage3's map
    with torch.no_grad():
        out = taps(torch.randn(2, 3, 32, 32))
    assert set(out) == {"logits", "tokens", "stage2"}
    logits_only = FeatureTaps(model, ["logits"])
    with torch.no_grad():
        assert set(logits_only(torch.randn(2, 3, 32, 32))) == {"logits"}


def test_remove_removes_hooks() -> None:
    model = build_model("wrn_16_1", 10)
    taps = FeatureTaps(model, available_taps(model))
    assert any(m._forward_hooks for m in model.modules())
    taps.remove()
    assert not any(m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match="removed"):
        taps(torch.randn(2, 3, 32, 32))
    with FeatureTaps(model, ["stage1"]):
        assert model.block1._forward_hooks
    assert not model.block1._forward_hooks


def test_dropped_feature_taps_unhook_themselves() -> None:
    model = build_model("resnet8", 10).eval()
    taps = FeatureTaps(model, ["stage1", "pre_stage2"])
    del taps
    gc.collect()
    assert not any(m._forward_hooks for m in model.modules())


def test_repeated_calls_and_no_tensors_kept_alive() -> None:
    model = build_model("resnet8", 10).eval()
    taps = FeatureTaps(model, ["stage1", "pooled"])
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b, a2 = taps(x1), taps(x2), taps(x1)
    assert torch.equal(a["stage1"], a2["stage1"]) and not torch.equal(a["stage1"], b["stage1"])
    ref = weakref.ref(a["stage1"])
    del a
    gc.collect()
    assert ref() is None  # the FeatureTaps object kept no reference
    # A plain model(x) call while hooks are registered stores nothing either.
    seen: list[weakref.ref[torch.Tensor]] = []
    handle = model.layer1.register_forward_hook(lambda m, a, o: seen.append(weakref.ref(o)))
    with torch.no_grad():
        model(x1)
    handle.remove()
    gc.collect()
    assert seen and seen[0]() is None
    taps.remove()


def test_tap_shapes_and_training_mode_restored() -> None:
    model = build_model("resnet8x4", 100).train()
    model.layer1.eval()  # a frozen part keeps its own mode
    shapes = tap_shapes(model, ["logits", "pooled", "stage3", "pre_stage1", "tokens"], (3, 32, 32))
    assert shapes == {
        "logits": (100,),
        "pooled": (256,),
        "stage3": (256, 8, 8),
        "pre_stage1": (64, 32, 32),
        "tokens": (64, 256),
    }
    assert model.training and model.layer2.training and not model.layer1.training
    assert not any(m._forward_hooks for m in model.modules())
    assert tap_shapes(model, [], (3, 32, 32)) == {}
    assert tap_shapes(build_model("mlp_800x2", 10), ["stage1", "pooled"], (1, 28, 28)) == {
        "stage1": (800,),
        "pooled": (800,),
    }


def test_taps_through_a_wrapper_module() -> None:
    model = build_model("cnn_small", 10).eval()
    wrapped = nn.DataParallel(model)  # on CPU this just calls the module
    assert available_taps(wrapped) == available_taps(model)
    with torch.no_grad():
        out = FeatureTaps(wrapped, ["stage2", "tokens"])(torch.randn(2, 1, 28, 28))
    assert out["stage2"].shape == (2, 32, 14, 14) and out["tokens"].shape == (2, 196, 32)


def test_register_model_rejects_a_second_owner_of_a_name() -> None:
    with pytest.raises(ValueError, match="'resnet8' is already registered"):
        register_model("resnet8", family="cifar_resnet", description="impostor")(lambda num_classes: nn.Identity())
    assert model_info("resnet8").family == "cifar_resnet"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda() -> None:
    model = build_model("resnet8", 10).cuda().eval()
    shapes = tap_shapes(model, ["stage3", "tokens"], (3, 32, 32))
    assert shapes == {"stage3": (64, 8, 8), "tokens": (64, 64)}
    with torch.no_grad():
        out = FeatureTaps(model, ["pooled"])(torch.randn(2, 3, 32, 32, device="cuda"))
    assert out["pooled"].device.type == "cuda"


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize(("shape", "kernel", "stride", "padding"),
                         [((4, 16, 28, 28), 2, None, 0), ((3, 8, 7, 7), 2, None, 0), ((2, 5, 9, 6), 3, 2, 1)])
def test_fast_max_pool_is_bit_identical_to_nn_max_pool(shape, kernel, stride, padding, ceil_mode) -> None:
    """layers.MaxPool2d (channels-last kernel on CPU) gives nn.MaxPool2d's exact values, gradients and NaNs."""
    from kdbench.models.layers import MaxPool2d

    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=generator) * 2).round().relu()  # many tied maxima (zeros and integers)
    x[0, 0, 0, 0] = float("nan")
    ours, reference = MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode), nn.MaxPool2d(kernel, stride, padding,
                                                                                          ceil_mode=ceil_mode)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, expected = ours(a), reference(b)
    grad = torch.randn(expected.shape, generator=generator)
    out.backward(grad)
    expected.backward(grad)
    assert out.is_contiguous() and torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(-1.0), expected.nan_to_num(-1.0))
    assert torch.equal(a.grad, b.grad)  # the same argmax in every window, ties included
    with torch.inference_mode():
        assert torch.equal(ours(x).nan_to_num(-1.0), reference(x).nan_to_num(-1.0))
