"""Batches of a FileImageSet through a torch DataLoader: workers decode, the device normalises.

Workers decode and crop (decode.py) and return uint8 images, a quarter of float32's bytes on the way to the
device; normalisation, multi-view inputs and contrast indices are batch-level work on the device, as for the
in-memory sets. The order of an epoch and each image's random draws depend only on (seed, epoch, image), so
an epoch is the same with any number of workers, on any rank, and after a restart. Workers persist across
epochs: the epoch travels with each index, so one pool serves the whole run.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from kdbench.cpus import usable_cpus
from kdbench.data.batches import Normaliser, check_shardable, derive_seed, shard_bounds
from kdbench.data.contrast import sample_contrast_indices
from kdbench.data.decode import eval_transform, load_rgb, train_transform
from kdbench.data.files import FileImageSet
from kdbench.data.views import make_views

#: Per-image training transform of the file datasets (RandomResizedCrop + flip, applied in the workers).
FILE_AUGMENTATION = "random_resized_crop_flip"


def default_workers(processes: int = 1) -> int:
    """DataLoader workers when none are set: this process's share of the CPUs it may use (Slurm's allocation,
    split among ``processes`` runs training side by side) minus one for the training loop, at most 16."""
    cpus = usable_cpus()
    return max(0, min(cpus // max(1, processes) - 1, 16))


class _DecodedImages(Dataset):
    """Image ``index`` of epoch ``epoch`` → (uint8 3×S×S, target, index); training crops seeded per image."""

    def __init__(self, files: FileImageSet, train: bool, seed: int, augment: bool) -> None:
        self.files, self.train, self.seed, self.augment = files, train, seed, augment

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, epoch = key
        image = load_rgb(self.files.path(index))
        size = self.files.image_size
        if self.train and self.augment:
            pixels = train_transform(image, size, random.Random(derive_seed(self.seed, epoch, f"image:{index}")))
        else:
            pixels = eval_transform(image, size)
        return pixels, int(self.files.targets[index]), index


class _EpochBatches:
    """The batch sampler: this rank's (index, epoch) keys of every global batch of the current epoch."""

    def __init__(self, count: int, batch_size: int, *, shuffle: bool, seed: int, shard: tuple[int, int]) -> None:
        self.count, self.batch_size, self.shuffle, self.seed, self.shard = count, batch_size, shuffle, seed, shard
        self.epoch = 0

    def global_batches(self) -> list[torch.Tensor]:
        """Every global batch of the epoch (dataset positions), after the last-batch rule of iterate_batches."""
        world = self.shard[1]
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, "order"))
            order = torch.randperm(self.count, generator=generator)
        else:
            order = torch.arange(self.count)
        batches = list(order.split(self.batch_size))
        if self.shuffle and batches and len(batches[-1]) < 2 * world and self.count > 1:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rank, world = self.shard
        for batch in self.global_batches():
            lo, hi = shard_bounds(len(batch), rank, world)
            yield [(index, self.epoch) for index in batch[lo:hi].tolist()]  # tolist: one call, not one per image

    def __len__(self) -> int:
        return len(self.global_batches())


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding is per-image PIL work; torch threads would only compete with it


class StreamingBatches:
    """Batches ``{"input", "target", "index"[, "contrast_index"]}`` of a FileImageSet, built once per run.

    Training (``train=True``): the same global-batch order, last-batch rule and ``shard=(rank, world)`` slicing
    as iterate_batches, each rank loading only its own rows; ``contrast_index`` is drawn for the whole global
    batch (as in one process) and sliced. Multi-view inputs (``views``) are made on the device from the rank's
    decoded rows with a generator seeded by (seed, epoch, step, rank). ``augmentation="none"`` trains on the
    evaluation crop. Evaluation (``train=False``): natural
    order, rank r taking a contiguous block of the set (the caller sums the counts over ranks).
    """

    def __init__(self, files: FileImageSet, batch_size: int, *, train: bool, seed: int, mean: Sequence[float],
                 std: Sequence[float], device: torch.device, workers: int, views: str = "single",
                 contrast_k: int | None = None, shard: tuple[int, int] = (0, 1), channels_last: bool = False,
                 augmentation: str = FILE_AUGMENTATION) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1")
        if augmentation not in (FILE_AUGMENTATION, "none"):
            raise ValueError(f"augmentation '{augmentation}' does not apply to image files; allowed: "
                             f"{FILE_AUGMENTATION}, none")
        rank, world = shard
        if train and world > 1:
            check_shardable(batch_size, world)
        self.files, self.train, self.seed, self.device = files, train, seed, torch.device(device)
        self.views, self.contrast_k, self.shard, self.channels_last = views, contrast_k, shard, channels_last
        self.normaliser = Normaliser(mean, std, self.device)
        if train:
            self.sampler = _EpochBatches(len(files), batch_size, shuffle=True, seed=seed, shard=shard)
            dataset_files = files
        else:  # this rank's contiguous block, in natural order
            start, stop = shard_bounds(len(files), rank, world)
            self.offset = start
            dataset_files = files.subset(torch.arange(start, stop))
            self.sampler = _EpochBatches(len(dataset_files), batch_size, shuffle=False, seed=seed, shard=(0, 1))
        workers = max(0, workers)
        decoded = _DecodedImages(dataset_files, train, seed, augmentation == FILE_AUGMENTATION)
        self.loader = DataLoader(
            decoded, batch_sampler=self.sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None, worker_init_fn=_worker_init if workers > 0 else None,
        )

    def __call__(self, epoch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of ``epoch`` (training) or of the whole set (evaluation)."""
        self.sampler.epoch = epoch
        global_batches = self.sampler.global_batches() if self.train and self.contrast_k is not None else None
        contrast_generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, "contrast"))
        rank, world = self.shard
        for step, (pixels, targets, index) in enumerate(self.loader):
            pixels = pixels.to(self.device, non_blocking=True)
            if self.train and self.views != "single":
                view_seed = derive_seed(self.seed, epoch, f"views:{step}:{rank}")
                pixels = make_views(self.views, pixels, "none", torch.Generator().manual_seed(view_seed), 0)
            inputs = self.normaliser(pixels)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            if not self.train:
                index = index + self.offset
            item = {"input": inputs, "target": targets.to(self.device, non_blocking=True),
                    "index": index.to(self.device, non_blocking=True)}
            if global_batches is not None:
                whole = global_batches[step]
                contrast = sample_contrast_indices(whole, self.files.targets, self.contrast_k, contrast_generator)
                lo, hi = shard_bounds(len(whole), rank, world)
                item["contrast_index"] = contrast[lo:hi].to(self.device, non_blocking=True)
            yield item
