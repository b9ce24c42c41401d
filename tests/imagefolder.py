"""A tiny ImageNet-shaped folder written by the tests: JPEGs of a few classes and ImageNet-LT-style split files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: Class folder names (wnid-like) of the tiny data set.
CLASSES = ("n00000001", "n00000002", "n00000003", "n00000004")
#: Training images per class of the long-tailed split (max 12, min 3), and of the balanced train/ folder.
LT_TRAIN_COUNTS = (12, 7, 4, 3)
TRAIN_PER_CLASS = 12
VAL_PER_CLASS = 2  # the LT split's balanced validation images, drawn from train/ as ImageNet-LT's are
TEST_PER_CLASS = 3


def _image(rng: np.random.Generator, label: int) -> Image.Image:
    """A JPEG-able RGB image whose class is visible: a class colour plus noise, of varying size."""
    height, width = int(rng.integers(28, 44)), int(rng.integers(28, 44))
    colour = np.array([(label * 70) % 256, (255 - label * 50) % 256, (label * 120 + 40) % 256], dtype=np.float64)
    pixels = colour + rng.normal(0, 40, size=(height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_image_folder(root: Path, seed: int = 0) -> Path:
    """root/train/<class>/*.JPEG (TRAIN_PER_CLASS + VAL_PER_CLASS each) and root/val/<class>/*.JPEG; returns root."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", TRAIN_PER_CLASS + VAL_PER_CLASS), ("val", TEST_PER_CLASS)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                _image(rng, label).save(folder / f"{name}_{split}_{k}.JPEG", quality=90)
    return root


def write_lt_splits(root: Path, split_dir: Path) -> Path:
    """ImageNet_LT_{train,val,test}.txt over ``root`` (see write_image_folder): long-tailed train, balanced val/test."""
    split_dir.mkdir(parents=True, exist_ok=True)
    train, val, test = [], [], []
    for label, name in enumerate(CLASSES):
        images = [f"train/{name}/{name}_train_{k}.JPEG" for k in range(TRAIN_PER_CLASS + VAL_PER_CLASS)]
        train += [f"{path} {label}" for path in images[:LT_TRAIN_COUNTS[label]]]
        val += [f"{path} {label}" for path in images[TRAIN_PER_CLASS:]]
        test += [f"val/{name}/{name}_val_{k}.JPEG {label}" for k in range(TEST_PER_CLASS)]
    for split, lines in (("train", train), ("val", val), ("test", test)):
        (split_dir / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines) + "\n")
    return split_dir
