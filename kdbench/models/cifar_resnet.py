"""CIFAR ResNets of the KD literature: resnet8 … resnet110 (16/32/64) and resnet8x4/resnet32x4 (64/128/256)."""

from __future__ import annotations

import torch
from torch import nn

from kdbench.models.catalog import register_model
from kdbench.models.layers import GlobalAvgPool, conv3x3, init_conv_bn


class BasicBlock(nn.Module):
    """Post-activation residual block: conv-BN-ReLU-conv-BN, add shortcut, ReLU (``relu_out``)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu_out = nn.ReLU()  # not in-place: its input is the pre_stage tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet for 32×32 inputs: 3×3 stem, three stages of ``(depth-2)/6`` BasicBlocks, global pool, fc."""

    classifier_module = "fc"
    token_source = "stage3"

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = widths[0]
        self.layer1 = self._make_layer(widths[1], n, stride=1)
        self.layer2 = self._make_layer(widths[2], n, stride=2)
        self.layer3 = self._make_layer(widths[3], n, stride=2)
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(widths[3], num_classes)
        last = n - 1
        self.tap_modules = {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "pooled": "pool"}
        self.tap_inputs = {f"pre_stage{k}": f"layer{k}.{last}.relu_out" for k in (1, 2, 3)}
        init_conv_bn(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(self.in_planes, planes, stride)]
        self.in_planes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×3×H×W batch."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _register(name: str, depth: int, widths: tuple[int, int, int, int]) -> None:
    label = "x4 width (32/64/128/256)" if widths == _WIDE else "16/32/64 channels"
    blocks = (depth - 2) // 6

    @register_model(
        name,
        family="cifar_resnet",
        description=f"CIFAR ResNet-{depth}, {label}, 3 stages of {blocks} BasicBlocks",
    )
    def factory(num_classes: int) -> nn.Module:
        return CifarResNet(depth, widths, num_classes)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, _THIN)
_register("resnet8x4", 8, _WIDE)
_register("resnet32x4", 32, _WIDE)
