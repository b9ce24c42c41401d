"""A deterministic CIFAR-shaped synthetic dataset, learnable by a small CNN in a few epochs (tests, install checks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.data.augment import crop_batch
from kdbench.data.sources import RawData, register_dataset
from kdbench.data.spec import DatasetSpec

#: Fixed seeds: prototypes, training images, test images (independent streams).
SYNTHETIC_SEED = 20_240_611
#: Prototype detail: a random 3×5×5 field upsampled (bilinear) to 32 + 2·SHIFT pixels.
PROTOTYPE_GRID = 5
#: Images are random 32×32 crops of the prototype: a shift of up to ±SHIFT pixels.
SHIFT = 3
#: Pixel value = 128 + CONTRAST · prototype (unit std) + NOISE · N(0, 1), rounded and clipped to 0..255.
CONTRAST = 50.0
NOISE = 40.0


def _train_counts(spec: DatasetSpec) -> list[int]:
    return [spec.synthetic_train_per_class] * spec.synthetic_classes


def synthetic_prototypes(num_classes: int) -> torch.Tensor:
    """Per-class low-frequency prototypes, float C×3×(32+2·SHIFT)², unit std each; class c's does not depend on C."""
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED)
    coarse = torch.randn(num_classes, 3, PROTOTYPE_GRID, PROTOTYPE_GRID, generator=generator)
    size = 32 + 2 * SHIFT
    fine = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=True)
    fine = fine - fine.mean(dim=(1, 2, 3), keepdim=True)
    return fine / fine.std(dim=(1, 2, 3), keepdim=True)


def synthetic_images(prototypes: torch.Tensor, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` noisy, randomly shifted copies of each prototype (grouped by class): uint8 images, targets."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = len(prototypes)
    targets = torch.arange(num_classes).repeat_interleave(per_class)
    count = len(targets)
    top = torch.randint(0, 2 * SHIFT + 1, (count,), generator=generator)
    left = torch.randint(0, 2 * SHIFT + 1, (count,), generator=generator)
    no_flip = torch.zeros(count, dtype=torch.bool)
    pattern = crop_batch(prototypes[targets], top, left, no_flip, (32, 32))
    noise = torch.randn(pattern.shape, generator=generator)
    values = 128.0 + CONTRAST * pattern + NOISE * noise
    return values.round().clamp(0, 255).to(torch.uint8), targets.to(torch.int64)


@register_dataset("synthetic", train_class_counts=_train_counts, native_shape=(3, 32, 32), augmentation="crop_flip")
def load_synthetic(spec: DatasetSpec) -> RawData:
    """CIFAR-shaped synthetic images (3×32×32 uint8), deterministic and learnable by a small CNN.

    ``spec.synthetic_classes`` classes, ``synthetic_train_per_class`` / ``synthetic_test_per_class`` images per
    class (grouped by class), class names "class_0", "class_1", ... Each class has a random low-frequency colour
    prototype; an image is the prototype shifted by up to ±3 pixels plus Gaussian pixel noise (sd 40 on 0..255),
    the default training augmentation is "crop_flip", and a 3-layer CNN reaches ~100% test accuracy within
    5 epochs (batch 64, SGD lr 0.05). Fixed internal seeds make it identical on every call; train and
    test images come from separate streams, so changing the training size leaves the test set unchanged.
    """
    prototypes = synthetic_prototypes(spec.synthetic_classes)
    train_images, train_targets = synthetic_images(prototypes, spec.synthetic_train_per_class, SYNTHETIC_SEED + 1)
    test_images, test_targets = synthetic_images(prototypes, spec.synthetic_test_per_class, SYNTHETIC_SEED + 2)
    names = [f"class_{c}" for c in range(spec.synthetic_classes)]
    return RawData(train_images, train_targets, test_images, test_targets, names)
