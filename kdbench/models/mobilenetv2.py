"""MobileNetV2 for CIFAR as used in KD papers (RepDistiller's ``mobile_half``: expansion 6, width 0.5)."""

from __future__ import annotations

import torch
from torch import nn

from kdbench.models.catalog import register_model
from kdbench.models.layers import GlobalAvgPool, init_conv_bn, init_linear

# (expansion t, output channels c, repeats n, first stride s); the first row keeps t=1 but, as in the
# KD reference, still has its 1×1 expansion conv.
INVERTED_RESIDUAL_SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    """Conv (no bias) - BN - ReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1×1 expand - BN - ReLU - 3×3 depthwise - BN - ReLU - 1×1 project - BN, residual when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Linear-bottleneck forward."""
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2: stride-2 3×3 stem, 7 inverted-residual groups, 1×1 conv to 1280, pool, fc.

    The four stages are the resolution groups (block groups 0–1, 2, 3–4, 5–6), ending where RepDistiller
    takes its features; their outputs are linear bottlenecks (no ReLU), so there is no ``pre_stage`` tap.
    """

    classifier_module = "classifier"
    token_source = "stage4"

    def __init__(self, num_classes: int = 100, expansion: int = 6, width_mult: float = 0.5) -> None:
        super().__init__()
        in_ch = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_ch, 3, 2)
        groups = []
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            out_ch = int(c * width_mult)
            t = t if t == 1 else expansion
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
            groups.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(groups)
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_ch, self.last_channel, 1, 1)
        self.pool = GlobalAvgPool()
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.tap_modules = {"stage1": "blocks.1", "stage2": "blocks.2", "stage3": "blocks.4", "stage4": "blocks.6"}
        self.tap_modules["pooled"] = "pool"
        init_conv_bn(self)
        init_linear(self, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×3×H×W batch."""
        out = self.conv1(x)
        for group in self.blocks:
            out = group(out)
        return self.classifier(self.pool(self.conv2(out)))


@register_model(
    "MobileNetV2",
    family="mobilenetv2",
    description="MobileNetV2 for CIFAR, width 0.5, expansion 6 (RepDistiller/mdistiller mobile_half)",
)
def mobilenetv2_half(num_classes: int) -> nn.Module:
    """MobileNetV2 with width multiplier 0.5 and expansion 6, the KD literature's CIFAR student."""
    return MobileNetV2(num_classes, expansion=6, width_mult=0.5)
