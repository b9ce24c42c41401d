"""Image-file datasets: imagenet (ImageFolder train/ and val/), imagenet_lt (the OLTR split files), image_folder.

* ``imagenet``: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (the usual ImageFolder layout of
  ILSVRC-2012; val is the test set). A validation set, when wanted, is a seeded stratified slice of train
  (``val_fraction``), as for CIFAR.
* ``imagenet_lt``: Liu et al. 2019's ``ImageNet_LT_train.txt`` / ``_val.txt`` / ``_test.txt`` in ``split_dir``
  (default: ``root``), lines "relative/path label" relative to ``root`` (the ImageNet root above). train is
  the long-tailed training set, val its balanced validation set (20 per class, from ImageNet train), test the
  ImageNet val images. Loading prints images, classes, max and min per class.
* ``image_folder``: any ``root/train/<class>/...`` with ``root/test/`` (or ``root/val/``) beside it; long-tail
  subsampling and validation slices work as for CIFAR.

All three: RGB, ImageNet mean/std, RandomResizedCrop + flip for training and Resize + CenterCrop for evaluation
at ``image_size`` (default: the model's input size, 224 for the ImageNet models).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from kdbench.data.files import FileImageSet, read_split_file, scan_image_folder
from kdbench.data.sources import FileSplits, register_file_dataset, root_path
from kdbench.data.spec import DatasetSpec

log = logging.getLogger("kdbench")

#: Per-channel mean/std of ImageNet's training images in [0, 1] (the constants every ImageNet recipe uses).
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LT_SPLITS = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
TEST_FOLDERS = ("test", "val")


def _split_dir(spec: DatasetSpec) -> Path:
    return Path(spec.split_dir).expanduser().resolve() if spec.split_dir else root_path(spec)


@functools.lru_cache(maxsize=16)
def _folder_counts(folder: Path) -> tuple[int, ...]:
    _, targets, classes = scan_image_folder(folder)
    return tuple(torch.bincount(targets, minlength=len(classes)).tolist())


@functools.lru_cache(maxsize=16)
def _split_counts(split_file: Path) -> tuple[int, ...]:
    _, targets = read_split_file(split_file, split_file.parent, check_files=False)
    return tuple(torch.bincount(targets).tolist())


def _missing_folder(spec: DatasetSpec, *subfolders: tuple[str, ...]) -> str | None:
    if spec.root is None:
        return f"dataset '{spec.name}' reads image files and needs a root folder; none is set"
    root = root_path(spec)
    if not root.is_dir():
        return f"{root} (dataset '{spec.name}') does not exist"
    for options in subfolders:
        if not any((root / name).is_dir() for name in options):
            wanted = " or ".join(f"{root / name}/" for name in options)
            return f"{wanted} does not exist (dataset '{spec.name}' expects <root>/{options[0]}/<class>/<image>)"
    return None


def _test_folder(root: Path) -> Path:
    return next((root / name for name in TEST_FOLDERS if (root / name).is_dir()), root / TEST_FOLDERS[0])


def _folder_splits(spec: DatasetSpec, image_size: int, test_folders: tuple[str, ...]) -> FileSplits:
    root = root_path(spec)
    paths, targets, classes = scan_image_folder(root / "train")
    test_root = next(root / name for name in test_folders if (root / name).is_dir())
    test_paths, test_targets, test_classes = scan_image_folder(test_root)
    missing = sorted(set(test_classes) - set(classes))
    if missing:
        raise ValueError(f"{test_root}: class folder '{missing[0]}' has no counterpart in {root / 'train'}")
    remap = torch.tensor([classes.index(name) for name in test_classes])
    return FileSplits(FileImageSet(root / "train", paths, targets, image_size), None,
                      FileImageSet(test_root, test_paths, remap[test_targets], image_size), classes)


def _imagenet_missing(spec: DatasetSpec) -> str | None:
    return _missing_folder(spec, ("train",), ("val",))


@register_file_dataset("imagenet", train_class_counts=lambda spec: list(_folder_counts(root_path(spec) / "train")),
                       missing_files=_imagenet_missing, published_stats=IMAGENET_STATS)
def load_imagenet(spec: DatasetSpec, image_size: int) -> FileSplits:
    """ILSVRC-2012 from an ImageFolder root: train/ for training, val/ as the test set."""
    return _folder_splits(spec, image_size, ("val",))


def _image_folder_missing(spec: DatasetSpec) -> str | None:
    return _missing_folder(spec, ("train",), TEST_FOLDERS)


@register_file_dataset("image_folder",
                       train_class_counts=lambda spec: list(_folder_counts(root_path(spec) / "train")),
                       missing_files=_image_folder_missing, published_stats=IMAGENET_STATS)
def load_image_folder(spec: DatasetSpec, image_size: int) -> FileSplits:
    """Any ImageFolder data set: root/train/ and root/test/ (or root/val/) with one folder per class."""
    return _folder_splits(spec, image_size, TEST_FOLDERS)


def _lt_missing(spec: DatasetSpec) -> str | None:
    if spec.root is None:
        return "dataset 'imagenet_lt' reads image files and needs a root folder (the ImageNet root); none is set"
    if not root_path(spec).is_dir():
        return f"{root_path(spec)} (dataset 'imagenet_lt') does not exist"
    split_dir = _split_dir(spec)
    for name in LT_SPLITS.values():
        if not (split_dir / name).is_file():
            return f"{split_dir / name} does not exist (set dataset.split_dir to the folder of the ImageNet-LT files)"
    return None


@register_file_dataset("imagenet_lt",
                       train_class_counts=lambda spec: list(_split_counts(_split_dir(spec) / LT_SPLITS["train"])),
                       missing_files=_lt_missing, published_stats=IMAGENET_STATS)
def load_imagenet_lt(spec: DatasetSpec, image_size: int) -> FileSplits:
    """ImageNet-LT from its split files; every listed file is checked to exist (an error names the line)."""
    root, split_dir = root_path(spec), _split_dir(spec)
    train_paths, train_targets = read_split_file(split_dir / LT_SPLITS["train"], root)
    num_classes = int(train_targets.max()) + 1
    counts = torch.bincount(train_targets, minlength=num_classes)
    if int(counts.min()) == 0:
        raise ValueError(f"{split_dir / LT_SPLITS['train']}: class {int(counts.argmin())} has no training image")
    log.info("imagenet_lt: %d training images, %d classes, %d to %d per class", len(train_targets), num_classes,
             int(counts.max()), int(counts.min()))
    sets = {"train": FileImageSet(root, train_paths, train_targets, image_size)}
    for split in ("val", "test"):
        paths, targets = read_split_file(split_dir / LT_SPLITS[split], root, num_classes)
        sets[split] = FileImageSet(root, paths, targets, image_size)
    folder = root / "train"
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    class_names = names if len(names) == num_classes else [str(c) for c in range(num_classes)]
    return FileSplits(sets["train"], sets["val"], sets["test"], class_names)
