"""Contrast indices for contrastive methods (CRD): the sample itself, then K negatives of other classes."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("kdbench")


def negatives_available(targets: torch.Tensor, num_classes: int) -> int:
    """The fewest images of other classes any class has: a larger K must repeat negatives."""
    counts = torch.bincount(targets.cpu(), minlength=num_classes)
    present = counts[counts > 0]
    return int(len(targets) - present.max()) if len(present) else 0


def warn_if_too_many_negatives(k: int, targets: torch.Tensor, num_classes: int) -> None:
    """Warn, stating the fallback, when K is at least the number of distinct negatives of some class."""
    available = negatives_available(targets, num_classes)
    if k >= available:
        log.warning("contrast K=%d >= %d negatives available for the largest class: negatives are drawn with "
                    "replacement, so some repeat within a row (fallback; lower K to avoid it)", k, available)


def sample_contrast_indices(index: torch.Tensor, targets: torch.Tensor, k: int,
                            generator: torch.Generator) -> torch.Tensor:
    """B×(K+1) dataset indices: column 0 is ``index`` itself ("exact" positive), then K uniform negatives.

    Negatives are drawn uniformly with replacement over the whole training set and redrawn where they share the
    anchor's class (rejection; batch-level, no per-class index lists, so it scales to ImageNet). Draws come from
    the CPU ``generator``; the result is on ``index``'s device. ``targets`` are the training labels (any device).
    Each round redraws the clashing entries in row-major order, then re-checks only those (the others keep their
    values, so they cannot start to clash): the same draws as re-checking the whole B×K matrix, at a fraction of
    the cost after the first round.
    """
    count = len(targets)
    anchors = index.cpu()
    labels = targets.cpu()
    anchor_labels = labels[anchors]
    negatives = torch.randint(0, count, (len(anchors), k), generator=generator)
    flat = negatives.view(-1)
    clash = torch.nonzero((labels.index_select(0, flat).view_as(negatives) == anchor_labels[:, None]).view(-1))
    clash = clash.squeeze(1)  # flat positions, ascending
    for _ in range(100):
        if clash.numel() == 0:
            break
        redraw = torch.randint(0, count, (clash.numel(),), generator=generator)
        flat[clash] = redraw
        clash = clash[labels[redraw] == anchor_labels[clash // k]]
    else:
        raise ValueError("could not draw negatives of another class: does the training set have a single class?")
    return torch.cat([anchors[:, None], negatives], dim=1).to(index.device, non_blocking=True)
