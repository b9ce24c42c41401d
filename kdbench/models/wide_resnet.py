"""Wide ResNets (pre-activation) of the KD literature: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from kdbench.models.catalog import register_model
from kdbench.models.layers import GlobalAvgPool, conv3x3, init_conv_bn, init_linear


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv-BN-ReLU-(dropout)-conv, plus (projected) shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()  # not in-place: bn1's output can be a pre_stage tap
        self.conv1 = conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_planes, out_planes)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.convShortcut: nn.Conv2d | None = None  # RepDistiller's name, for checkpoint compatibility
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual forward; a projecting block also feeds the activated input to its shortcut."""
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    """One stage: ``n`` WideBasicBlocks, the first one changing width and stride."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the stage's blocks."""
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k for 32×32 inputs: stem conv, three pre-activation stages, BN-ReLU, global pool, fc.

    Stage taps are the stages' residual-stream outputs (pre-activation network: no ReLU there), as in
    RepDistiller's ``is_feat``; ``pre_stageK`` are the BN outputs that the next ReLU consumes.
    """

    classifier_module = "fc"
    token_source = "stage3"

    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(widths[3], num_classes)
        self.tap_modules = {
            "stage1": "block1",
            "stage2": "block2",
            "stage3": "block3",
            "pre_stage1": "block2.layer.0.bn1",
            "pre_stage2": "block3.layer.0.bn1",
            "pre_stage3": "bn1",
            "pooled": "pool",
        }
        init_conv_bn(self)
        init_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×3×H×W batch."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(self.pool(out))


def _register(depth: int, widen_factor: int) -> None:
    name = f"wrn_{depth}_{widen_factor}"

    @register_model(
        name,
        family="wide_resnet",
        description=f"Wide ResNet-{depth}-{widen_factor} (pre-activation, widths 16/32/64 x{widen_factor})",
    )
    def factory(num_classes: int, drop_rate: float = 0.0) -> nn.Module:
        return WideResNet(depth, widen_factor, num_classes, drop_rate)


for _depth, _k in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _k)
