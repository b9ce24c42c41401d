"""The dataset registry: raw sources (images + labels as tensors) and the cheap facts validation needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from kdbench.data.files import FileImageSet
from kdbench.data.spec import DatasetSpec
from kdbench.registry import Registry


class RawData(NamedTuple):
    """A source's full train and test splits: uint8 N×C×H×W images, int64 targets, class names."""

    train_images: torch.Tensor
    train_targets: torch.Tensor
    test_images: torch.Tensor
    test_targets: torch.Tensor
    class_names: list[str]


Stats = tuple[tuple[float, ...], tuple[float, ...]]


class FileSplits(NamedTuple):
    """A file source's splits at one crop size: train, its own validation split (or None), test, class names."""

    train: FileImageSet
    val: FileImageSet | None
    test: FileImageSet
    class_names: list[str]


@dataclass(frozen=True)
class DatasetSource:
    """A registered dataset: its loader and the facts known without loading it."""

    name: str
    load: Callable[[DatasetSpec], RawData]
    train_class_counts: Callable[[DatasetSpec], list[int]]
    native_shape: tuple[int, int, int]
    augmentation: str
    published_stats: Stats | None = None
    missing_files: Callable[[DatasetSpec], str | None] | None = None
    load_files: Callable[[DatasetSpec, int], FileSplits] | None = None

    @property
    def streams(self) -> bool:
        """True for sources read from image files batch by batch (their files are checked when a run starts)."""
        return self.load_files is not None

    def num_classes(self, spec: DatasetSpec) -> int:
        """Number of classes of the source."""
        return len(self.train_class_counts(spec))


DATASETS: Registry[DatasetSource] = Registry("dataset")


def register_dataset(
    name: str,
    *,
    train_class_counts: Callable[[DatasetSpec], list[int]],
    native_shape: tuple[int, int, int],
    augmentation: str,
    published_stats: Stats | None = None,
    missing_files: Callable[[DatasetSpec], str | None] | None = None,
) -> Callable[[Callable[[DatasetSpec], RawData]], Callable[[DatasetSpec], RawData]]:
    """Decorator registering a loader ``fn(spec) -> RawData`` as dataset ``name`` with its facts.

    ``train_class_counts(spec)``: per-class training counts of the source (no loading; used for validation and
    n_max); ``native_shape``: (C, H, W) as loaded; ``augmentation``: the default training augmentation;
    ``published_stats``: (mean, std) to use instead of computed ones when the images keep their native shape;
    ``missing_files(spec)``: None when the files are present, else a one-line description of what is missing
    (None for sources that need no files).
    """

    def decorator(fn: Callable[[DatasetSpec], RawData]) -> Callable[[DatasetSpec], RawData]:
        source = DatasetSource(name, fn, train_class_counts, native_shape, augmentation, published_stats, missing_files)
        DATASETS.register(name)(source)
        return fn

    return decorator


def register_file_dataset(
    name: str,
    *,
    train_class_counts: Callable[[DatasetSpec], list[int]],
    missing_files: Callable[[DatasetSpec], str | None],
    published_stats: Stats,
) -> Callable[[Callable[[DatasetSpec, int], FileSplits]], Callable[[DatasetSpec, int], FileSplits]]:
    """Decorator registering ``fn(spec, image_size) -> FileSplits`` as the image-file dataset ``name``."""

    def decorator(fn: Callable[[DatasetSpec, int], FileSplits]) -> Callable[[DatasetSpec, int], FileSplits]:
        def not_in_memory(spec: DatasetSpec) -> RawData:
            raise TypeError(f"dataset '{name}' is read from files batch by batch; it has no in-memory form")

        source = DatasetSource(name, not_in_memory, train_class_counts, (3, 224, 224), "random_resized_crop_flip",
                               published_stats, missing_files, fn)
        DATASETS.register(name)(source)
        return fn

    return decorator


def dataset_names() -> list[str]:
    """Names of all registered datasets, sorted."""
    return DATASETS.names()


def get_source(name: str) -> DatasetSource:
    """The registered source ``name``; UnknownNameError (a KeyError) names the closest match."""
    return DATASETS.get(name)


def root_path(spec: DatasetSpec) -> Path:
    """``spec.root`` as an absolute path (``~`` expanded); ValueError when it is not set."""
    if spec.root is None:
        raise ValueError(f"dataset.root: dataset '{spec.name}' reads files and needs a root folder; none is set")
    return Path(spec.root).expanduser().resolve()
