"""One way to get a run's batches, whatever holds the images: in-memory tensors or files decoded by workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from kdbench.data.batches import iterate_batches, shard_bounds
from kdbench.data.bundle import ImageSet
from kdbench.data.files import FileImageSet
from kdbench.data.streaming import StreamingBatches

TrainBatches = Callable[[int], Iterator[dict[str, torch.Tensor]]]
EvalBatches = Callable[[], Iterator[dict[str, torch.Tensor]]]


def _channels_last(batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    for item in batches:
        item["input"] = item["input"].contiguous(memory_format=torch.channels_last)
        yield item


def train_batches(images: ImageSet | FileImageSet, batch_size: int, *, seed: int, augmentation: str,
                  mean: Sequence[float], std: Sequence[float], device: torch.device, views: str = "single",
                  contrast_k: int | None = None, shard: tuple[int, int] = (0, 1), workers: int = 0,
                  channels_last: bool = False) -> TrainBatches:
    """``batches(epoch)``: the training batches of an epoch (see iterate_batches and StreamingBatches).

    In-memory sets augment on the device with ``augmentation``; file sets crop and flip each image in the
    DataLoader's ``workers`` (``augmentation`` must then be the file augmentation or "none").
    """
    if isinstance(images, FileImageSet):
        streaming = StreamingBatches(images, batch_size, train=True, seed=seed, mean=mean, std=std, device=device,
                                     workers=workers, views=views, contrast_k=contrast_k, shard=shard,
                                     channels_last=channels_last, augmentation=augmentation)
        return streaming.__call__

    def epoch_batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        batches = iterate_batches(images, batch_size, shuffle=True, seed=seed, epoch=epoch, augmentation=augmentation,
                                  mean=mean, std=std, device=device, views=views, contrast_k=contrast_k, shard=shard)
        return _channels_last(batches) if channels_last else batches

    return epoch_batches


def eval_batches(images: ImageSet | FileImageSet, batch_size: int, *, mean: Sequence[float], std: Sequence[float],
                 device: torch.device, shard: tuple[int, int] = (0, 1), workers: int = 0,
                 channels_last: bool = False) -> EvalBatches:
    """``batches()``: process ``shard[0]``'s contiguous block of ``images`` in natural order, unaugmented."""
    if isinstance(images, FileImageSet):
        streaming = StreamingBatches(images, batch_size, train=False, seed=0, mean=mean, std=std, device=device,
                                     workers=workers, shard=shard, channels_last=channels_last)
        return streaming.__call__
    start, stop = shard_bounds(len(images), *shard)
    block = images if (start, stop) == (0, len(images)) else ImageSet(images.images[start:stop],
                                                                      images.targets[start:stop])

    def all_batches() -> Iterator[dict[str, torch.Tensor]]:
        batches = iterate_batches(block, batch_size, shuffle=False, seed=0, epoch=0, augmentation="none", mean=mean,
                                  std=std, device=device)
        return _channels_last(batches) if channels_last else batches

    return all_batches
