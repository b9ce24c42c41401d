"""CIFAR VGGs with BatchNorm and a single linear classifier: vgg8, vgg11, vgg13, vgg16, vgg19.

Taps follow RepDistiller's/mdistiller's feature lists (``feats``/``preact_feats`` in their ``vgg.py``): block 0 is
the stem, so ``stem`` = feats[0] (block0 after its ReLU, before pool0), ``stageK`` = feats[K] (blockK after its
ReLU, before the following pool) for K = 1…4, ``pre_stageK`` = preact_feats[K] (blockK's last BN, before that
ReLU) and ``pooled`` = the pooled feature. There is no pre-activation stem tap: their preact list repeats the
post-ReLU feats[0].
"""

from __future__ import annotations

import torch
from torch import nn

from kdbench.models.catalog import register_model
from kdbench.models.layers import GlobalAvgPool, init_conv_bn, init_linear

# Conv widths of the five blocks; blocks are separated by 2×2 max-pools (the 4th only for inputs ≥ 64 px).
VGG_CONFIGS: dict[str, list[list[int]]] = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _conv_block(widths: list[int], in_channels: int) -> nn.Sequential:
    """Conv(3×3, bias)-BN-ReLU per width; the last ReLU is not in-place (its input is the pre_stageK tap)."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width)]
        layers.append(nn.ReLU() if last else nn.ReLU(inplace=True))
        in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG-BN for CIFAR as in RepDistiller: five conv blocks, max-pools between them, global pool, one fc."""

    classifier_module = "classifier"
    token_source = "stage4"

    def __init__(self, config: list[list[int]], num_classes: int = 100) -> None:
        super().__init__()
        if len(config) != 5:
            raise ValueError(f"VGG needs 5 conv blocks, got {len(config)}")
        ins = [3] + [widths[-1] for widths in config[:-1]]
        self.block0 = _conv_block(config[0], ins[0])
        self.block1 = _conv_block(config[1], ins[1])
        self.block2 = _conv_block(config[2], ins[2])
        self.block3 = _conv_block(config[3], ins[3])
        self.block4 = _conv_block(config[4], ins[4])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(config[4][-1], num_classes)
        # Block 0 is the stem and blockK is stageK, as the references number their feats (see the module docstring).
        self.tap_modules = {"stem": "block0"} | {f"stage{k}": f"block{k}" for k in range(1, 5)} | {"pooled": "pool"}
        self.tap_inputs = {f"pre_stage{k}": f"block{k}.{3 * len(config[k]) - 1}" for k in range(1, 5)}
        init_conv_bn(self)
        init_linear(self, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a B×3×H×W batch (the 4th max-pool runs only for inputs of 64 px or more)."""
        large = x.shape[-1] >= 64
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.block3(self.pool2(self.block2(x)))
        if large:
            x = self.pool3(x)
        x = self.block4(x)
        return self.classifier(self.pool(x))


def _register(name: str) -> None:
    convs = sum(len(w) for w in VGG_CONFIGS[name])

    @register_model(name, family="vgg", description=f"{name} with BN for CIFAR ({convs} convs in 5 blocks, 1 fc layer)")
    def factory(num_classes: int) -> nn.Module:
        return VGG(VGG_CONFIGS[name], num_classes)


for _name in VGG_CONFIGS:
    _register(_name)
