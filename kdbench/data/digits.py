"""scikit-learn's bundled 8×8 digits (offline, no files): the demo dataset."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from kdbench.data.longtail import held_out_size, stratified_split
from kdbench.data.sources import RawData, register_dataset
from kdbench.data.spec import DatasetSpec

#: Images per class in scikit-learn's digits (1,797 in all).
DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
#: Share of each class that forms the fixed test split.
DIGITS_TEST_FRACTION = 1 / 3
#: Seed of the fixed train/test split (independent of the spec's subset seed).
DIGITS_SPLIT_SEED = 0


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (N×64 pixel values 0..16, N labels), as ``sklearn.datasets.load_digits`` gives.

    Reads the bundled ``sklearn/datasets/data/digits.csv.gz`` directly when it is there (importing scikit-learn
    costs about 2 s here); falls back to ``load_digits`` otherwise.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            if data.shape == (sum(DIGITS_CLASS_COUNTS), 65):
                return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target.astype(np.int64)


def _train_counts(spec: DatasetSpec) -> list[int]:
    return [n - held_out_size(n, DIGITS_TEST_FRACTION) for n in DIGITS_CLASS_COUNTS]


@register_dataset("digits", train_class_counts=_train_counts, native_shape=(1, 8, 8), augmentation="none")
def load_digits_data(spec: DatasetSpec) -> RawData:
    """scikit-learn's ``load_digits``: 1,797 grey 8×8 images, 10 classes; pixel values 0..16 scaled to 0..255.

    There is no official split: a fixed stratified split (seed DIGITS_SPLIT_SEED = 0, not the subset seed)
    holds out ``floor(n_c / 3 + 0.5)`` images of each class as the test set: 1,198 train / 599 test images.
    Class names are "0".."9". build_data resizes the images to the model's input size (e.g. 28 or 32).
    """
    pixels, labels = read_digits()
    values = torch.from_numpy(pixels).to(torch.float64).view(-1, 8, 8)  # integers 0..16
    images = torch.round(values * (255.0 / 16.0)).to(torch.uint8).unsqueeze(1).contiguous()
    targets = torch.from_numpy(labels).to(torch.int64)
    generator = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    train_idx, test_idx = stratified_split(targets, len(DIGITS_CLASS_COUNTS), DIGITS_TEST_FRACTION, generator)
    names = [str(c) for c in range(len(DIGITS_CLASS_COUNTS))]
    return RawData(images[train_idx], targets[train_idx], images[test_idx], targets[test_idx], names)
