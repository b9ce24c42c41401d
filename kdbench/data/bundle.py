"""The data containers a run trains on: ImageSet (uint8 images + labels) and DataBundle (the splits + facts)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images (uint8 N×C×H×W, values 0..255) and their int64 targets (N), on one device."""

    images: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSet.images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.targets.dtype != torch.int64 or self.targets.dim() != 1 or len(self.targets) != len(self.images):
            raise ValueError(
                f"ImageSet.targets must be int64 of length {len(self.images)}, got {self.targets.dtype} "
                f"{tuple(self.targets.shape)}"
            )

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        """Device the images live on."""
        return self.images.device

    def to(self, device: torch.device | str) -> ImageSet:
        """A new ImageSet with images and targets on ``device`` (self when already there)."""
        device = torch.device(device)
        if self.images.device == device and self.targets.device == device:
            return self
        return ImageSet(self.images.to(device), self.targets.to(device))

    def subset(self, indices: torch.Tensor) -> ImageSet:
        """A new ImageSet with the images at ``indices`` (positions into this set)."""
        indices = indices.to(self.images.device)
        return ImageSet(self.images[indices], self.targets[indices])

    def class_counts(self, num_classes: int) -> list[int]:
        """Number of images of each class 0..num_classes-1."""
        return torch.bincount(self.targets.cpu(), minlength=num_classes).tolist()


@dataclass(frozen=True, eq=False)
class DataBundle:
    """Everything build_data produces for a run.

    ``train``/``val``/``test``: ImageSets after adaptation to the model's input (``val`` is None without a
    validation set); ``class_counts``: training images per class after any long-tail subsampling and validation
    hold-out; ``mean``/``std``: per-channel statistics of images in [0, 1] (published constants for CIFAR at its
    native shape, else computed on the final training set, rounded to 4 decimals); ``augmentation``: the
    dataset's default training augmentation ("crop_flip" for cifar10/cifar100/synthetic, "none" for
    mnist/digits); ``train_source_indices``/``val_source_indices``: positions of the kept training/validation
    images in the source's training split (int64, ascending, CPU), for provenance.
    """

    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    num_classes: int
    class_names: list[str]
    class_counts: list[int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str
    train_source_indices: torch.Tensor
    val_source_indices: torch.Tensor | None = None

    @property
    def num_samples(self) -> int:
        """Number of training images (the dataset size methods with memory banks need)."""
        return len(self.train)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the model's input."""
        return self.train.shape

    def to(self, device: torch.device | str) -> DataBundle:
        """A new DataBundle whose ImageSets live on ``device`` (index tensors stay on the CPU)."""
        val = None if self.val is None else self.val.to(device)
        return replace(self, train=self.train.to(device), val=val, test=self.test.to(device))
