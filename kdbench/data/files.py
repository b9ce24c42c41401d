"""Image files on disk: FileImageSet (paths + labels, decoded per batch) and the readers that list them.

Two ways to list a split: an ImageFolder tree (``root/<class>/<image>``, classes in sorted folder order, as
torchvision's ImageFolder) and a split file of "relative/path label" lines (the ImageNet-LT files of Liu et al.
2019). Paths are kept as one numpy byte-string array, not a Python list: DataLoader workers are forked, and
touching a million Python strings there copies every page they live on (the "memory grows with workers"
problem); a numpy array has no per-item reference count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: File extensions an ImageFolder scan accepts (case-insensitive), as torchvision's IMG_EXTENSIONS.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True, eq=False)
class FileImageSet:
    """Images as files under ``root`` (relative paths, byte strings) with int64 targets; decoded when batched.

    ``image_size`` is the side of the square crop the model sees. The set never moves to a device: its batches
    do (``to`` returns it unchanged, so code written for in-memory ImageSets works unchanged).
    """

    root: Path
    paths: np.ndarray
    targets: torch.Tensor
    image_size: int

    def __post_init__(self) -> None:
        if self.targets.dtype != torch.int64 or self.targets.dim() != 1 or len(self.targets) != len(self.paths):
            raise ValueError(f"FileImageSet.targets must be int64 of length {len(self.paths)}, got "
                             f"{self.targets.dtype} {tuple(self.targets.shape)}")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one decoded image: RGB at image_size²."""
        return (3, self.image_size, self.image_size)

    @property
    def device(self) -> torch.device:
        """Files live on the host; batches are moved to the training device."""
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> FileImageSet:
        """Itself: the files stay where they are."""
        return self

    def subset(self, indices: torch.Tensor) -> FileImageSet:
        """A new FileImageSet with the images at ``indices`` (positions into this set)."""
        picked = indices.cpu().numpy()
        return FileImageSet(self.root, self.paths[picked], self.targets[indices.cpu()], self.image_size)

    def class_counts(self, num_classes: int) -> list[int]:
        """Number of images of each class 0..num_classes-1."""
        return torch.bincount(self.targets, minlength=num_classes).tolist()

    def path(self, index: int) -> Path:
        """The absolute path of image ``index``."""
        return self.root / self.paths[index].decode()


def scan_image_folder(folder: Path) -> tuple[np.ndarray, torch.Tensor, list[str]]:
    """(relative paths, targets, class names) of an ImageFolder tree; classes are its sorted sub-folders.

    Raises ValueError naming the folder when it is missing, has no class folders, or a class has no image.
    """
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    paths: list[str] = []
    targets: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(_images_below(folder / name))
        if not found:
            raise ValueError(f"{folder / name}: class '{name}' has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(f"{name}/{relative}" for relative in found)
        targets.extend([label] * len(found))
    return np.array(paths, dtype=np.bytes_), torch.tensor(targets, dtype=torch.int64), classes


def _images_below(folder: Path, prefix: str = "") -> list[str]:
    found = []
    for entry in os.scandir(folder):
        if entry.is_dir():
            found.extend(_images_below(Path(entry.path), f"{prefix}{entry.name}/"))
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            found.append(prefix + entry.name)
    return found


def read_split_file(split_file: Path, root: Path, num_classes: int | None = None,
                    check_files: bool = True) -> tuple[np.ndarray, torch.Tensor]:
    """(relative paths, targets) of a split file of "relative/path label" lines (blank lines ignored).

    ValueError names the file and line for a line that is not "path label", a label outside
    [0, num_classes) (when given) and, with ``check_files``, a path that does not exist under ``root``.
    """
    try:
        lines = split_file.read_text().splitlines()
    except OSError as error:
        raise ValueError(f"{split_file}: cannot read split file: {error.strerror or error}") from None
    paths: list[str] = []
    targets: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{split_file}:{number}: '{line.strip()}' is not a 'relative/path label' line")
        path, label = parts[0].strip(), int(parts[1])
        if label < 0 or (num_classes is not None and label >= num_classes):
            allowed = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise ValueError(f"{split_file}:{number}: label {label} is outside {allowed}")
        if check_files and not (root / path).is_file():
            raise ValueError(f"{split_file}:{number}: image {path} does not exist under {root}")
        paths.append(path)
        targets.append(label)
    if not paths:
        raise ValueError(f"{split_file}: the split file lists no images")
    return np.array(paths, dtype=np.bytes_), torch.tensor(targets, dtype=torch.int64)
