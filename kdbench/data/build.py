"""build_data: the one path from a DatasetSpec to the train/val/test tensors a run uses."""

from __future__ import annotations

import torch

from kdbench.data.adapt import adapt_images, channel_stats
from kdbench.data.bundle import DataBundle, ImageSet
from kdbench.data.longtail import long_tailed_counts, long_tailed_split, stratified_split
from kdbench.data.sources import RawData, get_source
from kdbench.data.spec import DatasetSpec
from kdbench.data.validate import validate_dataset_spec


def build_data(spec: DatasetSpec, image_size: int, channels: int) -> DataBundle:
    """Load ``spec``'s source, pick its training/validation subsets, and fit the images to the model's input.

    Subsets (all drawn from one local torch.Generator seeded with ``spec.subset_seed``; global RNGs untouched):
    long-tailed: n_max = the smallest per-class training count of the source (500 for CIFAR-100, 5000 for
    CIFAR-10), class c keeps ``long_tailed_counts(n_max, C, rho, profile)[c]`` images of a seeded per-class
    permutation, and the balanced validation set takes the next ``spec.val_per_class`` images of each class
    (disjoint from training; None when val_per_class is 0). Balanced: ``spec.val_fraction > 0`` holds out a
    seeded stratified slice (``floor(n_c * fraction + 0.5)`` per class) as validation, else ``val`` is None.
    The test set is always the source's full test split. Images: see adapt_images (resize to ``image_size``,
    1↔3 channels), applied once here. mean/std: the published constants for CIFAR when the images keep their
    native 3×32×32 shape, else measured on the final training images (4 decimals).
    """
    validate_dataset_spec(spec)
    source = get_source(spec.name)
    if source.load_files is not None:
        return build_file_data(spec, spec.image_size or image_size)
    raw = source.load(spec)
    num_classes = len(raw.class_names)
    _check_targets(spec.name, raw, num_classes)
    train_idx, val_idx = select_subsets(spec, raw.train_targets, num_classes)
    everything = val_idx is None and len(train_idx) == len(raw.train_targets)  # no copy of the full set
    train_images = raw.train_images if everything else raw.train_images[train_idx]
    train_targets = raw.train_targets if everything else raw.train_targets[train_idx]
    train = ImageSet(adapt_images(train_images, image_size, channels), train_targets)
    val = None
    if val_idx is not None:
        val = ImageSet(adapt_images(raw.train_images[val_idx], image_size, channels), raw.train_targets[val_idx])
    test = ImageSet(adapt_images(raw.test_images, image_size, channels), raw.test_targets)
    native = tuple(raw.train_images.shape[1:])
    if source.published_stats is not None and train.shape == native:
        mean, std = source.published_stats
    else:
        mean, std = channel_stats(train.images)
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        class_names=list(raw.class_names),
        class_counts=train.class_counts(num_classes),
        mean=tuple(mean),
        std=tuple(std),
        augmentation=source.augmentation,
        train_source_indices=train_idx,
        val_source_indices=val_idx,
    )


def build_file_data(spec: DatasetSpec, image_size: int) -> DataBundle:
    """build_data for an image-file source: the same subsets, picked on the file lists; nothing is decoded here.

    The source's own validation split (ImageNet-LT's val) is used as is; otherwise validation and long-tailed
    subsets come from ``select_subsets`` on the training labels, exactly as for in-memory sources.
    """
    source = get_source(spec.name)
    assert source.load_files is not None and source.published_stats is not None
    splits = source.load_files(spec, image_size)
    num_classes = len(splits.class_names)
    for split, files in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        if files is not None and len(files) and int(files.targets.max()) >= num_classes:
            raise ValueError(f"dataset '{spec.name}' {split}: a label is outside [0, {num_classes})")
    train_idx, val_idx = select_subsets(spec, splits.train.targets, num_classes)
    if splits.val is not None and val_idx is not None:
        raise ValueError(f"dataset '{spec.name}' has its own validation split; set val_fraction and val_per_class "
                         "to 0")
    train = splits.train if len(train_idx) == len(splits.train) else splits.train.subset(train_idx)
    val = splits.val if val_idx is None else splits.train.subset(val_idx)
    mean, std = source.published_stats
    return DataBundle(train=train, val=val, test=splits.test, num_classes=num_classes,
                      class_names=list(splits.class_names), class_counts=train.class_counts(num_classes),
                      mean=tuple(mean), std=tuple(std), augmentation="none", train_source_indices=train_idx,
                      val_source_indices=val_idx)


def select_subsets(
    spec: DatasetSpec, train_targets: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(training indices, validation indices or None) into the source training split, as build_data picks them."""
    generator = torch.Generator().manual_seed(spec.subset_seed)
    if spec.long_tail is not None:
        source_counts = torch.bincount(train_targets, minlength=num_classes).tolist()
        n_max = min(source_counts)
        counts = long_tailed_counts(n_max, num_classes, spec.long_tail.imbalance_ratio, spec.long_tail.profile)
        train_idx, val_idx = long_tailed_split(train_targets, counts, spec.val_per_class, generator)
        return train_idx, (val_idx if spec.val_per_class > 0 else None)
    if spec.val_fraction > 0:
        return stratified_split(train_targets, num_classes, spec.val_fraction, generator)
    return torch.arange(len(train_targets), dtype=torch.int64), None


def _check_targets(name: str, raw: RawData, num_classes: int) -> None:
    for split, images, targets in (
        ("train", raw.train_images, raw.train_targets),
        ("test", raw.test_images, raw.test_targets),
    ):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(targets):
            raise ValueError(f"dataset '{name}' {split}: expected uint8 N×C×H×W images with N targets")
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
            raise ValueError(f"dataset '{name}' {split}: targets outside 0..{num_classes - 1}")
