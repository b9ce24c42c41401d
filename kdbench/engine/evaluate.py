"""Evaluation: confusion-matrix counts on a set, and the metrics derived from them."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.data.loaders import EvalBatches
from kdbench.engine.distributed import SINGLE, DistInfo, all_reduce_sum
from kdbench.tracking.record import EvalResult

CONFUSION_KEPT_UP_TO = 100  # classes; beyond that the record keeps per-class counts only


def metrics_from_counts(confusion: torch.Tensor, top5_correct: int, loss_sum: float) -> EvalResult:
    """top-1, top-5, balanced accuracy and per-class counts from a C×C confusion matrix (rows: truth)."""
    total_per_class = confusion.sum(dim=1)
    correct_per_class = confusion.diagonal()
    num_images = int(total_per_class.sum())
    present = total_per_class > 0
    per_class_acc = correct_per_class[present].double() / total_per_class[present].double()
    keep_confusion = confusion.shape[0] <= CONFUSION_KEPT_UP_TO
    return EvalResult(
        top1=100.0 * float(correct_per_class.sum()) / max(1, num_images),
        top5=100.0 * top5_correct / max(1, num_images),
        balanced_acc=100.0 * float(per_class_acc.mean()) if present.any() else float("nan"),
        loss=loss_sum / max(1, num_images),
        num_images=num_images,
        per_class_correct=correct_per_class.tolist(),
        per_class_total=total_per_class.tolist(),
        confusion=confusion.tolist() if keep_confusion else None,
    )


@torch.inference_mode()
def evaluate(model: nn.Module, batches: EvalBatches, *, num_classes: int, device: torch.device,
             autocast: contextlib.AbstractContextManager | None = None, dist: DistInfo = SINGLE) -> EvalResult:
    """Run ``model`` over ``batches()`` in eval mode; counts stay on the device until the end (one sync).

    With several processes (``dist``) each evaluates its contiguous block of the set (``eval_batches`` with
    ``shard=(rank, world)``) and the confusion counts, top-5 hits and loss sums are summed over ranks, so every
    rank returns the exact metrics of the whole set.
    """
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    top5_correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    k = min(5, num_classes)
    for batch in batches():
        with autocast or contextlib.nullcontext():
            logits = model(batch["input"])
        logits = logits.float()
        target = batch["target"]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        confusion += torch.bincount(target * num_classes + logits.argmax(dim=1), minlength=num_classes**2)
        top5_correct += (logits.topk(k, dim=1).indices == target[:, None]).any(dim=1).sum()
    model.train(was_training)
    if dist.distributed:
        counts = all_reduce_sum(torch.cat([confusion, top5_correct[None]]))
        confusion, top5_correct = counts[:-1], counts[-1]
        loss_sum = all_reduce_sum(loss_sum)
    return metrics_from_counts(confusion.view(num_classes, num_classes).cpu(), int(top5_correct), float(loss_sum))
