"""Assemble what the training step needs from a method, two networks, the data and a recipe."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from kdbench.config import Recipe
from kdbench.data import DataBundle, ImageSet, warn_if_too_many_negatives
from kdbench.engine.distributed import SINGLE, DistInfo
from kdbench.engine.loop import TrainParts
from kdbench.loss import METHODS, LossContext
from kdbench.models import FeatureTaps, tap_shapes


def assemble_training(*, method: str, params: dict[str, Any], student: nn.Module, teacher: nn.Module | None,
                      data: DataBundle, train_set: ImageSet, recipe: Recipe, device: torch.device,
                      seed: int, dist: DistInfo = SINGLE) -> TrainParts:
    """Build the method's loss from tap shapes (one dummy forward), its batch extras, the optimiser and autocast."""
    method_cls = METHODS.get(method)
    needs = method_cls.needs_for(params)
    input_shape = tuple(train_set.images.shape[1:])
    ctx = LossContext(
        num_classes=data.num_classes,
        student_shapes=tap_shapes(student, needs.student_taps, input_shape),
        teacher_shapes=tap_shapes(teacher, needs.teacher_taps, input_shape) if teacher is not None else {},
        num_samples=len(train_set.targets), class_counts=tuple(data.class_counts), epochs=recipe.epochs,
    )
    loss = method_cls(ctx, **params).to(device)
    contrast_k = None
    if "contrast_index" in needs.batch_extras:
        if loss.contrast_k is None:
            raise ValueError(f"method '{method}' needs contrast indices but sets no contrast_k")
        contrast_k = loss.contrast_k
        warn_if_too_many_negatives(contrast_k, train_set.targets, data.num_classes)
    optimizer = torch.optim.SGD([*student.parameters(), *loss.parameters()], lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if recipe.precision == "bf16"
                else contextlib.nullcontext())
    return TrainParts(student=student, student_taps=FeatureTaps(student, needs.student_taps), teacher=teacher,
                      teacher_taps=FeatureTaps(teacher, needs.teacher_taps) if teacher is not None else None,
                      loss=loss, optimizer=optimizer, train_set=train_set, batch_size=recipe.batch_size,
                      augmentation=data.augmentation if recipe.augmentation == "default" else recipe.augmentation,
                      views=needs.views, contrast_k=contrast_k, mean=data.mean, std=data.std, device=device,
                      seed=seed, epochs=recipe.epochs, autocast=autocast, dist=dist)
