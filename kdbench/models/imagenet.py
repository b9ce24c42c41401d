"""ImageNet models (224 px inputs) with kdbench's taps: torchvision's ResNet-18/34/50 and timm's MobileNetV1.

``resnet18``/``resnet34``/``resnet50`` are torchvision's ImageNet ResNets (7×7 stride-2 stem and 3×3 max-pool):
the same modules under the same names, so their state dicts have exactly torchvision's keys and shapes and a
torchvision weight file loads as it is (``kdbench.models.weights``). Only parameterless modules are added or swapped
(a Flatten whose output is the ``pooled`` tap, and kdbench's bit-identical, faster CPU max-pool). Not to be
confused with the CIFAR zoo's ``ResNet18``/``ResNet50`` (3×3 stride-1 stem, no max-pool, 32 px).

Taps: ``logits``; ``pooled`` (B×C after global average pooling, what ``fc`` reads); ``stage1…stage4`` (the
outputs of ``layer1…layer4``, at 1/4 … 1/32 of the input size); ``tokens`` (``stage4``'s positions). There is no
``pre_stageK``: torchvision's blocks apply one shared ReLU module both inside the block and to its output, so
the pre-ReLU sum has no module of its own to hook without changing the blocks, and none of kdbench's methods
that run on these models (vanilla, kd, dkd, crd, rkd, mlkd, trg) asks for it.

``mobilenet_v1`` is timm's ``mobilenetv1_100`` (built with ``pretrained=False``, never downloaded) wrapped as a
:class:`~kdbench.models.timm_adapter.TimmModel`: its state dict is timm's under ``model.``, exactly as for
``timm:mobilenetv1_100``, so checkpoints of the two are interchangeable; the weight loader also takes a plain timm
state dict (without ``model.``). Its stage taps differ from ``timm:mobilenetv1_100``'s (one per timm block
group): timm's first group (``blocks.0``, one depthwise-separable conv 32→64 at stride 1, right after the stride-2
stem) is counted as part of the stem, and ``stage1…stage4`` are the outputs of ``blocks.1…blocks.4``
(128/256/512/1024 channels at 1/4, 1/8, 1/16, 1/32 of the input: the resolutions of the ResNets' stages, and
mdistiller's four MobileNetV1 feature stages). ``tokens`` come from the last map (= ``stage4``, timm's
``mobilenetv1_100`` has no head conv); ``pooled`` is what the classifier reads.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdbench.models.catalog import register_model
from kdbench.models.layers import MaxPool2d
from kdbench.models.timm_adapter import TimmModel, _reject_pretrained, build_timm_model

IMAGENET_SIZE = 224

# name → (torchvision block class name, blocks per stage)
RESNET_LAYOUTS: dict[str, tuple[str, list[int]]] = {
    "resnet18": ("BasicBlock", [2, 2, 2, 2]),
    "resnet34": ("BasicBlock", [3, 4, 6, 3]),
    "resnet50": ("Bottleneck", [3, 4, 6, 3]),
}


class TorchvisionResNet(nn.Module):
    """torchvision's ImageNet ResNet with kdbench's taps; state-dict keys and shapes are torchvision's.

    The modules are those of a ``torchvision.models.ResNet``, adopted under the same names and in the same order
    (torchvision is imported only when one is built: importing it costs seconds).
    """

    classifier_module = "fc"
    token_source = "stage4"
    tap_modules = {"pooled": "flatten", **{f"stage{k}": f"layer{k}" for k in range(1, 5)}}

    def __init__(self, name: str, num_classes: int = 1000, zero_init_residual: bool = False) -> None:
        super().__init__()
        from torchvision.models import resnet

        block_name, layers = RESNET_LAYOUTS[name]
        block = getattr(resnet, block_name)
        reference = resnet.ResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual)
        for child_name, child in reference.named_children():
            self.add_module(child_name, child)
        self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.flatten = nn.Flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×3×H×W batch (torchvision's computation, with ``flatten`` as a module)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def _register_resnet(name: str) -> None:
    block_name, layers = RESNET_LAYOUTS[name]
    depth = name.removeprefix("resnet")
    cifar = f"; not ResNet{depth}, the CIFAR-stem variant" if depth in ("18", "50") else ""

    @register_model(
        name,
        family="resnet_imagenet",
        input_size=IMAGENET_SIZE,
        description=f"ResNet-{depth} ({block_name} {'/'.join(map(str, layers))}), torchvision's ImageNet "
        f"architecture: 7x7 stem + max-pool, 224 px; torchvision weight files load as they are{cifar}",
    )
    def factory(num_classes: int, zero_init_residual: bool = False) -> nn.Module:
        return TorchvisionResNet(name, num_classes, zero_init_residual=zero_init_residual)


for _name in RESNET_LAYOUTS:
    _register_resnet(_name)


MOBILENET_V1_TIMM_NAME = "mobilenetv1_100"


class MobileNetV1(TimmModel):
    """timm's ``mobilenetv1_100`` with stage taps at the outputs of ``blocks.1…blocks.4`` (module docstring)."""

    def __init__(self, model: nn.Module, name: str = MOBILENET_V1_TIMM_NAME) -> None:
        super().__init__(model, name)
        stages = {f"stage{k}": f"model.blocks.{k}" for k in range(1, len(model.blocks))}
        others = {tap: path for tap, path in self.tap_modules.items() if not tap.startswith("stage")}
        self.tap_modules = {**others, **stages}


@register_model(
    "mobilenet_v1",
    family="mobilenet_v1",
    input_size=IMAGENET_SIZE,
    description="MobileNetV1 1.0 (timm mobilenetv1_100, ReLU6), 224 px; state dict = timm's under 'model.'",
)
def mobilenet_v1(num_classes: int, **kwargs: Any) -> nn.Module:
    """timm's ``mobilenetv1_100`` (random init; kwargs go to ``timm.create_model``) with kdbench's taps."""
    _reject_pretrained("mobilenet_v1", kwargs)
    wrapped = build_timm_model(MOBILENET_V1_TIMM_NAME, num_classes, **kwargs)
    return MobileNetV1(wrapped.model)
