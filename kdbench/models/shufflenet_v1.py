"""ShuffleNetV1 for CIFAR as used in KD papers (RepDistiller's ``ShuffleV1``: groups 3, widths 240/480/960)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kdbench.models.catalog import register_model
from kdbench.models.layers import ChannelShuffle, GlobalAvgPool


class ShuffleUnitV1(nn.Module):
    """Group 1×1 conv - shuffle - 3×3 depthwise - group 1×1 conv; add (stride 1) or concat pooled input (stride 2)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        g = 1 if in_planes == 24 else groups  # the first unit after the 24-channel stem is not grouped
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ChannelShuffle(g)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()
        self.relu_out = nn.ReLU()  # not in-place: its input is the pre_stage tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shuffle-unit forward."""
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        return self.relu_out(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    """CIFAR ShuffleNetV1: 1×1 stem to 24 channels, three stages (first unit stride 2, concat), pool, fc."""

    classifier_module = "linear"
    token_source = "stage3"

    def __init__(
        self, out_planes: tuple[int, ...] = (240, 480, 960), num_blocks: tuple[int, ...] = (4, 8, 4),
        groups: int = 3, num_classes: int = 100,
    ) -> None:  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(out_planes[2], num_classes)
        self.tap_modules = {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "pooled": "pool"}
        self.tap_inputs = {f"pre_stage{k + 1}": f"layer{k + 1}.{n - 1}.relu_out" for k, n in enumerate(num_blocks)}

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        units = []
        for i in range(num_blocks):
            # The stride-2 first unit concatenates its pooled input, so its branch makes the remaining channels.
            branch = out_planes - self.in_planes if i == 0 else out_planes
            units.append(ShuffleUnitV1(self.in_planes, branch, stride=2 if i == 0 else 1, groups=groups))
            self.in_planes = out_planes
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×3×H×W batch."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.pool(out))


@register_model(
    "ShuffleV1", family="shufflenet", description="ShuffleNetV1 for CIFAR, groups 3, widths 240/480/960, 4/8/4 units"
)
def shufflenet_v1(num_classes: int) -> nn.Module:
    """ShuffleNetV1 (g=3) as used as a CIFAR-100 KD student."""
    return ShuffleNetV1(num_classes=num_classes)
