"""Training views: how one batch of B images becomes the V·B inputs a method asks for (Needs.views).

Every view function takes a uint8 B×C×H×W batch (on its device), the dataset's training augmentation, a CPU
generator for the random draws and the crop padding, and returns a uint8 (V·B)×C×H×W batch whose first B rows
are the plain view (what accuracy and the usual CE are computed on). Registering a view here is all a method
with new view needs requires; the engine and the data path stay the same.

Views: ``single`` (every method by default), ``rotations4`` (MLKD: 4 rotated copies), ``weak_strong`` (MLLD: the
weak augmentation and a RandAugment + Cutout copy; the batch-level ops live in randaugment.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdbench.data.augment import AUGMENTATIONS, JITTER_PAD, apply_augmentation, crop_batch
from kdbench.data.randaugment import cutout, rand_augment

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


def _check_square(batch: torch.Tensor, view: str) -> None:
    height, width = batch.shape[-2:]
    if height != width:
        raise ValueError(f"view '{view}' rotates by 90°, so it needs square images; got {height}×{width}")


@register_view("rotations4", copies=4)
def rotations4_view(batch: torch.Tensor, augmentation: str, generator: torch.Generator, pad: int) -> torch.Tensor:
    """MLKD's views: [rot0 (B), rot90 (B), rot180 (B), rot270 (B)] of each image, each copy cropped on its own.

    Each image is mirrored once (p=0.5, one draw per image, shared by its 4 copies), rotated by 0/90/180/270°
    counter-clockwise (``torch.rot90`` over H, W; square images only, else ValueError), then every copy gets its
    own random crop (zero-pad by ``pad``, offsets uniform in 0..2·pad, as crop_flip's crop, without a second
    flip). Draw order: B flip flags, 4B crop tops, 4B crop lefts. The dataset's augmentation decides the
    flip and crop as it does for "single": "crop_flip" as above; "jitter" no flip and a ±JITTER_PAD crop;
    "none" only the rotations. One ``crop_batch`` call over the 4B copies, no per-image loop.
    """
    _check_square(batch, "rotations4")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation '{augmentation}' is unknown; allowed: {', '.join(AUGMENTATIONS)}")
    count = batch.shape[0]
    if augmentation == "crop_flip":
        flip = (torch.rand(count, generator=generator) < 0.5).to(batch.device)
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    rotated = torch.cat([torch.rot90(batch, k, dims=(-2, -1)) for k in range(4)])
    amount = {"crop_flip": pad, "jitter": JITTER_PAD, "none": 0}[augmentation]
    if amount < 0:
        raise ValueError(f"pad={pad}: padding must be >= 0")
    if amount == 0:
        return rotated
    total = rotated.shape[0]
    top = torch.randint(0, 2 * amount + 1, (total,), generator=generator)
    left = torch.randint(0, 2 * amount + 1, (total,), generator=generator)
    padded = F.pad(rotated, (amount, amount, amount, amount))
    return crop_batch(padded, top, left, torch.zeros(total, dtype=torch.bool), tuple(rotated.shape[-2:]))


#: RandAugment settings of the weak_strong view's strong half (torchvision's defaults).
STRONG_NUM_OPS = 2
STRONG_MAGNITUDE = 9
STRONG_NUM_BINS = 31


@register_view("weak_strong", copies=2)
def weak_strong_view(batch: torch.Tensor, augmentation: str, generator: torch.Generator, pad: int) -> torch.Tensor:
    """MLLD's views: [weak (B), strong (B)].

    weak = the dataset's training augmentation (``apply_augmentation``, e.g. crop+flip); strong = that same weak
    image + RandAugment (2 ops, magnitude 9 of 31 bins; op list and values in randaugment.py) + Cutout (one
    zero-filled square hole of half the image side, centre uniform, clipped at the borders). Draw order: the
    weak augmentation, RandAugment's 2×B op indices and 2×B sign flags, Cutout's B centre rows and B centre
    columns. Batch-level: images are grouped by (op, sign), at most 23 batched calls per RandAugment round.
    """
    weak = apply_augmentation(batch, augmentation, generator, pad)
    strong = rand_augment(weak, generator, STRONG_NUM_OPS, STRONG_MAGNITUDE, STRONG_NUM_BINS)
    strong = cutout(strong, generator)
    return torch.cat([weak, strong])


def view_copies(name: str) -> int:
    """How many copies of each image the view produces."""
    return VIEWS[name][0]


def make_views(name: str, batch: torch.Tensor, augmentation: str, generator: torch.Generator, pad: int) -> torch.Tensor:
    """Apply the view ``name`` to a uint8 batch; ValueError names the allowed views."""
    if name not in VIEWS:
        raise ValueError(f"view '{name}' is unknown; allowed: {', '.join(sorted(VIEWS))}")
    return VIEWS[name][1](batch, augmentation, generator, pad)
