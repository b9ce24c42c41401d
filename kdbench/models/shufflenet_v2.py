"""ShuffleNetV2 for CIFAR as used in KD papers (RepDistiller's ``ShuffleV2``: 1× widths 116/232/464, 1024)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kdbench.models.catalog import register_model
from kdbench.models.layers import ChannelShuffle, GlobalAvgPool


class ShuffleUnitV2(nn.Module):
    """Split channels in half; 1×1-BN-ReLU, 3×3 depthwise-BN, 1×1-BN-ReLU on one half; concat; shuffle."""

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = int(channels * split_ratio)
        c = channels - self.split
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Basic-unit forward."""
        x1, x2 = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return self.shuffle(torch.cat([x1, out], 1))


class DownUnitV2(nn.Module):
    """Stride-2 unit: depthwise+1×1 branch and 1×1+depthwise+1×1 branch on the full input; concat; shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Down-unit forward."""
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNetV2: 1×1 stem to 24 channels, three stages (a down unit + n units), 1×1 conv, pool, fc.

    Stage outputs are channel-shuffled concatenations; no ``pre_stage`` tap is offered.
    """

    classifier_module = "linear"
    token_source = "stage3"

    def __init__(
        self, out_channels: tuple[int, ...] = (116, 232, 464, 1024), num_blocks: tuple[int, ...] = (3, 7, 3),
        num_classes: int = 100,
    ) -> None:  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU(inplace=True)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.tap_modules = {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "pooled": "pool"}

    def _make_layer(self, out_channels: int, num_blocks: int) -> nn.Sequential:
        units: list[nn.Module] = [DownUnitV2(self.in_channels, out_channels)]
        units += [ShuffleUnitV2(out_channels) for _ in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×3×H×W batch."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.linear(self.pool(out))


@register_model(
    "ShuffleV2", family="shufflenet", description="ShuffleNetV2 1x for CIFAR, widths 116/232/464, 1024-d head"
)
def shufflenet_v2(num_classes: int) -> nn.Module:
    """ShuffleNetV2 (1×) as used as a CIFAR-100 KD student."""
    return ShuffleNetV2(num_classes=num_classes)
