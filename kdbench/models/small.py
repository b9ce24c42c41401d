"""Small digits/MNIST models: Hinton et al. (2015) MLPs and two cheap CNNs (inputs 28×28×1 by default)."""

from __future__ import annotations

import torch
from torch import nn

from kdbench.models.catalog import register_model
from kdbench.models.layers import GlobalAvgPool, MaxPool2d, init_conv_bn


class MLP(nn.Module):
    """Flatten → (input dropout) → [Linear → ReLU → dropout] × len(hidden) → Linear.

    ``stageK`` is hidden layer K's post-ReLU output; ``pooled`` is what the classifier reads (after dropout).
    """

    classifier_module = "fc"
    token_source = None

    def __init__(
        self, hidden: tuple[int, ...], num_classes: int = 10, input_size: int = 28, in_channels: int = 1,
        dropout: float = 0.0, input_dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        if not hidden:
            raise ValueError("MLP needs at least one hidden layer")
        self.flatten = nn.Flatten(1)
        self.input_dropout = nn.Dropout(input_dropout)
        layers: list[nn.Module] = []
        width = in_channels * input_size * input_size
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(dropout)]
            width = units
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)
        self.tap_modules = {f"stage{k + 1}": f"hidden.{3 * k + 1}" for k in range(len(hidden))}
        self.tap_modules["pooled"] = f"hidden.{3 * len(hidden) - 1}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×C×H×W (or B×D) batch."""
        return self.fc(self.hidden(self.input_dropout(self.flatten(x))))


class SmallCNN(nn.Module):
    """Stages of [2×2 max-pool (after the first)] → 3×3 conv → BN → ReLU, global average pool, fc."""

    classifier_module = "fc"

    def __init__(self, widths: tuple[int, ...], num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        stages = []
        for k, width in enumerate(widths):
            layers: list[nn.Module] = [MaxPool2d(2)] if k > 0 else []
            layers += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = GlobalAvgPool()
        self.fc = nn.Linear(in_channels, num_classes)
        self.tap_modules = {f"stage{k + 1}": f"stages.{k}" for k in range(len(widths))} | {"pooled": "pool"}
        self.tap_inputs = {f"pre_stage{k + 1}": f"stages.{k}.{2 if k == 0 else 3}" for k in range(len(widths))}
        self.token_source = f"stage{len(widths)}"
        init_conv_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×C×H×W batch (any H, W ≥ 2^(stages-1))."""
        return self.fc(self.pool(self.stages(x)))


def _check_input(name: str, input_size: int, in_channels: int, minimum: int = 1) -> None:
    """Reject non-positive channels and inputs smaller than the model can take."""
    if in_channels < 1 or input_size < minimum:
        raise ValueError(f"model '{name}': need in_channels ≥ 1 and input_size ≥ {minimum}")


@register_model(
    "mlp_1200x2", family="mlp", input_size=28, in_channels=1,
    description="Hinton et al. 2015 MNIST teacher MLP: 2 hidden layers of 1200 ReLU units",
)  # fmt: skip
def mlp_1200x2(
    num_classes: int, input_size: int = 28, in_channels: int = 1, dropout: float = 0.0, input_dropout: float = 0.0
) -> nn.Module:
    """MLP with two hidden layers of 1200 units."""
    _check_input("mlp_1200x2", input_size, in_channels)
    return MLP((1200, 1200), num_classes, input_size, in_channels, dropout, input_dropout)


@register_model(
    "mlp_800x2", family="mlp", input_size=28, in_channels=1,
    description="Hinton et al. 2015 MNIST student MLP: 2 hidden layers of 800 ReLU units",
)  # fmt: skip
def mlp_800x2(
    num_classes: int, input_size: int = 28, in_channels: int = 1, dropout: float = 0.0, input_dropout: float = 0.0
) -> nn.Module:
    """MLP with two hidden layers of 800 units."""
    _check_input("mlp_800x2", input_size, in_channels)
    return MLP((800, 800), num_classes, input_size, in_channels, dropout, input_dropout)


@register_model(
    "cnn_small", family="cnn", input_size=28, in_channels=1,
    description="2-stage CNN (16/32 channels, conv-BN-ReLU, global pool), a cheap student",
)  # fmt: skip
def cnn_small(num_classes: int, input_size: int = 28, in_channels: int = 1) -> nn.Module:
    """Two conv stages of 16 and 32 channels."""
    _check_input("cnn_small", input_size, in_channels, minimum=2)
    return SmallCNN((16, 32), num_classes, in_channels)


@register_model(
    "cnn_large", family="cnn", input_size=28, in_channels=1,
    description="3-stage CNN (32/64/128 channels, conv-BN-ReLU, global pool), a cheap teacher",
)  # fmt: skip
def cnn_large(num_classes: int, input_size: int = 28, in_channels: int = 1) -> nn.Module:
    """Three conv stages of 32, 64 and 128 channels."""
    _check_input("cnn_large", input_size, in_channels, minimum=4)
    return SmallCNN((32, 64, 128), num_classes, in_channels)


@register_model(
    "cnn2_w32", family="cnn", input_size=8, in_channels=1,
    description="2-stage CNN (32/64 channels) for native 8×8 digits, the demo's teacher (4×4 tokens)",
)  # fmt: skip
def cnn2_w32(num_classes: int, input_size: int = 8, in_channels: int = 1) -> nn.Module:
    """Two conv stages of 32 and 64 channels."""
    _check_input("cnn2_w32", input_size, in_channels, minimum=2)
    return SmallCNN((32, 64), num_classes, in_channels)


@register_model(
    "cnn2_w8", family="cnn", input_size=8, in_channels=1,
    description="2-stage CNN (8/16 channels) for native 8×8 digits, the demo's student",
)  # fmt: skip
def cnn2_w8(num_classes: int, input_size: int = 8, in_channels: int = 1) -> nn.Module:
    """Two conv stages of 8 and 16 channels."""
    _check_input("cnn2_w8", input_size, in_channels, minimum=2)
    return SmallCNN((8, 16), num_classes, in_channels)
