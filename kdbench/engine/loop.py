"""One training epoch: forward student (and frozen teacher), method loss, SGD step; sums stay on the device."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from kdbench.data import ImageSet, iterate_batches
from kdbench.data.batches import training_batches
from kdbench.loss import DistillLoss, Progress
from kdbench.models import FeatureTaps


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the run stops as failed."""


@dataclass
class EpochResult:
    """Mean loss terms (plus 'total' and 'top1'), images seen and seconds of one training epoch."""

    terms: dict[str, float]
    images: int
    seconds: float


@dataclass
class TrainParts:
    """What the training step needs, assembled once per run."""

    student: nn.Module
    student_taps: FeatureTaps
    teacher: nn.Module | None
    teacher_taps: FeatureTaps | None
    loss: DistillLoss
    optimizer: torch.optim.Optimizer
    train_set: ImageSet
    batch_size: int
    augmentation: str
    views: str
    contrast_k: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    seed: int
    epochs: int
    autocast: contextlib.AbstractContextManager


def train_epoch(parts: TrainParts, epoch: int, max_steps: int | None = None) -> EpochResult:
    """Train one epoch (epochs count from 1), or its first ``max_steps`` steps (benchmarks).

    Raises NonFiniteLossError if any loss term is not finite.
    """
    parts.student.train()
    parts.loss.train()
    started = time.perf_counter()
    num_images = len(parts.train_set.targets)
    steps = training_batches(num_images, parts.batch_size)
    names: list[str] = []
    sums = torch.zeros(0, device=parts.device)  # per-term sums weighted by batch size, kept on the device
    correct = torch.zeros((), dtype=torch.long, device=parts.device)
    seen = 0
    batches = iterate_batches(parts.train_set, parts.batch_size, shuffle=True, seed=parts.seed, epoch=epoch,
                              augmentation=parts.augmentation, mean=parts.mean, std=parts.std, device=parts.device,
                              views=parts.views, contrast_k=parts.contrast_k)
    for step, batch in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        progress = Progress(epoch=epoch, epochs=parts.epochs, step=step, steps_per_epoch=steps)
        with parts.autocast:
            student_out = parts.student_taps(batch["input"])
            teacher_out = None
            if parts.teacher_taps is not None:
                with torch.no_grad():
                    teacher_out = parts.teacher_taps(batch["input"])
            terms = parts.loss(student_out, teacher_out, batch, progress)
        values = torch.stack([value.float() for value in terms.values()])
        total = values.sum()
        parts.optimizer.zero_grad(set_to_none=True)
        total.backward()
        parts.optimizer.step()
        size = batch["target"].shape[0]  # B images; multi-view inputs hold V·B rows, the plain view first
        if not names:
            names = [*terms, "total"]
            sums = torch.zeros(len(names), device=parts.device)
        sums += torch.cat([values.detach(), total.detach()[None]]) * size
        correct += (student_out["logits"][:size].detach().argmax(dim=1) == batch["target"]).sum()
        seen += size
    means = (sums / max(1, seen)).tolist()  # the epoch's one host-device sync for the loss terms
    values_by_name = dict(zip(names, means, strict=True))
    for name, value in values_by_name.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss term '{name}' is {value} in epoch {epoch}")
    values_by_name["top1"] = 100.0 * int(correct) / max(1, seen)
    return EpochResult(terms=values_by_name, images=seen, seconds=time.perf_counter() - started)
