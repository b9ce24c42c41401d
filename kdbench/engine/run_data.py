"""The data a run trains and evaluates on: its DataBundle and its evaluation batches."""

from __future__ import annotations

import torch

from kdbench.config import Recipe
from kdbench.data import DataBundle, build_data, eval_batches
from kdbench.data.loaders import EvalBatches
from kdbench.engine.distributed import DistInfo
from kdbench.models import model_info
from kdbench.runspec import RunSpec


def build_run_data(spec: RunSpec) -> DataBundle:
    """The run's data at its model's input size (or the dataset's image_size)."""
    info = model_info(spec.arch, **spec.arch_kwargs)
    return build_data(spec.dataset, spec.dataset.image_size or info.input_size, info.in_channels)


def run_eval_batches(data: DataBundle, recipe: Recipe, device: torch.device, ranks: DistInfo,
                     workers: int) -> tuple[EvalBatches, EvalBatches | None]:
    """(test batches, validation batches or None) of this process's evaluation shard."""
    args = dict(mean=data.mean, std=data.std, device=device, shard=(ranks.rank, ranks.world_size), workers=workers,
                channels_last=recipe.channels_last)
    test = eval_batches(data.test.to(device), recipe.eval_batch_size, **args)
    val = eval_batches(data.val.to(device), recipe.eval_batch_size, **args) if data.val is not None else None
    return test, val
