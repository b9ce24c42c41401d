"""Atomic checkpoints and weight files with their sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from kdbench.tracking.atomic import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save ``obj`` to ``path`` through a temporary file and a rename."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (loaded on CPU), or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    # weights_only=False: the checkpoint holds RNG states (NumPy tuples) written by kdbench itself
    return torch.load(path, map_location="cpu", weights_only=False)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
