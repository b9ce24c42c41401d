"""Fit source images to a model's input once at load time (resize, channel count) and measure channel stats."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Images processed per chunk when resizing or measuring (bounds the float32 working memory).
CHUNK = 4096


def adapt_images(images: torch.Tensor, image_size: int, channels: int) -> torch.Tensor:
    """uint8 N×C×H×W images as uint8 N×channels×image_size×image_size.

    Channels: 1→3 replicates the grey channel, 3→1 averages the three (rounded); other changes raise ValueError.
    Size: bilinear resize with antialiasing (align_corners=False), rounded and clipped back to uint8, only when
    H or W differs from ``image_size`` (e.g. digits 8×8 → 28×28 or 32×32). Unchanged images are returned as is.
    """
    if image_size < 1:
        raise ValueError(f"image_size={image_size}: must be >= 1")
    native = images.shape[1]
    if channels != native and not (native == 1 and channels == 3) and not (native == 3 and channels == 1):
        raise ValueError(f"channels={channels}: images with {native} channel(s) can become 1 or 3 channels only")
    if channels < native:  # average first: less to resize
        images = _average_channels(images)
    if tuple(images.shape[-2:]) != (image_size, image_size):
        images = _resize(images, image_size)
    if channels > native:
        images = images.expand(-1, channels, -1, -1).contiguous()
    return images


def _average_channels(images: torch.Tensor) -> torch.Tensor:
    parts = [chunk.to(torch.float32).mean(dim=1, keepdim=True).round().to(torch.uint8) for chunk in images.split(CHUNK)]
    return torch.cat(parts) if parts else images[:, :1]


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    parts = []
    for chunk in images.split(CHUNK):
        resized = F.interpolate(
            chunk.to(torch.float32), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        parts.append(resized.round().clamp(0, 255).to(torch.uint8))
    if not parts:
        return images.new_zeros((0, images.shape[1], size, size))
    return torch.cat(parts)


def channel_stats(images: torch.Tensor, decimals: int = 4) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images scaled to [0, 1], rounded (a zero std becomes 1)."""
    if len(images) == 0:
        raise ValueError("cannot measure mean/std of an empty image set")
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for chunk in images.split(CHUNK):
        values = chunk.transpose(0, 1).reshape(channels, -1).to(torch.float32) / 255.0
        total += values.sum(dim=1, dtype=torch.float64)
        squares += (values * values).sum(dim=1, dtype=torch.float64)
    count = images.numel() / channels
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: normalise by 1, not by 0
    return tuple(round(float(m), decimals) for m in mean), tuple(round(float(s), decimals) for s in std)
