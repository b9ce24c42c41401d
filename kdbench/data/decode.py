"""Per-image decoding and the ImageNet transforms: RandomResizedCrop + flip (training), Resize + CenterCrop (eval).

The random draws of an image come from a ``random.Random`` seeded by (seed, epoch, image index), never from a
global or per-worker RNG, so an epoch gives the same crops whatever the number of DataLoader workers, the rank
that loads the image, or a restart in between. The crop follows the standard RandomResizedCrop (Szegedy et al.
2015, as torchvision implements it): area fraction uniform in [0.08, 1], log aspect ratio uniform in
[log 3/4, log 4/3], ten tries, else the largest central crop with the ratio clamped to that range; then a
bilinear (antialiased, PIL) resize to size² and a horizontal flip with p=0.5. Evaluation: the shorter side
resized to ``round(size · 256/224)`` (256 at 224), then the central size² crop.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)
EVAL_RESIZE_RATIO = 256 / 224


def load_rgb(path: Path) -> Image.Image:
    """The image at ``path`` decoded to RGB; ValueError names the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot decode image: {error}") from None


def random_resized_box(width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height) of a RandomResizedCrop of a width×height image."""
    area = width * height
    log_low, log_high = math.log(RATIO[0]), math.log(RATIO[1])
    for _ in range(10):
        target_area = area * rng.uniform(*SCALE)
        ratio = math.exp(rng.uniform(log_low, log_high))
        crop_w = round(math.sqrt(target_area * ratio))
        crop_h = round(math.sqrt(target_area / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            return rng.randint(0, width - crop_w), rng.randint(0, height - crop_h), crop_w, crop_h
    ratio = width / height
    if ratio < RATIO[0]:
        crop_w, crop_h = width, round(width / RATIO[0])
    elif ratio > RATIO[1]:
        crop_w, crop_h = round(height * RATIO[1]), height
    else:
        crop_w, crop_h = width, height
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def to_chw_uint8(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image as a uint8 3×H×W tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def train_transform(image: Image.Image, size: int, rng: random.Random) -> torch.Tensor:
    """RandomResizedCrop(size) + horizontal flip (p=0.5) of ``image``: uint8 3×size×size."""
    left, top, crop_w, crop_h = random_resized_box(image.width, image.height, rng)
    out = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_chw_uint8(out)


def eval_transform(image: Image.Image, size: int) -> torch.Tensor:
    """Resize the shorter side to round(size·256/224), then the central size×size crop: uint8 3×size×size."""
    short = round(size * EVAL_RESIZE_RATIO)
    width, height = image.size
    if width <= height:
        new_w, new_h = short, max(short, int(short * height / width))
    else:
        new_w, new_h = max(short, int(short * width / height)), short
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    return to_chw_uint8(resized.crop((left, top, left + size, top + size)))
