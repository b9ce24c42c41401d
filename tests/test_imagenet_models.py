"""Tests for the ImageNet models: torchvision's resnet18/34/50 and timm's mobilenet_v1, with kdbench's taps.

Fast: 64×64 inputs and 10 classes (a 224 px ResNet forward is slow on CPU); parameter counts at 1000 classes.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from kdbench.models import (
    FeatureTaps,
    available_taps,
    build_model,
    get_classifier,
    model_info,
    model_names,
    state_dict_from_file,
)
from kdbench.models.imagenet import MobileNetV1, TorchvisionResNet

RESNETS = ["resnet18", "resnet34", "resnet50"]
# Measured with torchvision 0.29 / timm 1.0 (torchvision.models.resnetNN(num_classes=1000), timm.create_model(
# "mobilenetv1_100")); they are the published ImageNet counts (11.7M, 21.8M, 25.6M, 4.2M).
PARAMS_1000 = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "mobilenet_v1": 4_231_976}
STAGE_CHANNELS = {
    "resnet18": [64, 128, 256, 512],
    "resnet34": [64, 128, 256, 512],
    "resnet50": [256, 512, 1024, 2048],
    "mobilenet_v1": [128, 256, 512, 1024],
}
SIZE = 64


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _shapes(state: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in state.items()]


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that eval-mode forwards use them."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)


@pytest.mark.parametrize("name", [*RESNETS, "mobilenet_v1"])
def test_info_and_parameter_count(name: str) -> None:
    info = model_info(name)
    assert (info.input_size, info.in_channels) == (224, 3)
    assert name in model_names()
    torch.manual_seed(0)
    assert sum(p.numel() for p in build_model(name, 1000).parameters()) == PARAMS_1000[name]


def test_descriptions_tell_the_imagenet_and_cifar_resnets_apart() -> None:
    for depth in (18, 50):
        imagenet, cifar = model_info(f"resnet{depth}"), model_info(f"ResNet{depth}")
        assert imagenet.family == "resnet_imagenet" and cifar.family == "resnet"
        assert "torchvision" in imagenet.description and "7x7 stem" in imagenet.description
        assert f"ResNet{depth}" in imagenet.description  # points at the CIFAR one
        assert "CIFAR 3x3 stem" in cifar.description and f"resnet{depth}" in cifar.description


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_keys_shapes_and_logits_are_torchvisions(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10).eval()
    assert isinstance(model, TorchvisionResNet)
    reference = getattr(torchvision.models, name)(num_classes=10).eval()
    assert _shapes(model.state_dict()) == _shapes(reference.state_dict())  # same keys, order and shapes
    _randomise_bn(model)
    reference.load_state_dict(model.state_dict())
    x = _x()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_a_torchvision_weight_file_loads_as_it_is(tmp_path) -> None:
    """torchvision's own state dict, saved as a file (here without num_batches_tracked, like pre-0.4.1 files)."""
    reference = torchvision.models.resnet18(num_classes=10).eval()
    _randomise_bn(reference)
    state = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "resnet18.pth")
    model = build_model("resnet18", 10).eval()
    model.load_state_dict(state_dict_from_file(tmp_path / "resnet18.pth", model))
    with torch.no_grad():
        assert torch.equal(model(_x()), reference(_x()))


@pytest.mark.parametrize("name", [*RESNETS, "mobilenet_v1"])
def test_taps(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10).eval()
    names = available_taps(model)
    stages = [f"stage{k}" for k in range(1, 5)]
    assert names[:6] == ["logits", "pooled", *stages] and names[-1] == "tokens"
    assert "stage5" not in names and not any(t.startswith("pre_stage") for t in names)
    x = _x()
    with torch.no_grad():
        plain = model(x)
        out = FeatureTaps(model, names)(x)
    assert torch.equal(out["logits"], plain)
    for k, (stage, channels) in enumerate(zip(stages, STAGE_CHANNELS[name], strict=True)):
        side = SIZE // 4 // 2**k  # stage1 at 1/4 of the input … stage4 at 1/32
        assert out[stage].shape == (2, channels, side, side), stage
    last = out["stage4"]
    assert out["pooled"].shape == (2, last.shape[1])
    torch.testing.assert_close(out["pooled"], last.mean((2, 3)))  # global average pooling
    assert torch.equal(get_classifier(model)(out["pooled"]), out["logits"])
    assert torch.equal(out["tokens"], last.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v1"])
def test_tapped_tensors_are_not_modified_in_place_later(name: str) -> None:
    model = build_model(name, 10).train()
    snapshots: dict[str, torch.Tensor] = {}
    handles = []
    for tap, path in model.tap_modules.items():
        hook = (lambda t: lambda m, a, o: snapshots.__setitem__(t, o.detach().clone()))(tap)
        handles.append(model.get_submodule(path).register_forward_hook(hook))
    out = FeatureTaps(model, available_taps(model))(_x())
    for handle in handles:
        handle.remove()
    (out["stage2"].mean() + out["logits"].sum()).backward()  # taps carry gradients
    for tap, snapshot in snapshots.items():
        assert torch.equal(out[tap].detach(), snapshot), tap


@pytest.mark.parametrize("name", [*RESNETS, "mobilenet_v1"])
def test_channels_last_gives_the_same_logits_and_taps(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10).eval()
    _randomise_bn(model)
    x = _x()
    with torch.no_grad():
        expected = FeatureTaps(model, ["stage2", "tokens"])(x)
        model.to(memory_format=torch.channels_last)
        got = FeatureTaps(model, ["stage2", "tokens"])(x.contiguous(memory_format=torch.channels_last))
    scale = expected["logits"].abs().max()
    torch.testing.assert_close(got["logits"], expected["logits"], rtol=1e-4, atol=1e-5 * float(scale))
    torch.testing.assert_close(got["stage2"], expected["stage2"], rtol=1e-4, atol=1e-4)
    assert got["tokens"].shape == expected["tokens"].shape


def test_mobilenet_v1_is_timms_mobilenetv1_100_under_model() -> None:
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", 10).eval()
    assert isinstance(model, MobileNetV1) and model.timm_name == "mobilenetv1_100"
    reference = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=10).eval()
    timm_keys = [(f"model.{key}", shape) for key, shape in _shapes(reference.state_dict())]
    assert _shapes(model.state_dict()) == timm_keys
    # the same keys as timm:mobilenetv1_100, so kdbench checkpoints of the two are interchangeable
    assert list(build_model("timm:mobilenetv1_100", 10).state_dict()) == list(model.state_dict())
    _randomise_bn(reference)
    model.model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert torch.equal(model(_x()), reference(_x()))
    assert model.tap_modules["stage1"] == "model.blocks.1" and model.tap_modules["stage4"] == "model.blocks.4"


def test_mobilenet_v1_loads_a_plain_timm_state_dict_and_its_own(tmp_path) -> None:
    reference = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=10).eval()
    _randomise_bn(reference)
    torch.save(reference.state_dict(), tmp_path / "timm.pth")  # keys without "model."
    model = build_model("mobilenet_v1", 10).eval()
    model.load_state_dict(state_dict_from_file(tmp_path / "timm.pth", model))
    with torch.no_grad():
        assert torch.equal(model(_x()), reference(_x()))
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "kdbench.pth")  # keys with "model."
    fresh = build_model("mobilenet_v1", 10).eval()
    fresh.load_state_dict(state_dict_from_file(tmp_path / "kdbench.pth", fresh))
    bare = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=10).eval()
    bare.load_state_dict(state_dict_from_file(tmp_path / "kdbench.pth", bare))  # and back to bare timm
    with torch.no_grad():
        assert torch.equal(fresh(_x()), reference(_x())) and torch.equal(bare(_x()), reference(_x()))


def test_mobilenet_v1_refuses_pretrained() -> None:
    with pytest.raises(ValueError, match="model 'mobilenet_v1': pretrained weights cannot be downloaded"):
        build_model("mobilenet_v1", 10, pretrained=True)


def test_resnet_zero_init_residual() -> None:
    model = build_model("resnet18", 10, zero_init_residual=True)
    assert not any(block.bn2.weight.any() for block in model.layer1)
