"""One training epoch: forward student (and frozen teacher), method loss, SGD step; sums stay on the device."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from kdbench.data.batches import training_batches
from kdbench.data.loaders import TrainBatches
from kdbench.engine.cpu_memory import keep_freed_memory
from kdbench.engine.distributed import SINGLE, DistInfo, all_reduce_sum, average_batchnorm_statistics, average_gradients
from kdbench.faults import failpoint
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
    batches: TrainBatches  # batches(epoch): this process's training batches of the epoch
    num_images: int
    batch_size: int
    device: torch.device
    epochs: int
    autocast: contextlib.AbstractContextManager
    dist: DistInfo = SINGLE


def train_epoch(parts: TrainParts, epoch: int, max_steps: int | None = None) -> EpochResult:
    """Train one epoch (epochs count from 1), or its first ``max_steps`` steps (benchmarks).

    Raises NonFiniteLossError if any loss term is not finite.

    With several processes (``parts.dist``) each trains on its shard of every global batch; its loss is scaled
    by shard size × world size / global batch size before backward, so that the averaged gradient is that of
    the global batch's mean loss; gradients are averaged before every step, BatchNorm statistics at the end of
    the epoch, and the logged terms, accuracy and image count are those of the global batches (on every rank).
    On a CPU, steps reuse the memory freed by the step before (``keep_freed_memory``).
    """
    with keep_freed_memory(parts.device):
        return _train_steps(parts, epoch, max_steps)


def _train_steps(parts: TrainParts, epoch: int, max_steps: int | None) -> EpochResult:
    parts.student.train()
    parts.loss.train()
    started = time.perf_counter()
    num_images = parts.num_images
    world = parts.dist.world_size
    steps = training_batches(num_images, parts.batch_size, world)
    trainable = ([p for p in [*parts.student.parameters(), *parts.loss.parameters()] if p.requires_grad]
                 if world > 1 else [])
    names: list[str] = []
    sums = torch.zeros(0, device=parts.device)  # per-term sums weighted by batch size, kept on the device
    correct = torch.zeros((), dtype=torch.long, device=parts.device)
    seen = 0
    for step, batch in enumerate(parts.batches(epoch)):
        if max_steps is not None and step >= max_steps:
            break
        if step == steps // 2:
            failpoint(f"mid-epoch:{epoch}")  # tests: a kill in the middle of epoch N
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
        size = batch["target"].shape[0]  # B images; multi-view inputs hold V·B rows, the plain view first
        parts.optimizer.zero_grad(set_to_none=True)
        if world > 1:
            global_size = min(parts.batch_size, num_images - step * parts.batch_size)
            (total * (size * world / global_size)).backward()
            average_gradients(trainable)
        else:
            total.backward()
        parts.optimizer.step()
        if not names:
            names = [*terms, "total"]
            sums = torch.zeros(len(names), device=parts.device)
        sums += torch.cat([values.detach(), total.detach()[None]]) * size
        correct += (student_out["logits"][:size].detach().argmax(dim=1) == batch["target"]).sum()
        seen += size
    if world > 1:
        average_batchnorm_statistics(parts.student, parts.loss)
        counts = all_reduce_sum(torch.stack([correct.double(), torch.tensor(float(seen), device=sums.device).double()]))
        sums = all_reduce_sum(sums)
        correct, seen = counts[0].round().long(), int(counts[1].round())
    means = (sums / max(1, seen)).tolist()  # the epoch's one host-device sync for the loss terms
    values_by_name = dict(zip(names, means, strict=True))
    for name, value in values_by_name.items():
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss term '{name}' is {value} in epoch {epoch}")
    values_by_name["top1"] = 100.0 * int(correct) / max(1, seen)
    return EpochResult(terms=values_by_name, images=seen, seconds=time.perf_counter() - started)
