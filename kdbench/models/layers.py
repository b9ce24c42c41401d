"""Small building blocks shared by the model modules."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GlobalAvgPool(nn.Module):
    """Global average pooling followed by flatten: B×C×H×W → B×C (the ``pooled`` tap)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Average over the spatial dimensions."""
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle: interleave the channels of ``groups`` groups."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reshape to (B, g, C/g, H, W), swap the group axes, flatten back."""
        b, c, h, w = x.shape
        return x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d with the same results, several times faster on CPU for NCHW float batches without autograd.

    PyTorch's CPU kernel for NCHW tensors is scalar and slow for small maps (e.g. 10 ms for a 32×32×28×28
    batch against 1 ms for the channels-last kernel). Without autograd (a frozen teacher's forward, evaluation)
    this pools a channels-last copy and returns an NCHW result: a maximum is a maximum, so the values are
    bit-identical (tested, NaNs included). With autograd, other devices or layouts and return_indices=True it is
    nn.MaxPool2d (with a backward, the copies cost about what the faster forward saves).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Max-pool a B×C×H×W batch."""
        if (x.device.type != "cpu" or x.dim() != 4 or self.return_indices or not x.is_floating_point()
                or (torch.is_grad_enabled() and x.requires_grad)
                or not x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            return super().forward(x)
        channels_last = x.contiguous(memory_format=torch.channels_last)
        return F.max_pool2d(channels_last, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode).contiguous()


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def init_conv_bn(model: nn.Module) -> None:
    """He (fan-out) init for convolutions, zero conv biases, BatchNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_linear(model: nn.Module, std: float | None = None) -> None:
    """Zero every Linear bias; with ``std``, also draw Linear weights from N(0, std²)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            if std is not None:
                nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
