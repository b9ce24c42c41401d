"""CIFAR-10 and CIFAR-100 read from torchvision's on-disk pickles by our own (restricted) reader."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.data.sources import RawData, register_dataset, root_path
from kdbench.data.spec import DatasetSpec

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_META = "batches.meta"
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_META = "meta"

#: Published per-channel mean/std of the CIFAR training sets (images in [0, 1]).
#: CIFAR-100: the values of the KD references' loaders (transforms.Normalize in RepDistiller dataset/cifar100.py
#: and mdistiller mdistiller/dataset/cifar100.py), so inputs match the reference code; they differ by at most
#: 0.0002 per channel from the commonly published training-set statistics (0.5071, 0.4865, 0.4409) /
#: (0.2673, 0.2564, 0.2762). CIFAR-10: neither reference has a CIFAR-10 loader; training-set statistics.
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))

# The only globals a CIFAR pickle needs (numpy arrays, written by numpy 1.x or 2.x; bytes in protocol 2).
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that loads plain containers and numpy arrays only (no arbitrary code from a data folder)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a CIFAR pickle")


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR batch/meta pickle as a dict with str keys (latin1 decoding, as torchvision does)."""
    try:
        with open(path, "rb") as handle:
            entry = _ArrayOnlyUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR pickle ({exc})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a dict in a CIFAR pickle, found {type(entry).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_cifar_batches(paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 N×3×32×32) and int64 labels of the given batch files, concatenated in order."""
    images, labels = [], []
    for path in paths:
        entry = read_cifar_pickle(path)
        if "data" not in entry or label_key not in entry:
            raise ValueError(f"{path}: CIFAR batch lacks 'data' or '{label_key}' (keys: {sorted(entry)})")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(entry[label_key]):
            raise ValueError(
                f"{path}: expected N×3072 uint8 rows and N labels, found {data.shape} and {len(entry[label_key])}"
            )
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(np.asarray(entry[label_key]), dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


def _layout(name: str) -> tuple[str, list[str], list[str], str, str, str]:
    if name == "cifar10":
        return (
            CIFAR10_FOLDER,
            list(CIFAR10_TRAIN_FILES),
            list(CIFAR10_TEST_FILES),
            CIFAR10_META,
            "labels",
            "label_names",
        )
    return CIFAR100_FOLDER, ["train"], ["test"], CIFAR100_META, "fine_labels", "fine_label_names"


def _missing(spec: DatasetSpec) -> str | None:
    folder, train, test, meta, _, _ = _layout(spec.name)
    expected = ", ".join(train + test + [meta])
    if spec.root is None:
        return f"{spec.name} needs a root folder holding {folder}/ ({expected}); none is set"
    base = root_path(spec) / folder
    absent = [f for f in train + test + [meta] if not (base / f).is_file()]
    if not absent:
        return None
    return (
        f"root '{spec.root}' holds no complete {spec.name}: expected {base}/ with {expected}; missing: "
        f"{', '.join(absent)} (or set download: true where there is internet)"
    )


def _load(spec: DatasetSpec) -> RawData:
    folder, train, test, meta, label_key, names_key = _layout(spec.name)
    root = root_path(spec)
    base = root / folder
    if spec.download and _missing(spec) is not None:
        from torchvision.datasets import CIFAR10, CIFAR100

        (CIFAR10 if spec.name == "cifar10" else CIFAR100)(str(root), train=True, download=True)
    problem = _missing(spec)
    if problem is not None:
        raise FileNotFoundError(f"dataset.root: {problem}")
    train_images, train_targets = read_cifar_batches([base / f for f in train], label_key)
    test_images, test_targets = read_cifar_batches([base / f for f in test], label_key)
    meta_entry = read_cifar_pickle(base / meta)
    if names_key not in meta_entry:
        raise ValueError(f"{base / meta}: no '{names_key}' in the meta file (keys: {sorted(meta_entry)})")
    class_names = [str(n) for n in meta_entry[names_key]]
    for split, targets in (("train", train_targets), ("test", test_targets)):
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= len(class_names)):
            raise ValueError(f"{spec.name} {split}: labels outside 0..{len(class_names) - 1}")
    return RawData(train_images, train_targets, test_images, test_targets, class_names)


@register_dataset(
    "cifar10",
    train_class_counts=lambda spec: [5000] * 10,
    native_shape=(3, 32, 32),
    augmentation="crop_flip",
    published_stats=CIFAR10_STATS,
    missing_files=_missing,
)
def load_cifar10(spec: DatasetSpec) -> RawData:
    """CIFAR-10 from root/cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta): 50,000 / 10,000.

    With ``download: true`` and the folder incomplete, torchvision's CIFAR10(root, download=True) fetches it first.
    """
    return _load(spec)


@register_dataset(
    "cifar100",
    train_class_counts=lambda spec: [500] * 100,
    native_shape=(3, 32, 32),
    augmentation="crop_flip",
    published_stats=CIFAR100_STATS,
    missing_files=_missing,
)
def load_cifar100(spec: DatasetSpec) -> RawData:
    """CIFAR-100 from root/cifar-100-python (train, test, meta; fine labels): 50,000 / 10,000, 100 classes.

    With ``download: true`` and the folder incomplete, torchvision's CIFAR100(root, download=True) fetches it first.
    """
    return _load(spec)
