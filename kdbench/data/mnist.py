"""MNIST from its four IDX files (raw or .gz), read by our own IDX parser."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch

from kdbench.data.sources import RawData, register_dataset, root_path
from kdbench.data.spec import DatasetSpec

#: The four IDX files by role; each may also be present gzip-compressed with a ``.gz`` suffix.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: Training images per digit in the official MNIST training set (60,000 in all; smallest: 5,421 fives).
MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)

# IDX type code -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, expected_ndim: int | None = None) -> torch.Tensor:
    """Parse one IDX file (raw, or gzip when it ends in .gz or starts with the gzip magic) into a tensor.

    Checks the magic number (two zero bytes, a known type code, the number of dimensions) and that the data
    size matches the header exactly; raises ValueError naming the file otherwise.
    """
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz" or data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, gzip.BadGzipFile) as exc:
            raise ValueError(f"{path}: not a complete gzip file ({exc}); the file is truncated or corrupt") from None
    if len(data) < 4:
        raise ValueError(f"{path}: {len(data)} bytes is too short for an IDX file (truncated?)")
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero0 or zero1 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path}: magic number 0x{magic:08x} is not an IDX header (wrong file?)")
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim} (wrong file?)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header of {header} bytes is truncated ({len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = math.prod(shape) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        problem = "truncated" if found < expected else "longer than its header says"
        raise ValueError(f"{path}: IDX data of shape {shape} needs {expected} bytes, found {found}: file is {problem}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def mnist_search_dirs(root: Path) -> list[Path]:
    """Folders searched for the IDX files, in order: root, root/MNIST/raw, root/raw."""
    return [root, root / "MNIST" / "raw", root / "raw"]


def find_mnist_files(root: Path) -> dict[str, Path] | None:
    """The four IDX files from the first search folder holding all of them (raw preferred over .gz), or None."""
    for folder in mnist_search_dirs(root):
        found = {}
        for role, base in MNIST_FILES.items():
            for candidate in (folder / base, folder / f"{base}.gz"):
                if candidate.is_file():
                    found[role] = candidate
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


def _missing_files(spec: DatasetSpec) -> str | None:
    if spec.root is None:
        return f"mnist needs a root folder holding {', '.join(MNIST_FILES.values())} (raw or .gz); none is set"
    root = root_path(spec)
    if find_mnist_files(root) is not None:
        return None
    folders = ", ".join(str(d) for d in mnist_search_dirs(root))
    return (
        f"root '{spec.root}' holds no complete MNIST: expected {', '.join(MNIST_FILES.values())} (raw or .gz) "
        f"in one of {folders} (or set download: true where there is internet)"
    )


def _train_counts(spec: DatasetSpec) -> list[int]:
    return list(MNIST_TRAIN_COUNTS)


@register_dataset(
    "mnist",
    train_class_counts=_train_counts,
    native_shape=(1, 28, 28),
    augmentation="none",
    missing_files=_missing_files,
)
def load_mnist(spec: DatasetSpec) -> RawData:
    """MNIST: 60,000 train / 10,000 test grey 28×28 digits, class names "0".."9".

    The four IDX files are looked for in root, root/MNIST/raw and root/raw (raw or .gz); with ``download: true``
    and no files, torchvision's MNIST downloader fetches them into root/MNIST/raw first.
    """
    root = root_path(spec)
    files = find_mnist_files(root)
    if files is None and spec.download:
        from torchvision.datasets import MNIST

        MNIST(str(root), train=True, download=True)
        files = find_mnist_files(root)
    if files is None:
        raise FileNotFoundError(f"dataset.root: {_missing_files(spec)}")
    parts = {role: read_idx(path, expected_ndim=3 if role.endswith("images") else 1) for role, path in files.items()}
    for split in ("train", "test"):
        images, labels = parts[f"{split}_images"], parts[f"{split}_labels"]
        if images.dtype != torch.uint8 or len(images) != len(labels):
            raise ValueError(
                f"MNIST {split}: {len(images)} images of type {images.dtype} vs {len(labels)} labels "
                f"({files[f'{split}_images']}, {files[f'{split}_labels']})"
            )
    return RawData(
        parts["train_images"].unsqueeze(1).contiguous(),
        parts["train_labels"].to(torch.int64),
        parts["test_images"].unsqueeze(1).contiguous(),
        parts["test_labels"].to(torch.int64),
        [str(c) for c in range(10)],
    )
