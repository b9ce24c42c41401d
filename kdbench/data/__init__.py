"""Datasets for kdbench: sources (digits, mnist, cifar10, cifar100, synthetic), long-tailed subsets, batches."""

from kdbench.data import cifar, digits, imagenet, mnist, synthetic  # noqa: F401  (register the built-in datasets)
from kdbench.data.adapt import adapt_images, channel_stats
from kdbench.data.augment import AUGMENTATIONS, apply_augmentation
from kdbench.data.batches import SUPPORTED_BATCH_EXTRAS, iterate_batches
from kdbench.data.build import build_data, select_subsets
from kdbench.data.bundle import DataBundle, ImageSet
from kdbench.data.contrast import negatives_available, sample_contrast_indices, warn_if_too_many_negatives
from kdbench.data.files import FileImageSet
from kdbench.data.loaders import eval_batches, train_batches
from kdbench.data.longtail import PROFILES, long_tailed_counts
from kdbench.data.sources import DATASETS, DatasetSource, RawData, dataset_names, get_source, register_dataset
from kdbench.data.spec import DatasetSpec, LongTailSpec
from kdbench.data.validate import missing_data, validate_dataset_spec
from kdbench.data.views import VIEWS, make_views, register_view, view_copies

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "PROFILES",
    "SUPPORTED_BATCH_EXTRAS",
    "VIEWS",
    "DataBundle",
    "DatasetSource",
    "DatasetSpec",
    "FileImageSet",
    "ImageSet",
    "LongTailSpec",
    "RawData",
    "adapt_images",
    "apply_augmentation",
    "build_data",
    "channel_stats",
    "dataset_names",
    "eval_batches",
    "missing_data",
    "train_batches",
    "get_source",
    "iterate_batches",
    "make_views",
    "negatives_available",
    "register_view",
    "sample_contrast_indices",
    "view_copies",
    "warn_if_too_many_negatives",
    "long_tailed_counts",
    "register_dataset",
    "select_subsets",
    "validate_dataset_spec",
]
