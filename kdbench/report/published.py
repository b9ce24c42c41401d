"""The published reference numbers shipped with kdbench, with their sources.

The architectures are named as kdbench names them: the ImageNet rows' ResNet-18/34/50 and MobileNet-V1 are
``resnet18``/``resnet34``/``resnet50`` and ``mobilenet_v1`` (the CIFAR zoo's ``ResNet50`` is another network).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

REFERENCE_COLUMNS = ["dataset", "teacher", "student", "method", "top1", "source", "protocol"]


@lru_cache(maxsize=1)
def published_numbers() -> pd.DataFrame:
    """Every published top-1 (%) row: dataset, teacher, student, method, top1, source, protocol."""
    folder = resources.files("kdbench.report") / "reference"
    frames = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".csv"):
            with entry.open("r") as handle:
                frames.append(pd.read_csv(handle)[REFERENCE_COLUMNS])
    return pd.concat(frames, ignore_index=True)
