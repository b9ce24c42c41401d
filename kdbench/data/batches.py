"""In-memory batches from uint8 image tensors: seeded order, batch-level augmentation, normalisation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch

from kdbench.data.augment import AUGMENTATIONS
from kdbench.data.bundle import ImageSet
from kdbench.data.contrast import sample_contrast_indices
from kdbench.data.views import make_views

#: What a batch can carry besides input and target: the dataset index always, contrast indices on request.
SUPPORTED_BATCH_EXTRAS = ("index", "contrast_index")


def derive_seed(seed: int, epoch: int, stream: str) -> int:
    """A 63-bit seed from (seed, epoch, stream name), stable across processes and restarts."""
    digest = hashlib.sha256(f"kdbench:{seed}:{epoch}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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


def training_batches(count: int, batch_size: int, world_size: int = 1) -> int:
    """Batches iterate_batches yields per training epoch: a last batch that cannot give every one of the
    ``world_size`` processes two images is dropped (one image per process when there is one process)."""
    full, rest = divmod(count, batch_size)
    return max(1, full + (rest >= 2 * world_size))


def shard_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a ``size``-row global batch that process ``rank`` of ``world_size`` trains on.

    Contiguous blocks in rank order whose sizes differ by at most one (earlier ranks take the extra rows), so
    concatenating the shards in rank order gives the global batch back.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def check_shardable(batch_size: int, world_size: int) -> None:
    """Raise ValueError unless a ``batch_size`` global batch gives each of ``world_size`` processes two images."""
    if world_size > 1 and batch_size < 2 * world_size:
        raise ValueError(f"recipe.batch_size={batch_size} is the global batch of {world_size} processes; it must be "
                         f">= {2 * world_size} (two images per process, as BatchNorm needs)")


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
    views: str = "single",
    contrast_k: int | None = None,
    shard: tuple[int, int] = (0, 1),
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

    Training only: ``views`` (see views.py) turns the B images into V·B inputs, the plain view first (``target``
    and ``index`` stay B long); ``contrast_k`` adds ``contrast_index`` (B×(K+1): the sample, then K negatives of
    other classes) from a third local generator seeded by (seed, epoch).

    Training only: ``shard=(rank, world_size)`` yields process ``rank``'s rows (``shard_bounds``) of every global
    batch. The global batch is drawn, augmented and given its contrast indices exactly as in one process, then
    sliced (each view's block of rows alike) before normalisation, so the shards of all ranks together are the
    one-process batch, whatever the world size. A last global batch smaller than 2·world_size is dropped
    (``training_batches``). Every rank augments the whole global batch: cheap batch-level ops, and what keeps
    the random draws those of one process.
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
        contrast_generator = torch.Generator().manual_seed(derive_seed(seed, epoch, "contrast"))
    else:
        order = torch.arange(count)
    source_device = images.images.device
    normaliser = Normaliser(mean, std, device)
    rank, world = shard
    sharded = shuffle and world > 1
    if sharded:
        check_shardable(batch_size, world)
    for start in range(0, count, batch_size):
        index = order[start : start + batch_size]
        if shuffle and len(index) < 2 * world and count > 1:
            break
        positions = index.to(source_device)
        batch = images.images[positions]
        targets = images.targets[positions]
        batch = batch.to(device, non_blocking=True)
        if shuffle:
            batch = make_views(views, batch, augmentation, aug_generator, pad)
        contrast = (sample_contrast_indices(index, images.targets, contrast_k, contrast_generator)
                    if shuffle and contrast_k is not None else None)
        if sharded:
            lo, hi = shard_bounds(len(index), rank, world)
            batch = batch.view(-1, len(index), *batch.shape[1:])[:, lo:hi].reshape(-1, *batch.shape[1:])
            index, targets = index[lo:hi], targets[lo:hi]
            contrast = contrast[lo:hi] if contrast is not None else None
        item = {
            "input": normaliser(batch),
            "target": targets.to(device, non_blocking=True),
            "index": index.to(device, non_blocking=True),
        }
        if contrast is not None:
            item["contrast_index"] = contrast
        yield item
