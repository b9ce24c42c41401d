"""Forward FLOPs per image of a model at an input size: the shipped table, else counted on the fly, else unknown.

``model_flops.csv`` (beside this file, written by ``benchmarks/model_flops.py``) holds the forward FLOPs of every
registered model at its default input for 10, 100 and 1000 classes; other class counts are interpolated
linearly (classes only change the last linear layer, so this is exact; tests check it on every row). Other
models (``timm:<name>``, plugin models, other input sizes, model kwargs) are counted once per (arch, kwargs,
channels, input size, classes) in this process on request (``count=True``): that builds the model and runs one
image on the CPU, and the first count imports the flop counter's dependencies (seconds).

FLOPs are torch.utils.flop_counter's: 2 per multiply-add of convolutions, matrix products and attention (the
math attention kernel, so that attention is counted); elementwise work (BatchNorm, activations) is not counted.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
from importlib import resources
from typing import Any

log = logging.getLogger("kdbench")

TABLE_NAME = "model_flops.csv"
TABLE_COLUMNS = ("arch", "in_channels", "input_size", "num_classes", "forward_flops")
TABLE_CLASSES = (10, 100, 1000)

FlopsKey = tuple[str, int, int, int]  # (arch, in_channels, input_size, num_classes)


def count_forward_flops(arch: str, num_classes: int, input_size: int, in_channels: int,
                        kwargs: dict[str, Any] | None = None) -> float:
    """Forward FLOPs of one image through ``build_model(arch, num_classes, **kwargs)`` (eval mode), counted."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from kdbench.models import build_model

    model = build_model(arch, num_classes, **(kwargs or {})).eval()
    image = torch.zeros(1, in_channels, input_size, input_size)
    # the math attention kernel is made of matrix products the counter sees; fused CPU kernels are not counted
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(image)
    return float(counter.get_total_flops())


@functools.lru_cache(maxsize=1)
def flops_table() -> dict[FlopsKey, float]:
    """The shipped table: (arch, in_channels, input_size, num_classes) → forward FLOPs per image."""
    text = resources.files("kdbench.estimate").joinpath(TABLE_NAME).read_text()
    rows = csv.DictReader(line for line in text.splitlines() if line and not line.startswith("#"))
    return {(row["arch"], int(row["in_channels"]), int(row["input_size"]), int(row["num_classes"])):
            float(row["forward_flops"]) for row in rows}


def table_flops(arch: str, in_channels: int, input_size: int, num_classes: int) -> float | None:
    """From the table: the row itself, or the line through the rows for 10 and 100 classes; None if absent."""
    table = flops_table()
    found = table.get((arch, in_channels, input_size, num_classes))
    if found is not None:
        return found
    low, high = (table.get((arch, in_channels, input_size, c)) for c in TABLE_CLASSES[:2])
    if low is None or high is None:
        return None
    per_class = (high - low) / (TABLE_CLASSES[1] - TABLE_CLASSES[0])
    return low + per_class * (num_classes - TABLE_CLASSES[0])


@functools.cache
def _counted(arch: str, kwargs_json: str, in_channels: int, input_size: int, num_classes: int) -> float | None:
    try:
        return count_forward_flops(arch, num_classes, input_size, in_channels, json.loads(kwargs_json))
    except Exception as error:  # a model that cannot be built or run here has no estimate
        log.debug("FLOPs of %s unknown: %s: %s", arch, type(error).__name__, error)
        return None


def forward_flops(arch: str, kwargs: dict[str, Any], in_channels: int, input_size: int, num_classes: int,
                  count: bool = True) -> float | None:
    """Forward FLOPs per image: from the table, else (``count``) counted once; None when neither gives it."""
    if not kwargs:
        found = table_flops(arch, in_channels, input_size, num_classes)
        if found is not None:
            return found
    if not count:
        return None
    return _counted(arch, json.dumps(kwargs, sort_keys=True, default=str), in_channels, input_size, num_classes)
