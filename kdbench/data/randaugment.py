"""Batch-level RandAugment and Cutout for uint8 B×C×H×W batches (the "strong" half of the weak_strong view).

RandAugment (Cubuk et al. 2020) as torchvision's ``transforms.v2.RandAugment`` defines it: ``num_ops`` rounds,
each applying one op drawn uniformly (with replacement) from the 14 below, at a fixed magnitude bin
``magnitude`` of ``num_bins``; a "signed" op has its magnitude negated with p=0.5. The per-image randomness is
which op each round applies and the sign; all draws come from the CPU ``generator`` passed in.

Op list and the value at the default magnitude 9 of 31 bins (value = max · 9/30 for linear ranges):

=============  ===============================================  ==========================
op             magnitude range over the bins                    value at 9/31 (32×32)
=============  ===============================================  ==========================
Identity       —                                                —
ShearX/Y       0 … 0.3 (shear factor, signed; torchvision        ±0.09
               applies atan → degrees, centre at the corner)
TranslateX/Y   0 … 150/331 · width/height pixels (signed,        ±4 px (int of 4.35)
               truncated to int)
Rotate         0 … 30 degrees (signed)                           ±9°
Brightness     factor 1 + (0 … 0.9) (signed)                     0.73 or 1.27
Color          saturation factor 1 + (0 … 0.9) (signed)          0.73 or 1.27
Contrast       factor 1 + (0 … 0.9) (signed)                     0.73 or 1.27
Sharpness      factor 1 + (0 … 0.9) (signed)                     0.73 or 1.27
Posterize      bits 8 − round(bin / ((bins − 1)/4))              7 bits
Solarize       threshold 255 · (1 … 0)                           178.5
AutoContrast   —                                                 —
Equalize       —                                                 —
=============  ===============================================  ==========================

Geometric ops use nearest interpolation and fill 0 (torchvision's defaults). Each op is a
``torchvision.transforms.v2.functional`` call on a sub-batch with ONE parameter; images are grouped by
(op, sign), so a round costs at most 23 batched calls whatever B is, and no Python loop runs per image.
The groups are found on the CPU (where the draws live), so a CUDA batch needs no device→host sync.
torchvision is imported on first use only (it takes seconds to import).

Cutout (DeVries & Taylor 2017): one square hole per image, side ``size`` (default half the image side), centre
uniform over the image, clipped at the borders, filled with 0 (black in uint8 pixel space).
"""

from __future__ import annotations

import math

import torch

#: The op list, in torchvision's order; the index is what the generator draws.
RANDAUGMENT_OPS: tuple[str, ...] = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
    "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)
#: Ops whose magnitude is negated with probability 0.5.
SIGNED_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
                        "Sharpness"})


def op_magnitude(name: str, magnitude: int, num_bins: int, height: int, width: int) -> float | None:
    """The unsigned magnitude of op ``name`` at bin ``magnitude`` of ``num_bins`` (None for ops without one)."""
    if not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude={magnitude}: must be in 0..{num_bins - 1}")
    share = magnitude / (num_bins - 1) if num_bins > 1 else 0.0
    if name in ("Identity", "AutoContrast", "Equalize"):
        return None
    if name in ("ShearX", "ShearY"):
        return 0.3 * share
    if name == "TranslateX":
        return 150.0 / 331.0 * width * share
    if name == "TranslateY":
        return 150.0 / 331.0 * height * share
    if name == "Rotate":
        return 30.0 * share
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return 0.9 * share
    if name == "Posterize":
        return float(round(8 - magnitude / ((num_bins - 1) / 4)))
    if name == "Solarize":
        return 1.0 - share
    raise ValueError(f"RandAugment op '{name}' is unknown; allowed: {', '.join(RANDAUGMENT_OPS)}")


def apply_op(images: torch.Tensor, name: str, value: float | None) -> torch.Tensor:
    """Apply op ``name`` with the (already signed) ``value`` to every image of a uint8 B×C×H×W batch."""
    import torchvision.transforms.v2.functional as TF  # lazy: torchvision costs seconds to import

    if name == "Identity":
        return images
    if name == "ShearX":
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(value)), 0.0],
                         center=[0, 0])
    if name == "ShearY":
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(value))],
                         center=[0, 0])
    if name == "TranslateX":
        return TF.affine(images, angle=0.0, translate=[int(value), 0], scale=1.0, shear=[0.0, 0.0])
    if name == "TranslateY":
        return TF.affine(images, angle=0.0, translate=[0, int(value)], scale=1.0, shear=[0.0, 0.0])
    if name == "Rotate":
        return TF.rotate(images, angle=value)
    if name == "Brightness":
        return TF.adjust_brightness(images, brightness_factor=1.0 + value)
    if name == "Color":
        return TF.adjust_saturation(images, saturation_factor=1.0 + value)
    if name == "Contrast":
        return TF.adjust_contrast(images, contrast_factor=1.0 + value)
    if name == "Sharpness":
        return TF.adjust_sharpness(images, sharpness_factor=1.0 + value)
    if name == "Posterize":
        return TF.posterize(images, bits=int(value))
    if name == "Solarize":
        return TF.solarize(images, threshold=255.0 * value)
    if name == "AutoContrast":
        return TF.autocontrast(images)
    if name == "Equalize":
        return TF.equalize(images)
    raise ValueError(f"RandAugment op '{name}' is unknown; allowed: {', '.join(RANDAUGMENT_OPS)}")


def draw_ops(count: int, generator: torch.Generator, num_ops: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The random part of RandAugment for ``count`` images: op indices and negate flags, both num_ops×count (CPU).

    Negate flags are drawn for every op (unsigned ops ignore theirs), so the number of draws is fixed.
    """
    ops = torch.randint(0, len(RANDAUGMENT_OPS), (num_ops, count), generator=generator)
    negate = torch.rand(num_ops, count, generator=generator) < 0.5
    return ops, negate


def apply_drawn_ops(
    batch: torch.Tensor, ops: torch.Tensor, negate: torch.Tensor, magnitude: int = 9, num_bins: int = 31
) -> torch.Tensor:
    """Apply drawn ops (num_ops×B indices and negate flags, from ``draw_ops``) round by round, grouped by (op, sign)."""
    height, width = batch.shape[-2:]
    out = batch
    for round_ops, round_negate in zip(ops, negate, strict=True):
        signed = torch.tensor([name in SIGNED_OPS for name in RANDAUGMENT_OPS])[round_ops]
        keys = round_ops * 2 + (round_negate & signed).long()  # unsigned ops: one group whatever the flag
        current, out = out, out.clone()
        for key in torch.unique(keys).tolist():
            name = RANDAUGMENT_OPS[key // 2]
            if name == "Identity":
                continue
            value = op_magnitude(name, magnitude, num_bins, height, width)
            if value is not None and key % 2:
                value = -value
            rows = torch.nonzero(keys == key).squeeze(1).to(batch.device)
            out.index_copy_(0, rows, apply_op(current.index_select(0, rows), name, value))
    return out


def rand_augment(
    batch: torch.Tensor, generator: torch.Generator, num_ops: int = 2, magnitude: int = 9, num_bins: int = 31
) -> torch.Tensor:
    """RandAugment of a uint8 B×C×H×W batch: ``num_ops`` random ops per image at bin ``magnitude`` of ``num_bins``."""
    if batch.dtype != torch.uint8:
        raise ValueError(f"rand_augment needs a uint8 batch, got {batch.dtype}")
    ops, negate = draw_ops(batch.shape[0], generator, num_ops)
    return apply_drawn_ops(batch, ops, negate, magnitude, num_bins)


def cutout(batch: torch.Tensor, generator: torch.Generator, size: int | None = None) -> torch.Tensor:
    """Zero one ``size``×``size`` square per image (default: half the smaller image side), centre uniform.

    The hole spans rows ``[cy − size//2, cy − size//2 + size)`` clipped to the image (likewise columns), with
    ``cy`` uniform in 0..H−1 and ``cx`` in 0..W−1, drawn from the CPU ``generator`` (B values each); one
    broadcast mask over the batch, no per-image loop.
    """
    count, _, height, width = batch.shape
    if size is None:
        size = min(height, width) // 2
    centre_y = torch.randint(0, height, (count,), generator=generator).to(batch.device)
    centre_x = torch.randint(0, width, (count,), generator=generator).to(batch.device)
    top, left = centre_y - size // 2, centre_x - size // 2
    rows = torch.arange(height, device=batch.device)[None, :]
    cols = torch.arange(width, device=batch.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # B×H
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # B×W
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # B×1×H×W
    return batch.masked_fill(hole, 0)
