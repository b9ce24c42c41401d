"""Assemble what the training step needs from a method, two networks, the data and a recipe."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from kdbench.config import Recipe
from kdbench.data import DataBundle, FileImageSet, ImageSet, train_batches, warn_if_too_many_negatives
from kdbench.engine.distributed import SINGLE, DistInfo
from kdbench.engine.environment import autocast_for
from kdbench.engine.loop import TrainParts
from kdbench.loss import METHODS, LossContext
from kdbench.models import FeatureTaps, tap_shapes


def assemble_training(*, method: str, params: dict[str, Any], student: nn.Module, teacher: nn.Module | None,
                      data: DataBundle, train_set: ImageSet | FileImageSet, recipe: Recipe, device: torch.device,
                      seed: int, dist: DistInfo = SINGLE, loader_workers: int = 0) -> TrainParts:
    """Build the method's loss from tap shapes (one dummy forward), its batches, the optimiser and autocast.

    ``loader_workers``: DataLoader processes decoding an image-file training set (in-memory sets need none).
    """
    method_cls = METHODS.get(method)
    needs = method_cls.needs_for(params)
    input_shape = train_set.shape
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
    augmentation = training_augmentation(recipe.augmentation, data.augmentation, train_set)
    batches = train_batches(train_set, recipe.batch_size, seed=seed, augmentation=augmentation, mean=data.mean,
                            std=data.std, device=device, views=needs.views, contrast_k=contrast_k,
                            shard=(dist.rank, dist.world_size), workers=loader_workers,
                            channels_last=recipe.channels_last)
    optimizer = torch.optim.SGD([*student.parameters(), *loss.parameters()], lr=recipe.effective_lr,
                                momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    autocast = autocast_for(recipe, device)
    return TrainParts(student=student, student_taps=FeatureTaps(student, needs.student_taps), teacher=teacher,
                      teacher_taps=FeatureTaps(teacher, needs.teacher_taps) if teacher is not None else None,
                      loss=loss, optimizer=optimizer, batches=batches, num_images=len(train_set),
                      batch_size=recipe.batch_size, device=device, epochs=recipe.epochs, autocast=autocast, dist=dist)


def training_augmentation(recipe_choice: str, dataset_default: str, train_set: ImageSet | FileImageSet) -> str:
    """The augmentation name for the batches: the recipe's choice, or the dataset's default.

    Image-file sets crop and flip each image as it is decoded: "default" keeps that, "none" trains on the
    evaluation crop; the batch-level CIFAR augmentations do not apply to them (ValueError names the field).
    """
    if isinstance(train_set, FileImageSet):
        if recipe_choice not in ("default", "none"):
            raise ValueError(f"recipe.augmentation = '{recipe_choice}': image-file datasets crop and flip as they "
                             "decode (RandomResizedCrop + flip); allowed: default, none")
        return "random_resized_crop_flip" if recipe_choice == "default" else "none"
    return dataset_default if recipe_choice == "default" else recipe_choice
