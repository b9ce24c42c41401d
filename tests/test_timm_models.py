"""Tests for timm models in kdbench: ``timm:<name>``, the CIFAR ViT presets, and their feature taps."""

from __future__ import annotations

import copy

import pytest
import torch

from kdbench.models import (
    MODELS,
    FeatureTaps,
    TimmModel,
    available_taps,
    build_model,
    get_classifier,
    model_info,
    model_names,
    tap_shapes,
)
from kdbench.registry import UnknownNameError

VIT = "timm:vit_tiny_patch16_224"
DEIT = "timm:deit_tiny_distilled_patch16_224"
TINY = {"img_size": 32, "patch_size": 4, "depth": 2, "embed_dim": 64, "num_heads": 2}  # 8×8 = 64 patch tokens
VIT_CIFAR_TINY_PARAMS_100 = 5_380_132  # measured: timm VisionTransformer(32px, patch 4, 192, depth 12, 3 heads)


def _x(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_vit_builds_forwards_and_tokens_drop_the_cls_token() -> None:
    torch.manual_seed(0)
    model = build_model(VIT, 10, **TINY).eval()
    assert isinstance(model, TimmModel) and model.num_prefix_tokens == 1
    assert available_taps(model) == ["logits", "pooled", "stage1", "stage2", "token_map", "tokens"]
    x = _x()
    with torch.no_grad():
        out = FeatureTaps(model, available_taps(model))(x)
        features = model.model.forward_features(x)  # B×(1+64)×D after the final norm
        assert torch.equal(out["logits"], model.model(x))  # the wrapper computes what timm computes
    assert out["logits"].shape == (2, 10)
    assert features.shape == (2, 65, 64)
    assert out["tokens"].shape == (2, (32 // 4) ** 2, 64)
    assert torch.equal(out["tokens"], features[:, model.model.num_prefix_tokens :])
    assert out["token_map"].shape == (2, 64, 8, 8)  # the patch grid, row-major like the tokens
    assert torch.equal(out["token_map"][:, :, 1, 2], features[:, 1 + 1 * 8 + 2])
    assert out["stage1"].shape == out["stage2"].shape == (2, 65, 64)  # block outputs keep the CLS token
    assert torch.equal(model.model.norm(out["stage2"]), features)


@pytest.mark.parametrize("train", [False, True])
def test_vit_pooled_feeds_the_head_exactly(train: bool) -> None:
    model = build_model(VIT, 10, drop_rate=0.5, **TINY).train(train)
    assert get_classifier(model) is model.model.head
    out = FeatureTaps(model, ["pooled", "tokens"])(_x())
    assert out["pooled"].shape == (2, 64)
    assert torch.equal(model.model.head(out["pooled"]), out["logits"])
    if not train:
        with torch.no_grad():
            assert torch.equal(out["pooled"], model.model.forward_head(model.model.forward_features(_x()), True))
    (out["tokens"].mean() + out["logits"].sum()).backward()  # taps carry gradients
    assert model.model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_deit_distilled_drops_cls_and_distillation_tokens() -> None:
    torch.manual_seed(0)
    model = build_model(DEIT, 10, **TINY).eval()
    assert model.num_prefix_tokens == 2 and model.distilled
    x = _x()
    with torch.no_grad():
        out = FeatureTaps(model, ["tokens", "pooled", "stage2"])(x)
        features = model.model.forward_features(x)
        reference = model.model(x)  # timm: (head(cls) + head_dist(dist)) / 2
    assert out["tokens"].shape == (2, 64, 64)
    assert torch.equal(out["tokens"], features[:, 2:])
    assert out["stage2"].shape == (2, 66, 64)
    assert out["pooled"].shape == (2, 128)  # [cls ‖ dist], what the two heads read
    assert torch.equal(get_classifier(model)(out["pooled"]), out["logits"])
    torch.testing.assert_close(out["logits"], reference)
    assert not any("distilled_head" in key for key in model.state_dict())  # the heads stay timm's
    clone = copy.deepcopy(model)
    assert clone.distilled_head._owner is clone.model


def test_tap_shapes_for_a_vit() -> None:
    model = build_model(VIT, 100, **TINY).train()
    shapes = tap_shapes(model, ["logits", "pooled", "stage*", "token_map", "tokens"], (3, 32, 32))
    assert shapes == {
        "logits": (100,),
        "pooled": (64,),
        "stage1": (65, 64),
        "stage2": (65, 64),
        "token_map": (64, 8, 8),
        "tokens": (64, 64),
    }
    assert model.training and not any(m._forward_hooks for m in model.modules())


def test_model_info_for_timm_names_and_kwargs() -> None:
    info = model_info(VIT)
    assert (info.name, info.family, info.input_size, info.in_channels) == (VIT, "timm", 224, 3)
    assert model_info(VIT, img_size=32).input_size == 32
    small = model_info(VIT, img_size=(32, 32), in_chans=1)
    assert (small.input_size, small.in_channels) == (32, 1)
    with pytest.raises(ValueError, match="square"):
        model_info(VIT, img_size=(32, 48))
    # kdbench's own models: unchanged without kwargs; input_size/in_channels kwargs are reflected
    assert model_info("mlp_800x2") == model_info("mlp_800x2", dropout=0.1)
    resized = model_info("mlp_800x2", input_size=12, in_channels=3)
    assert (resized.input_size, resized.in_channels) == (12, 3)
    with pytest.raises(TypeError, match="'resnet8'.*'img_size'"):
        model_info("resnet8", img_size=32)


def test_unknown_timm_name_names_the_closest_matches() -> None:
    with pytest.raises(
        UnknownNameError,
        match=r"unknown timm model 'vit_tiny_patch16_2244' \(closest: .*"
        r"'timm:vit_tiny_patch16_224'",
    ):
        build_model("timm:vit_tiny_patch16_2244", 10)
    with pytest.raises(KeyError, match="closest"):
        model_info("timm:deit_tiny_distiled_patch16_224")
    with pytest.raises(UnknownNameError):  # hub/local sources are not timm model names: nothing is fetched
        MODELS.get("timm:hf-hub:timm/vit_tiny_patch16_224.augreg_in21k")
    assert VIT in MODELS and "timm:no_such_model" not in MODELS
    with pytest.raises(TypeError, match=f"model '{VIT}'.*'no_such_kwarg'"):
        build_model(VIT, 10, no_such_kwarg=1, **TINY)
    with pytest.raises(UnknownNameError, match=r"did you mean 'vit_cifar_tiny'.*or 'timm:<name>'"):
        build_model("vit_cifar_tiy", 10)


@pytest.mark.parametrize("name", [VIT, "vit_cifar_tiny"])
def test_pretrained_weights_are_refused_with_the_local_checkpoint_hint(name: str) -> None:
    with pytest.raises(
        ValueError, match=r"pretrained weights cannot be downloaded.*local checkpoint.*checkpoint_path="
    ):
        build_model(name, 10, pretrained=True, **TINY)
    assert isinstance(build_model(name, 10, pretrained=False, **TINY), TimmModel)


def test_checkpoint_path_loads_local_timm_weights(tmp_path) -> None:
    source = build_model(VIT, 10, **TINY)
    path = tmp_path / "vit.pth"
    torch.save(source.model.state_dict(), path)
    for name in (VIT, "vit_cifar_tiny"):
        loaded = build_model(name, 10, checkpoint_path=str(path), **TINY)
        expected, got = source.state_dict(), loaded.state_dict()
        assert list(expected) == list(got) and all(torch.equal(expected[k], got[k]) for k in expected)


def test_vit_cifar_tiny_preset() -> None:
    torch.manual_seed(0)
    model = build_model("vit_cifar_tiny", 100)
    assert sum(p.numel() for p in model.parameters()) == VIT_CIFAR_TINY_PARAMS_100
    info = model_info("vit_cifar_tiny")
    assert (info.family, info.input_size, info.in_channels) == ("vit", 32, 3)
    assert model_info("vit_cifar_tiny", img_size=64).input_size == 64
    assert tap_shapes(model, ["logits", "pooled", "stage12", "tokens"], (3, 32, 32)) == {
        "logits": (100,),
        "pooled": (192,),
        "stage12": (65, 192),
        "tokens": (64, 192),
    }
    assert "stage13" not in available_taps(model)
    # resolvable by name (grid files), but model_names() lists only kdbench's own models, never timm ones
    assert "vit_cifar_tiny" in MODELS and "vit_cifar_tiny" not in model_names()
    assert "vit_cifar_tiny" in model_names(include_unlisted=True)
    assert not any(name.startswith("timm:") for name in model_names(include_unlisted=True))


def test_cnn_teacher_and_vit_student_both_give_tokens() -> None:
    teacher = build_model("resnet8x4", 100).eval()
    student = build_model(VIT, 100, **TINY).eval()
    x = _x(batch=3)
    with torch.no_grad():
        t_tokens = FeatureTaps(teacher, ["tokens"])(x)["tokens"]
        s_tokens = FeatureTaps(student, ["tokens"])(x)["tokens"]
    assert t_tokens.shape == (3, 64, 256)  # resnet8x4's last map is 256×8×8
    assert s_tokens.shape == (3, 64, 64)  # the ViT's 8×8 patch grid, D = 64
    assert tap_shapes(teacher, ["tokens"], (3, 32, 32))["tokens"] == (64, 256)
    assert tap_shapes(student, ["tokens"], (3, 32, 32))["tokens"] == (64, 64)


def test_timm_cnn_gives_tokens_from_its_last_map() -> None:
    model = build_model("timm:resnet18", 10).eval()
    assert available_taps(model) == ["logits", "pooled", "token_map", "tokens"]  # no `blocks`: no stage taps
    with torch.no_grad():
        out = FeatureTaps(model, ["pooled", "token_map", "tokens"])(_x(size=64))
    assert out["token_map"].shape == (2, 512, 2, 2) and out["tokens"].shape == (2, 4, 512)
    assert torch.equal(get_classifier(model)(out["pooled"]), out["logits"])


def test_builds_on_the_meta_device_for_plan_time_checks() -> None:
    with torch.device("meta"):
        model = build_model(DEIT, 10, **TINY)
    assert next(model.parameters()).is_meta
    assert "tokens" in available_taps(model)
