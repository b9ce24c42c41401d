"""Batch-level training augmentations of uint8 images: crop+flip, jitter, none (no per-sample loop)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Training augmentations iterate_batches knows.
AUGMENTATIONS = ("crop_flip", "jitter", "none")
#: Padding of the "jitter" augmentation: random translation by up to ±2 pixels (Hinton's MNIST teacher).
JITTER_PAD = 2


def crop_batch(
    padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Per-image crops of ``size`` at (top, left) from a padded B×C×H'×W' batch, mirrored where ``flip``.

    Two ``torch.gather`` calls (rows, then columns; mirrored columns are gathered in reverse), no per-sample
    loop; ``top``/``left``/``flip`` are length-B tensors on any device.
    """
    height, width = size
    batch, channels, _, padded_width = padded.shape
    device = padded.device
    top, left, flip = top.to(device), left.to(device), flip.to(device)
    rows = top[:, None] + torch.arange(height, device=device)[None, :]  # B×H
    ascending = torch.arange(width, device=device)
    cols = left[:, None] + torch.where(flip[:, None], (width - 1) - ascending[None, :], ascending[None, :])  # B×W
    picked_rows = torch.gather(padded, 2, rows[:, None, :, None].expand(batch, channels, height, padded_width))
    return torch.gather(picked_rows, 3, cols[:, None, None, :].expand(batch, channels, height, width))


def apply_augmentation(
    batch_uint8: torch.Tensor, augmentation: str, generator: torch.Generator, pad: int = 4
) -> torch.Tensor:
    """Augment a B×C×H×W batch (any dtype, any device) with random draws from a CPU ``generator``.

    "crop_flip": zero-pad by ``pad``, random crop back to H×W (offsets uniform in 0..2·pad, as torchvision's
    RandomCrop(padding=pad)), horizontal flip with p=0.5. "jitter": zero-pad by JITTER_PAD=2 and random crop
    (translation by up to ±2 pixels), no flip. "none": the batch unchanged. Unknown names raise ValueError.
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation '{augmentation}' is unknown; allowed: {', '.join(AUGMENTATIONS)}")
    if augmentation == "none":
        return batch_uint8
    amount = pad if augmentation == "crop_flip" else JITTER_PAD
    if amount < 0:
        raise ValueError(f"pad={pad}: padding must be >= 0")
    count = batch_uint8.shape[0]
    top = torch.randint(0, 2 * amount + 1, (count,), generator=generator)
    left = torch.randint(0, 2 * amount + 1, (count,), generator=generator)
    if augmentation == "crop_flip":
        flip = torch.rand(count, generator=generator) < 0.5
    else:
        flip = torch.zeros(count, dtype=torch.bool)
    padded = F.pad(batch_uint8, (amount, amount, amount, amount)) if amount else batch_uint8
    return crop_batch(padded, top, left, flip, tuple(batch_uint8.shape[-2:]))
