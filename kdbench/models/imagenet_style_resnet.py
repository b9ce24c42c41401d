"""ResNet18/ResNet50 with the CIFAR stem (3×3 conv, no max-pool), as in RepDistiller's ``resnetv2``.

The ImageNet ResNets (torchvision's 7×7 stem + max-pool) are ``resnet18``/``resnet50`` in ``kdbench.models.imagenet``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench.models.catalog import register_model
from kdbench.models.layers import GlobalAvgPool, conv3x3, init_conv_bn


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """1×1 conv + BN shortcut, or an empty Sequential (identity) when shapes already match."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN + shortcut, ReLU (``relu_out``)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_planes, planes, stride)
        self.relu = nn.ReLU(inplace=True)
        self.relu_out = nn.ReLU()  # not in-place: its input is the pre_stage tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward."""
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu_out(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1×1-BN-ReLU-conv3×3-BN-ReLU-conv1×1(×4)-BN + shortcut, ReLU (``relu_out``)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _projection(in_planes, planes * 4, stride)
        self.relu = nn.ReLU(inplace=True)
        self.relu_out = nn.ReLU()  # not in-place: its input is the pre_stage tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu_out(self.bn3(self.conv3(out)) + self.shortcut(x))


class ImageNetStyleResNet(nn.Module):
    """Four-stage ResNet (64/128/256/512 planes) with a stride-1 3×3 stem for 32×32 inputs."""

    classifier_module = "linear"
    token_source = "stage4"

    def __init__(self, block: type[BasicBlock | Bottleneck], num_blocks: list[int], num_classes: int = 100) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(512 * block.expansion, num_classes)
        self.tap_modules = {f"stage{k}": f"layer{k}" for k in range(1, 5)} | {"pooled": "pool"}
        self.tap_inputs = {f"pre_stage{k + 1}": f"layer{k + 1}.{n - 1}.relu_out" for k, n in enumerate(num_blocks)}
        init_conv_bn(self)

    def _make_layer(self, block: type[BasicBlock | Bottleneck], planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(n):
            layers.append(block(self.in_planes, planes, stride if i == 0 else 1))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×3×H×W batch."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.pool(out))


@register_model(
    "ResNet18",
    family="resnet",
    description="ResNet-18 (BasicBlock 2/2/2/2) with a CIFAR 3x3 stem, no max-pool, 32 px "
    "(torchvision's ImageNet one is resnet18)",
)
def resnet18(num_classes: int) -> nn.Module:
    """ResNet-18, CIFAR variant."""
    return ImageNetStyleResNet(BasicBlock, [2, 2, 2, 2], num_classes)


@register_model(
    "ResNet50",
    family="resnet",
    description="ResNet-50 (Bottleneck 3/4/6/3) with a CIFAR 3x3 stem, no max-pool, 32 px "
    "(torchvision's ImageNet one is resnet50)",
)
def resnet50(num_classes: int) -> nn.Module:
    """ResNet-50, CIFAR variant."""
    return ImageNetStyleResNet(Bottleneck, [3, 4, 6, 3], num_classes)
