"""In-memory batches from uint8 image tensors: seeded order, batch-level augmentation, normalisation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from kdbench.data.bundle import ImageSet

#: Training augmentations iterate_batches knows.
AUGMENTATIONS = ("crop_flip", "jitter", "none")
#: Views per image the data path can produce (multi-view methods need more, not yet supported).
SUPPORTED_VIEWS = ("single",)
SUPPORTED_BATCH_EXTRAS = ("index",)  # what every batch carries besides input and target
#: Padding of the "jitter" augmentation: random translation by up to ±2 pixels (Hinton's MNIST teacher).
JITTER_PAD = 2


def derive_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed from (seed, epoch, stream name), stable across processes and restarts."""
    digest = hashlib.sha256(f"kdbench:{seed}:{epoch}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def crop_batch(
    padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Per-image crops of ``size`` at (top, left) from a padded B×C×H'×W' batch, mirrored where ``flip``.

    Two ``torch.gather`` calls (rows, then columns; mirrored columns are gathered in reverse), no per-sample
    loop; ``top``/``left``/``flip`` are length-B tensors on any device.
    """
    height, width = size
    batch, channels, _, padded_width = padded.shape
    device = padded.device
    top, left, flip = top.to(device), left.to(device), flip.to(device)
    rows = top[:, None] + torch.arange(height, device=device)[None, :]  # B×H
    ascending = torch.arange(width, device=device)
    cols = left[:, None] + torch.where(flip[:, None], (width - 1) - ascending[None, :], ascending[None, :])  # B×W
    picked_rows = torch.gather(padded, 2, rows[:, None, :, None].expand(batch, channels, height, padded_width))
    return torch.gather(picked_rows, 3, cols[:, None, None, :].expand(batch, channels, height, width))


def apply_augmentation(
    batch_uint8: torch.Tensor, augmentation: str, generator: torch.Generator, pad: int = 4
) -> torch.Tensor:
    """Augment a B×C×H×W batch (any dtype, any device) with random draws from a CPU ``generator``.

    "crop_flip": zero-pad by ``pad``, random crop back to H×W (offsets uniform in 0..2·pad, as torchvision's
    RandomCrop(padding=pad)), horizontal flip with p=0.5. "jitter": zero-pad by JITTER_PAD=2 and random crop
    (translation by up to ±2 pixels), no flip. "none": the batch unchanged. Unknown names raise ValueError.
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation '{augmentation}' is unknown; allowed: {', '.join(AUGMENTATIONS)}")
    if augmentation == "none":
        return batch_uint8
    amount = pad if augmentation == "crop_flip" else JITTER_PAD
    if amount < 0:
        raise ValueError(f"pad={pad}: padding must be >= 0")
    count = batch_uint8.shape[0]
    top = torch.randint(0, 2 * amount + 1, (count,), generator=generator)
    left = torch.randint(0, 2 * amount + 1, (count,), generator=generator)
    if augmentation == "crop_flip":
        flip = torch.rand(count, generator=generator) < 0.5
    else:
        flip = torch.zeros(count, dtype=torch.bool)
    padded = F.pad(batch_uint8, (amount, amount, amount, amount)) if amount else batch_uint8
    return crop_batch(padded, top, left, flip, tuple(batch_uint8.shape[-2:]))


class Normaliser:
    """float32 ``(x / 255 - mean) / std`` per channel; the constants are moved to the device once, not per batch."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean/std have {len(mean)}/{len(std)} values")
        channels = len(mean)
        scale = [1.0 / (255.0 * s) for s in std]
        shift = [m / s for m, s in zip(mean, std, strict=True)]
        self.scale = torch.tensor(scale, dtype=torch.float32).view(1, channels, 1, 1).to(device)
        self.shift = torch.tensor(shift, dtype=torch.float32).view(1, channels, 1, 1).to(device)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalise a uint8 B×C×H×W batch."""
        if batch.shape[1] != self.scale.shape[1]:
            raise ValueError(f"mean/std have {self.scale.shape[1]} values for images with {batch.shape[1]} channels")
        return batch.to(torch.float32).mul_(self.scale).sub_(self.shift)


def normalise(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float32 ``(x / 255 - mean) / std`` per channel for a uint8 B×C×H×W batch (on the batch's device)."""
    return Normaliser(mean, std, batch.device)(batch)


def iterate_batches(
    images: ImageSet,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    augmentation: str,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str,
    pad: int = 4,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches ``{"input", "target", "index"}`` of an in-memory ImageSet, all on ``device``.

    ``input``: float32, augmented then normalised with mean/std; ``target``: int64; ``index``: int64 positions
    into ``images`` (the dataset index). With ``shuffle=True`` (training) the order is a permutation from a local
    generator seeded by (seed, epoch), and augmentation draws come from a second local CPU generator seeded by
    (seed, epoch), so epoch e is identical with or without a restart; a last batch holding a single image is
    dropped (BatchNorm cannot train on one; kept only when the whole set is one image), a larger partial last
    batch is kept. With ``shuffle=False`` (evaluation) the order is natural, ``augmentation`` is ignored (no
    augmentation) and nothing is dropped.
    The images may already live on ``device`` (see ImageSet.to); only the batch is moved otherwise.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation '{augmentation}' is unknown; allowed: {', '.join(AUGMENTATIONS)}")
    device = torch.device(device)
    count = len(images)
    if shuffle:
        order = torch.randperm(count, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, "order")))
        aug_generator = torch.Generator().manual_seed(derive_seed(seed, epoch, "augment"))
    else:
        order = torch.arange(count)
    source_device = images.images.device
    normaliser = Normaliser(mean, std, device)
    for start in range(0, count, batch_size):
        index = order[start : start + batch_size]
        if shuffle and len(index) == 1 and count > 1:
            break
        positions = index.to(source_device)
        batch = images.images[positions]
        targets = images.targets[positions]
        batch = batch.to(device, non_blocking=True)
        if shuffle:
            batch = apply_augmentation(batch, augmentation, aug_generator, pad)
        yield {
            "input": normaliser(batch),
            "target": targets.to(device, non_blocking=True),
            "index": index.to(device, non_blocking=True),
        }
