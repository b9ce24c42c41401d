"""Training views: how one batch of B images becomes the V·B inputs a method asks for (Needs.views).

Every view function takes a uint8 B×C×H×W batch (on its device), the dataset's training augmentation, a CPU
generator for the random draws and the crop padding, and returns a uint8 (V·B)×C×H×W batch whose first B rows
are the plain view (what accuracy and the usual CE are computed on). Registering a view here is all a method
with new view needs requires; the engine and the data path stay the same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kdbench.data.augment import apply_augmentation

ViewFn = Callable[[torch.Tensor, str, torch.Generator, int], torch.Tensor]

VIEWS: dict[str, tuple[int, ViewFn]] = {}


def register_view(name: str, copies: int) -> Callable[[ViewFn], ViewFn]:
    """Register a view function producing ``copies`` × B images."""

    def decorator(fn: ViewFn) -> ViewFn:
        VIEWS[name] = (copies, fn)
        return fn

    return decorator


@register_view("single", copies=1)
def single_view(batch: torch.Tensor, augmentation: str, generator: torch.Generator, pad: int) -> torch.Tensor:
    """The batch with the dataset's training augmentation."""
    return apply_augmentation(batch, augmentation, generator, pad)


def view_copies(name: str) -> int:
    """How many copies of each image the view produces."""
    return VIEWS[name][0]


def make_views(name: str, batch: torch.Tensor, augmentation: str, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Apply the view ``name`` to a uint8 batch; ValueError names the allowed views."""
    if name not in VIEWS:
        raise ValueError(f"view '{name}' is unknown; allowed: {', '.join(sorted(VIEWS))}")
    return VIEWS[name][1](batch, augmentation, generator, pad)
