"""Tests of kdbench.data: long-tail counts, sources (digits, MNIST, CIFAR, synthetic), build_data, batches."""

from __future__ import annotations

import gzip
import os
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.data import (
    VIEWS,
    DataBundle,
    DatasetSpec,
    ImageSet,
    LongTailSpec,
    apply_augmentation,
    build_data,
    dataset_names,
    get_source,
    iterate_batches,
    long_tailed_counts,
    validate_dataset_spec,
)
from kdbench.data.longtail import long_tailed_split
from kdbench.data.mnist import MNIST_TRAIN_COUNTS, read_idx

MNIST_ROOT = Path("/work/shared/data")
HAVE_MNIST = all(
    (MNIST_ROOT / "MNIST" / "raw" / f"{name}.gz").is_file()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
)
needs_mnist = pytest.mark.skipif(not HAVE_MNIST, reason=f"MNIST IDX .gz files not found under {MNIST_ROOT}/MNIST/raw")


# ---------------------------------------------------------------- long-tailed counts


@pytest.mark.parametrize(("rho", "total"), [(100, 10_847), (50, 12_608), (10, 19_573)])
def test_cifar100_lt_totals(rho: float, total: int) -> None:
    counts = long_tailed_counts(500, 100, rho)
    assert sum(counts) == total
    assert counts[0] == 500 and counts[-1] == int(500 / rho)
    assert counts == sorted(counts, reverse=True)


def test_cifar10_lt_total_and_monotone() -> None:
    counts = long_tailed_counts(5000, 10, 100)
    assert sum(counts) == 12_406
    assert counts[0] == 5000 and counts[-1] == 50
    assert counts == sorted(counts, reverse=True)
    assert long_tailed_counts(500, 100, 1) == [500] * 100


def test_step_profile() -> None:
    assert long_tailed_counts(500, 10, 3, "step") == [500] * 5 + [166] * 5  # 500 / 3 floored
    assert long_tailed_counts(10, 5, 2, "step") == [10, 10, 5, 5, 5]  # odd C: the middle class is a minority


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((500, 100, 0.5), ["imbalance_ratio=0.5", ">= 1"]),
        ((500, 1, 10), ["num_classes=1"]),
        ((500, 100, 10, "linear"), ["linear", "exp, step"]),
    ],
)
def test_long_tailed_counts_errors(args: tuple, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        long_tailed_counts(*args)
    assert all(word in str(info.value) for word in words)


def test_long_tailed_split_validation_disjoint_and_balanced() -> None:
    targets = torch.tensor([c for c, n in enumerate((35, 30, 40, 45)) for _ in range(n)])  # n_max = 30
    counts = long_tailed_counts(30, 4, 10)
    train, val = long_tailed_split(targets, counts, 3, torch.Generator().manual_seed(1))
    assert torch.bincount(targets[train], minlength=4).tolist() == counts
    assert torch.bincount(targets[val], minlength=4).tolist() == [3, 3, 3, 3]
    assert not set(train.tolist()) & set(val.tolist())
    # a class whose discarded pool is smaller than val_per_class gives what it has (class 0: 35 - 30 = 5)
    train6, val6 = long_tailed_split(targets, counts, 6, torch.Generator().manual_seed(1))
    assert torch.equal(train6, train)  # the training subset does not depend on val_per_class
    assert torch.bincount(targets[val6], minlength=4).tolist() == [5, 6, 6, 6]
    assert not set(train6.tolist()) & set(val6.tolist())


# ---------------------------------------------------------------- build_data on synthetic / digits


def _rng_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _lt_spec(seed: int = 0, **kw) -> DatasetSpec:
    return DatasetSpec(
        name="synthetic", long_tail=LongTailSpec(imbalance_ratio=10), subset_seed=seed, val_per_class=0, **kw
    )


def test_build_synthetic_long_tail() -> None:
    before = _rng_states()
    bundle = build_data(_lt_spec(), 32, 3)
    after = _rng_states()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    assert isinstance(bundle, DataBundle) and bundle.val is None
    assert bundle.class_counts == long_tailed_counts(50, 10, 10)
    assert len(bundle.train) == sum(bundle.class_counts) == len(bundle.train_source_indices)
    assert bundle.augmentation == "crop_flip" and bundle.train.shape == (3, 32, 32)
    assert len(bundle.test) == 10 * 20 and bundle.test.class_counts(10) == [20] * 10  # test stays balanced
    source = get_source("synthetic").load(_lt_spec())
    kept = bundle.train_source_indices
    assert torch.equal(source.train_targets[kept], bundle.train.targets)
    assert torch.equal(source.train_images[kept], bundle.train.images)
    assert torch.equal(build_data(_lt_spec(), 32, 3).train_source_indices, kept)
    assert not torch.equal(build_data(_lt_spec(seed=1), 32, 3).train_source_indices, kept)


def test_build_long_tail_validation_from_the_discarded_pool_only() -> None:
    spec = DatasetSpec(name="synthetic", long_tail=LongTailSpec(imbalance_ratio=10), val_per_class=5)
    bundle = build_data(spec, 32, 3)
    assert bundle.val is not None and bundle.val_source_indices is not None
    # class 0 keeps all 50 of its images: nothing discarded, so no validation image; the others give 5 each
    assert bundle.val.class_counts(10) == [0] + [5] * 9
    assert not set(bundle.val_source_indices.tolist()) & set(bundle.train_source_indices.tolist())


def test_build_balanced_val_fraction_is_stratified() -> None:
    bundle = build_data(DatasetSpec(name="synthetic", val_fraction=0.2, subset_seed=3), 32, 3)
    assert bundle.val is not None
    assert bundle.class_counts == [40] * 10 and bundle.val.class_counts(10) == [10] * 10
    train, val = set(bundle.train_source_indices.tolist()), set(bundle.val_source_indices.tolist())
    assert not train & val and train | val == set(range(500))
    plain = build_data(DatasetSpec(name="synthetic"), 32, 3)
    assert plain.val is None and plain.class_counts == [50] * 10
    assert plain.mean != (0.5071, 0.4867, 0.4408) and all(0 < s < 1 for s in plain.std)


def test_synthetic_is_deterministic_and_separable() -> None:
    spec = DatasetSpec(name="synthetic")
    first, second = get_source("synthetic").load(spec), get_source("synthetic").load(spec)
    assert torch.equal(first.train_images, second.train_images) and torch.equal(first.test_images, second.test_images)
    x, xt = first.train_images.float().flatten(1), first.test_images.float().flatten(1)
    means = torch.stack([x[first.train_targets == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(xt, means).argmin(1) == first.test_targets).float().mean().item()
    assert accuracy > 0.8  # nearest class mean already separates it: a small CNN learns it in a few epochs


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3)])
def test_digits_resized(size: int, channels: int) -> None:
    bundle = build_data(DatasetSpec(name="digits"), size, channels)
    assert bundle.train.images.shape == (1198, channels, size, size) and bundle.train.images.dtype == torch.uint8
    assert bundle.test.images.shape == (599, channels, size, size)
    assert bundle.num_classes == 10 and bundle.class_names == [str(c) for c in range(10)]
    assert bundle.augmentation == "none" and len(bundle.mean) == channels and len(bundle.std) == channels
    assert bundle.class_counts == get_source("digits").train_class_counts(DatasetSpec(name="digits"))
    if channels == 3:
        assert torch.equal(bundle.train.images[:, 0], bundle.train.images[:, 2])
    assert bundle.train.images.max() > 200  # 0..16 scaled to 0..255


def test_dataset_names_and_views() -> None:
    assert {"cifar10", "cifar100", "digits", "mnist", "synthetic"} <= set(dataset_names())
    assert "single" in VIEWS


# ---------------------------------------------------------------- MNIST and IDX


@pytest.fixture(scope="module")
def mnist_raw():
    """MNIST parsed once per module (10 MB of gzip)."""
    if not HAVE_MNIST:
        pytest.skip(f"MNIST IDX .gz files not found under {MNIST_ROOT}/MNIST/raw")
    return get_source("mnist").load(DatasetSpec(name="mnist", root=str(MNIST_ROOT)))


@needs_mnist
def test_mnist_from_shared_root(mnist_raw) -> None:
    assert mnist_raw.train_images.shape == (60_000, 1, 28, 28) and mnist_raw.train_images.dtype == torch.uint8
    assert mnist_raw.test_images.shape == (10_000, 1, 28, 28) and len(mnist_raw.test_targets) == 10_000
    assert torch.bincount(mnist_raw.train_targets).tolist() == list(MNIST_TRAIN_COUNTS)
    assert mnist_raw.train_targets.dtype == torch.int64 and mnist_raw.class_names[0] == "0"


@needs_mnist
def test_mnist_long_tail_with_validation(mnist_raw) -> None:
    spec = DatasetSpec(name="mnist", root=str(MNIST_ROOT / "MNIST" / "raw"), long_tail=LongTailSpec(imbalance_ratio=50))
    bundle = build_data(spec, 28, 1)
    assert bundle.class_counts == long_tailed_counts(5421, 10, 50)  # n_max = smallest class (fives)
    assert bundle.val is not None and bundle.val.class_counts(10) == [10] * 10
    train, val = bundle.train_source_indices, bundle.val_source_indices
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(mnist_raw.train_targets[val], bundle.val.targets)
    assert torch.equal(mnist_raw.train_images[train], bundle.train.images)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_parser_and_fake_mnist_root(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    images = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28) % 256
    for prefix, count in (("train", 3), ("t10k", 2)):
        (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images[:count])))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(np.arange(count)))
    loaded = build_data(DatasetSpec(name="mnist", root=str(tmp_path)), 28, 1)
    assert torch.equal(loaded.train.images[:, 0], torch.from_numpy(images).to(torch.uint8))
    assert loaded.test.targets.tolist() == [0, 1]
    bad = tmp_path / "bad"
    bad.write_bytes(_idx_bytes(images)[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(bad)
    bad.write_bytes(b"\x1f\x8b" + b"junk")
    with pytest.raises(ValueError, match="gzip"):
        read_idx(bad)
    bad.write_bytes(b"\x00\x00\x99\x03" + bytes(20))
    with pytest.raises(ValueError, match="magic number 0x00009903"):
        read_idx(bad)
    with pytest.raises(ValueError, match="3 dimensions, expected 1"):
        read_idx(raw / "train-images-idx3-ubyte.gz", expected_ndim=1)


# ---------------------------------------------------------------- CIFAR pickles


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def _rows(count: int, offset: int) -> np.ndarray:
    return ((np.arange(count * 3072).reshape(count, 3072) + offset) % 256).astype(np.uint8)


def test_fake_cifar10_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):  # bytes keys, as the original Python 2 pickles have
        _dump(folder / f"data_batch_{i}", {b"data": _rows(4, i), b"labels": [(i + j) % 10 for j in range(4)]})
    _dump(folder / "test_batch", {"data": _rows(6, 99), "labels": list(range(6))})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_vis": 3072})
    spec = DatasetSpec(name="cifar10", root=str(tmp_path))
    validate_dataset_spec(spec)
    bundle = build_data(spec, 32, 3)
    assert bundle.class_names == names and bundle.augmentation == "crop_flip"
    assert bundle.train.images.shape == (20, 3, 32, 32)
    assert torch.equal(bundle.train.images[4].flatten(), torch.from_numpy(_rows(4, 2)[0]))  # batch 2, first row
    assert bundle.train.targets[:4].tolist() == [1, 2, 3, 4] and bundle.test.targets.tolist() == list(range(6))
    assert bundle.mean == (0.4914, 0.4822, 0.4465) and bundle.std == (0.2470, 0.2435, 0.2616)
    grey = build_data(spec, 28, 1)
    assert grey.train.images.shape == (20, 1, 28, 28) and len(grey.mean) == 1  # adapted: stats measured


def test_fake_cifar100_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    fine = [(7 * j) % 100 for j in range(12)]
    _dump(folder / "train", {"data": _rows(12, 0), "fine_labels": fine, "coarse_labels": [0] * 12})
    _dump(folder / "test", {"data": _rows(5, 1), "fine_labels": [99, 0, 1, 2, 3], "coarse_labels": [0] * 5})
    _dump(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20})
    raw = get_source("cifar100").load(DatasetSpec(name="cifar100", root=str(tmp_path)))
    assert raw.train_images.shape == (12, 3, 32, 32) and raw.train_targets.tolist() == fine
    assert torch.equal(raw.test_images[1].flatten(), torch.from_numpy(_rows(5, 1)[1]))
    assert raw.test_targets.tolist() == [99, 0, 1, 2, 3] and raw.class_names[42] == "c42"
    bundle = build_data(DatasetSpec(name="cifar100", root=str(tmp_path)), 32, 3)
    assert bundle.num_classes == 100
    # RepDistiller dataset/cifar100.py and mdistiller dataset/cifar100.py: Normalize((0.5071, 0.4867, 0.4408),
    # (0.2675, 0.2565, 0.2761)), for training and test images alike
    assert (bundle.mean, bundle.std) == ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))


def test_cifar_reader_refuses_code_in_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(pickle.dumps({"data": os.getcwd}))  # a global that is not an array
    with pytest.raises(ValueError, match="refusing to load global"):
        get_source("cifar100").load(DatasetSpec(name="cifar100", root=str(tmp_path)))


# ---------------------------------------------------------------- validate_dataset_spec


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (DatasetSpec(name="cifar1000"), ["dataset.name", "'cifar1000'", "did you mean 'cifar100'", "synthetic"]),
        (DatasetSpec(name="cifar100", root="/nonexistent/kd"), ["dataset.root", "/nonexistent/kd", "cifar-100-python"]),
        (DatasetSpec(name="mnist"), ["dataset.root", "train-images-idx3-ubyte"]),
        (DatasetSpec(name="cifar10", download=True), ["dataset.root", "download"]),
        (
            DatasetSpec(name="synthetic", long_tail=LongTailSpec(imbalance_ratio=60), val_per_class=0),
            ["dataset.long_tail.imbalance_ratio", "60", "0 training images", "at most 50"],
        ),
        (
            DatasetSpec(name="synthetic", long_tail=LongTailSpec(imbalance_ratio=5), val_fraction=0.1),
            ["dataset.val_fraction", "0.1"],
        ),
        (
            DatasetSpec(name="synthetic", synthetic_train_per_class=1, val_fraction=0.5),
            ["dataset.val_fraction", "0.5", "class 0"],
        ),
    ],
)
def test_validate_dataset_spec_errors(spec: DatasetSpec, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        validate_dataset_spec(spec)
    message = str(info.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_validate_accepts_good_specs() -> None:
    validate_dataset_spec(DatasetSpec(name="digits"))
    validate_dataset_spec(DatasetSpec(name="cifar100", root="/tmp/x", download=True))
    validate_dataset_spec(DatasetSpec(name="synthetic", long_tail=LongTailSpec(imbalance_ratio=50), val_per_class=0))


# ---------------------------------------------------------------- iterate_batches


def _pattern_set(count: int = 65, size: int = 16) -> ImageSet:
    """Image i: pixel (r, c) = r * 16 + c (every value unique), channel 1 = its class marker."""
    grid = (torch.arange(size)[:, None] * 16 + torch.arange(size)[None, :]).to(torch.uint8)
    images = torch.stack([grid, torch.full_like(grid, 7)]).expand(count, -1, -1, -1).clone()
    images[:, 1] = torch.arange(count, dtype=torch.uint8)[:, None, None]
    return ImageSet(images, torch.arange(count, dtype=torch.int64) % 3)


def _batches(data: ImageSet, **kw) -> list[dict[str, torch.Tensor]]:
    args = {"shuffle": True, "seed": 5, "epoch": 0, "augmentation": "crop_flip", "mean": (0.0, 0.0), "std": (1.0, 1.0)}
    args.update(kw)
    return list(iterate_batches(data, 16, device="cpu", **args))


def test_batches_cover_every_index_once() -> None:
    data = _pattern_set(65)  # 4 full batches + a single image, which training drops
    train = _batches(data)
    indices = torch.cat([b["index"] for b in train])
    assert [len(b["index"]) for b in train] == [16] * 4 and len(set(indices.tolist())) == 64
    assert all(b["input"].dtype == torch.float32 and b["target"].dtype == torch.int64 for b in train)
    assert all(torch.equal(b["target"], data.targets[b["index"]]) for b in train)
    evaluation = _batches(data, shuffle=False)
    assert torch.equal(torch.cat([b["index"] for b in evaluation]), torch.arange(65))
    assert len(torch.cat([b["index"] for b in _batches(_pattern_set(66))])) == 66  # partial batch of 2 is kept


def test_batches_reproducible_per_epoch() -> None:
    data = _pattern_set(64)
    before = _rng_states()
    first, again = _batches(data, epoch=3), _batches(data, epoch=3)
    assert torch.get_rng_state().equal(before[0])
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["input"], b["input"])
    other = torch.cat([b["index"] for b in _batches(data, epoch=4)])
    assert not torch.equal(torch.cat([b["index"] for b in first]), other)
    assert not torch.equal(other, torch.cat([b["index"] for b in _batches(data, epoch=4, seed=6)]))


def _windows(output: torch.Tensor, original: torch.Tensor, pad: int) -> list[tuple[int, int, bool]]:
    """Every (top, left, flip) whose crop of the zero-padded ``original`` equals ``output`` (H×W)."""
    padded = torch.nn.functional.pad(original, (pad, pad, pad, pad))
    size = original.shape[-1]
    found = []
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            window = padded[top : top + size, left : left + size]
            found += [
                (top, left, flip) for flip in (False, True) if torch.equal(output, window.flip(-1) if flip else window)
            ]
    return found


def test_crop_flip_content_comes_from_the_image() -> None:
    data = _pattern_set(64)
    batch = apply_augmentation(data.images, "crop_flip", torch.Generator().manual_seed(0), pad=4)
    assert batch.shape == data.images.shape and batch.dtype == torch.uint8
    draws = set()
    for i in range(64):
        assert torch.all((batch[i, 1] == i) | (batch[i, 1] == 0))  # channel 1: its own marker or zero padding
        matches = _windows(batch[i, 0], data.images[i, 0], 4)
        assert len(matches) == 1  # every pixel value is unique, so exactly one window fits
        draws.add(matches[0])
    assert {flip for _, _, flip in draws} == {False, True} and len(draws) > 20
    jitter = apply_augmentation(data.images, "jitter", torch.Generator().manual_seed(0))
    shifts = [_windows(jitter[i, 0], data.images[i, 0], 2) for i in range(64)]
    assert all(len(m) == 1 and not m[0][2] for m in shifts)  # translation by up to ±2 pixels, never flipped
    assert len({m[0] for m in shifts}) > 10
    with pytest.raises(ValueError, match="crop_flip, jitter, none"):
        apply_augmentation(data.images, "autoaugment", torch.Generator())


def test_normalisation_and_device_move() -> None:
    data = _pattern_set(20).to("cpu")
    mean, std = (0.25, 0.5), (0.5, 2.0)
    batch = next(iter(iterate_batches(data, 8, shuffle=False, seed=0, epoch=0, augmentation="crop_flip",
                                      mean=mean, std=std, device=torch.device("cpu"))))  # fmt: skip
    expected = (data.images[:8].float() / 255 - torch.tensor(mean).view(1, 2, 1, 1)) / torch.tensor(std).view(
        1, 2, 1, 1
    )
    assert torch.allclose(batch["input"], expected)  # evaluation: no augmentation
    with pytest.raises(ValueError, match="allowed: crop_flip, jitter, none"):
        next(iter(iterate_batches(data, 8, shuffle=True, seed=0, epoch=0, augmentation="mixup", mean=mean, std=std,
                                  device="cpu")))  # fmt: skip


def test_contrast_indices_put_the_sample_first_and_negatives_of_other_classes() -> None:
    from kdbench.data import negatives_available, sample_contrast_indices

    targets = torch.tensor([0] * 6 + [1] * 3 + [2] * 3)
    index = torch.tensor([0, 7, 11])
    drawn = sample_contrast_indices(index, targets, 5, torch.Generator().manual_seed(0))
    assert drawn.shape == (3, 6) and torch.equal(drawn[:, 0], index)
    assert (targets[drawn[:, 1:]] != targets[index][:, None]).all()
    again = sample_contrast_indices(index, targets, 5, torch.Generator().manual_seed(0))
    assert torch.equal(drawn, again)
    assert negatives_available(targets, 3) == 6  # class 0 has 12 - 6 others


def test_iterate_batches_adds_contrast_indices_only_when_asked() -> None:
    images = ImageSet(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10) % 2)
    args = dict(shuffle=True, seed=0, epoch=1, augmentation="none", mean=(0.0,), std=(1.0,), device="cpu")
    plain = next(iterate_batches(images, 4, **args))
    assert "contrast_index" not in plain
    with_contrast = next(iterate_batches(images, 4, contrast_k=3, **args))
    assert with_contrast["contrast_index"].shape == (4, 4)
    assert torch.equal(with_contrast["contrast_index"][:, 0], with_contrast["index"])


def test_contrast_k_beyond_the_negatives_warns_and_states_the_fallback(caplog) -> None:
    from kdbench.data import warn_if_too_many_negatives

    targets = torch.tensor([0] * 6 + [1] * 3 + [2] * 3)
    with caplog.at_level("WARNING", logger="kdbench"):
        warn_if_too_many_negatives(5, targets, 3)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="kdbench"):
        warn_if_too_many_negatives(6, targets, 3)
    assert "K=6 >= 6 negatives" in caplog.text and "with replacement" in caplog.text


@pytest.mark.parametrize("count", [1, 2, 9, 10, 11, 12])
def test_training_batches_counts_what_iterate_batches_yields(count) -> None:
    from kdbench.data.batches import training_batches

    images = ImageSet(torch.zeros(count, 1, 4, 4, dtype=torch.uint8), torch.zeros(count, dtype=torch.int64))
    batches = iterate_batches(images, 5, shuffle=True, seed=0, epoch=1, augmentation="none", mean=(0.0,),
                              std=(1.0,), device="cpu")
    assert sum(1 for _ in batches) == training_batches(count, 5)
