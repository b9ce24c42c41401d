"""How many images a run trains and evaluates on per epoch, from its dataset spec alone (no data is read)."""

from __future__ import annotations

import functools
from typing import NamedTuple

from kdbench.data.digits import DIGITS_CLASS_COUNTS, DIGITS_TEST_FRACTION
from kdbench.data.longtail import held_out_size, long_tailed_counts
from kdbench.data.sources import get_source
from kdbench.data.spec import DatasetSpec

#: Test-split sizes of the in-memory sources whose test split is fixed.
TEST_IMAGES = {"mnist": 10_000, "cifar10": 10_000, "cifar100": 10_000,
               "digits": sum(held_out_size(n, DIGITS_TEST_FRACTION) for n in DIGITS_CLASS_COUNTS)}
#: ILSVRC-2012: 1,281,167 training images in 1,000 classes, the 50,000 val images as test set.
IMAGENET_TRAIN, IMAGENET_TEST, IMAGENET_CLASSES = 1_281_167, 50_000, 1000
#: ImageNet-LT (Liu et al. 2019): 115,846 training images, 20 validation images per class, ImageNet val as test.
IMAGENET_LT_TRAIN, IMAGENET_LT_VAL = 115_846, 20_000


class DatasetSizes(NamedTuple):
    """Training images, evaluation images per epoch (test + validation) and classes of a dataset spec."""

    train: int
    evaluated: int
    num_classes: int


@functools.lru_cache(maxsize=256)
def dataset_sizes(spec: DatasetSpec) -> DatasetSizes | None:
    """The spec's per-epoch image counts, or None where they cannot be known without its files.

    Known: digits, mnist, cifar10, cifar100 and synthetic (balanced, long-tailed, or with a validation slice),
    imagenet (balanced; ``val_fraction`` held out approximately) and imagenet_lt. Unknown: image_folder and
    datasets registered by plugins.
    """
    if spec.name == "imagenet_lt":
        return DatasetSizes(IMAGENET_LT_TRAIN, IMAGENET_TEST + IMAGENET_LT_VAL, IMAGENET_CLASSES)
    if spec.name == "imagenet":
        if spec.long_tail is not None:
            return None  # its long tail depends on the per-class counts of the folder
        val = round(IMAGENET_TRAIN * spec.val_fraction)
        return DatasetSizes(IMAGENET_TRAIN - val, IMAGENET_TEST + val, IMAGENET_CLASSES)
    if spec.name == "synthetic":
        test = spec.synthetic_classes * spec.synthetic_test_per_class
    elif spec.name in TEST_IMAGES:
        test = TEST_IMAGES[spec.name]
    else:
        return None
    counts = get_source(spec.name).train_class_counts(spec)
    if spec.long_tail is not None:
        kept = long_tailed_counts(min(counts), len(counts), spec.long_tail.imbalance_ratio, spec.long_tail.profile)
        val = sum(min(spec.val_per_class, n - k) for n, k in zip(counts, kept, strict=True))
        return DatasetSizes(sum(kept), test + val, len(counts))
    val = sum(held_out_size(n, spec.val_fraction) for n in counts) if spec.val_fraction > 0 else 0
    return DatasetSizes(sum(counts) - val, test + val, len(counts))
