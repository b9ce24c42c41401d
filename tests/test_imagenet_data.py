"""Image-file datasets on a tiny generated ImageFolder: split files, counts, bad input, exact and shardable batches."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from imagefolder import (
    CLASSES,
    LT_TRAIN_COUNTS,
    TEST_PER_CLASS,
    TRAIN_PER_CLASS,
    VAL_PER_CLASS,
    write_image_folder,
    write_lt_splits,
)

from kdbench.config import ConfigError, parse_grid
from kdbench.data import DatasetSpec, FileImageSet, build_data, eval_batches, train_batches
from kdbench.data.decode import eval_transform, load_rgb, random_resized_box
from kdbench.data.files import read_split_file
from kdbench.data.imagenet import IMAGENET_STATS
from kdbench.grid.preflight import preflight_problems

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(ImageNet-style root, folder of the ImageNet-LT split files) written once for the module."""
    base = tmp_path_factory.mktemp("tiny_imagenet")
    root = write_image_folder(base / "root")
    return root, write_lt_splits(root, base / "splits")


def _lt(tiny, **fields) -> DatasetSpec:
    root, splits = tiny
    return DatasetSpec(name="imagenet_lt", root=str(root), split_dir=str(splits), image_size=16, **fields)


def test_imagenet_lt_counts_its_split_and_says_so(tiny, caplog):
    with caplog.at_level(logging.INFO, logger="kdbench"):
        data = build_data(_lt(tiny), 32, 3)
    assert data.class_counts == list(LT_TRAIN_COUNTS) and data.num_classes == len(CLASSES)
    assert "26 training images, 4 classes, 12 to 3 per class" in caplog.text
    assert len(data.val) == VAL_PER_CLASS * len(CLASSES) and len(data.test) == TEST_PER_CLASS * len(CLASSES)
    assert isinstance(data.train, FileImageSet) and data.input_shape == (3, 16, 16)
    assert (data.mean, data.std) == IMAGENET_STATS
    assert data.class_names == list(CLASSES)


def test_imagenet_folder_and_a_stratified_validation_slice(tiny):
    root, _ = tiny
    data = build_data(DatasetSpec(name="imagenet", root=str(root), val_fraction=0.25), 24, 3)
    per_class = TRAIN_PER_CLASS + VAL_PER_CLASS
    assert data.class_counts == [per_class - round(per_class * 0.25)] * len(CLASSES)
    assert len(data.val) == len(CLASSES) * round(per_class * 0.25) and data.input_shape == (3, 24, 24)
    assert set(data.train.paths.tolist()).isdisjoint(data.val.paths.tolist())


def test_image_folder_long_tail_follows_the_cifar_construction(tiny):
    root, _ = tiny
    spec = DatasetSpec(name="image_folder", root=str(root), long_tail={"imbalance_ratio": 4}, val_per_class=1)
    data = build_data(spec, 16, 3)
    assert data.class_counts == [14, 8, 5, 3]  # floor(14 · 4^(−c/3))
    assert data.val.targets.tolist() == [1, 2, 3]  # from the discarded pool; class 0 keeps all its images


def test_split_file_errors_name_the_file_and_line(tiny, tmp_path):
    root, splits = tiny
    bad = tmp_path / "bad.txt"
    bad.write_text("train/n00000001/n00000001_train_0.JPEG 0\ntrain/n00000001/missing.JPEG 0\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: image train/n00000001/missing.JPEG does not exist under"):
        read_split_file(bad, root)
    bad.write_text("train/n00000001/n00000001_train_0.JPEG 7\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: label 7 is outside \[0, 4\)"):
        read_split_file(bad, root, num_classes=4)
    bad.write_text("just-a-path.JPEG\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: 'just-a-path.JPEG' is not a 'relative/path label' line"):
        read_split_file(bad, root)


def test_grids_plan_without_data_and_a_run_is_stopped_before_submission(tmp_path):
    raw = {"name": "lt", "datasets": [{"name": "imagenet_lt", "root": str(tmp_path / "nowhere")}],
           "pairs": [{"teacher": "resnet8", "student": "resnet8"}], "methods": ["kd"], "seeds": [0]}
    grid = parse_grid(raw)  # planning needs no data
    assert preflight_problems(grid) == [f"datasets[0].root: {tmp_path / 'nowhere'} (dataset 'imagenet_lt') does "
                                        "not exist"]
    with pytest.raises(ConfigError, match="imagenet_lt is long-tailed by its split files"):
        parse_grid({**raw, "datasets": [{"name": "imagenet_lt", "long_tail": {"imbalance_ratio": 10}}]})


def test_a_pretrained_teacher_on_imagenet_lt_is_refused_unless_allowed(tmp_path):
    raw = {"name": "lt", "datasets": [{"name": "imagenet_lt", "root": str(tmp_path)}],
           "pairs": [{"teacher": {"arch": "resnet18", "weights": "pretrained"}, "student": "resnet18"}],
           "methods": ["kd"], "seeds": [0]}
    with pytest.raises(ConfigError, match=r"pairs\[0\].teacher.weights = 'pretrained' on imagenet_lt: .* held-out "
                                          r"tail .* allow_leaky_teacher: true"):
        parse_grid(raw)
    assert parse_grid({**raw, "allow_leaky_teacher": True}).allow_leaky_teacher
    with pytest.raises(ConfigError, match="a student is always trained"):
        parse_grid({**raw, "pairs": [{"teacher": "resnet8", "student": {"arch": "resnet8", "weights": "x.pt"}}]})


def _epoch(files: FileImageSet, epoch: int, workers: int, shard=(0, 1), batch_size: int = 6) -> list[dict]:
    batches = train_batches(files, batch_size, seed=3, augmentation="random_resized_crop_flip", mean=IMAGENET_STATS[0],
                            std=IMAGENET_STATS[1], device=CPU, workers=workers, shard=shard, contrast_k=3)
    return list(batches(epoch))


def test_an_epoch_is_the_same_with_any_worker_count_and_differs_between_epochs(tiny):
    files = build_data(_lt(tiny), 16, 3).train
    alone, pooled = _epoch(files, 2, workers=0), _epoch(files, 2, workers=2)
    assert len(alone) == 5  # 26 images in batches of 6: the last batch of 2 is kept
    for a, b in zip(alone, pooled, strict=True):
        assert a.keys() == b.keys() == {"input", "target", "index", "contrast_index"}
        for key in a:
            assert torch.equal(a[key], b[key]), key
    other = _epoch(files, 3, workers=0)
    assert not torch.equal(alone[0]["index"], other[0]["index"])
    assert alone[0]["input"].dtype == torch.float32 and alone[0]["input"].shape == (6, 3, 16, 16)


def test_shards_of_two_ranks_are_the_one_process_batches(tiny):
    files = build_data(_lt(tiny), 16, 3).train
    whole = _epoch(files, 1, workers=0, batch_size=7)
    shards = [_epoch(files, 1, workers=0, shard=(rank, 2), batch_size=7) for rank in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 4  # 26 = 3 × 7 + 5
    for one, first, second in zip(whole, *shards, strict=True):
        for key in one:
            assert torch.equal(one[key], torch.cat([first[key], second[key]])), key


def test_evaluation_blocks_of_ranks_cover_the_set_once(tiny):
    data = build_data(_lt(tiny), 16, 3)
    args = dict(mean=data.mean, std=data.std, device=CPU)
    whole = list(eval_batches(data.test, 5, **args)())
    blocks = [list(eval_batches(data.test, 5, shard=(rank, 2), **args)()) for rank in range(2)]
    indices = torch.cat([b["index"] for block in blocks for b in block])
    assert torch.equal(indices, torch.arange(len(data.test)))
    assert torch.equal(torch.cat([b["input"] for b in whole]), torch.cat([b["input"] for bl in blocks for b in bl]))


def test_crop_boxes_stay_inside_the_image_and_eval_crops_the_centre(tiny):
    import random

    rng = random.Random(0)
    for width, height in [(40, 30), (30, 40), (500, 375), (8, 200)]:
        for _ in range(50):
            left, top, w, h = random_resized_box(width, height, rng)
            assert left >= 0 and top >= 0 and w > 0 and h > 0 and left + w <= width and top + h <= height
    root, _ = tiny
    image = load_rgb(next((root / "val" / CLASSES[0]).iterdir()))
    pixels = eval_transform(image, 16)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.uint8
    with pytest.raises(ValueError, match="cannot decode image"):
        bad = root.parent / "not-an-image.JPEG"
        bad.write_bytes(b"nope")
        load_rgb(bad)


def test_default_loader_workers_follow_the_cpus_given(monkeypatch):
    from kdbench.data.streaming import default_workers

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "16")
    assert (default_workers(), default_workers(2), default_workers(32)) == (15, 7, 0)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")
    assert default_workers() == 16
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    import os

    assert default_workers() == max(0, min(len(os.sched_getaffinity(0)) - 1, 16))
