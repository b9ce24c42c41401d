"""Checkpoints and weight files: atomic writes, the last two checkpoints kept, safe (weights-only) loading."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from kdbench.filehash import file_sha256 as file_sha256  # re-exported: run.py and tests import it from here
from kdbench.tracking.atomic import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
CHECKPOINT_NAMES = (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME)  # newest first
MODEL_NAME = "model.pt"


class CorruptCheckpointError(RuntimeError):
    """A checkpoint could not be loaded or applied (truncated, not kdbench's, not weights-only)."""


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save ``obj`` to ``path`` through a temporary file and a rename.

    The object is serialised in memory first, so that a full disk raises ENOSPC on the write of the file
    (torch's zip writer would report it as 'unexpected pos ...').
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def load_weights_only(path: str | Path) -> Any:
    """torch.load on CPU with ``weights_only=True``: tensors and plain containers only, never arbitrary code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(payload: dict[str, Any], run_dir: Path) -> None:
    """Write ``payload`` as the newest checkpoint; the one before it is kept as the previous checkpoint."""
    current = run_dir / CHECKPOINT_NAME
    if current.is_file():
        os.replace(current, run_dir / PREVIOUS_CHECKPOINT_NAME)
    save_atomic(payload, current)


def checkpoint_files(run_dir: Path) -> list[Path]:
    """The checkpoints present in ``run_dir``, newest first."""
    return [run_dir / name for name in CHECKPOINT_NAMES if (run_dir / name).is_file()]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (on CPU); CorruptCheckpointError when it cannot be read."""
    try:
        payload = load_weights_only(path)
    except Exception as error:  # truncated zip, a pickle that is not weights-only, a foreign file
        raise CorruptCheckpointError(f"{type(error).__name__}: {error}") from error
    if not isinstance(payload, dict) or "state" not in payload:
        raise CorruptCheckpointError("not a kdbench checkpoint")
    return payload


def remove_checkpoints(run_dir: Path) -> None:
    """Delete every checkpoint of a finished run (its weights are in model.pt)."""
    for name in CHECKPOINT_NAMES:
        (run_dir / name).unlink(missing_ok=True)
