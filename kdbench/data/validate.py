"""Cheap checks of a DatasetSpec (no loading): one clear line naming the field, the value and what is allowed."""

from __future__ import annotations

from kdbench.data.longtail import held_out_size, long_tailed_counts
from kdbench.data.sources import DatasetSource, get_source
from kdbench.data.spec import DatasetSpec
from kdbench.registry import UnknownNameError


def validate_dataset_spec(spec: DatasetSpec, *, require_files: bool = True) -> None:
    """Raise ValueError (message starts with the field, e.g. 'dataset.root: ...') for a spec that cannot load.

    Checks: the dataset name is registered; file-based datasets (mnist, cifar10, cifar100) have their files under
    ``root`` (or, with ``download: true``, at least a root to download into); a long-tailed spec leaves every
    class at least one image and sets no ``val_fraction``; a balanced spec's ``val_fraction`` leaves every class
    at least one training image. With ``require_files=False`` missing files pass (planning without data;
    ``missing_data`` says what is missing and `kdbench run` stops on it before submitting): the class-count checks
    still run for sources whose counts are known without files (digits, mnist, cifar10/100) and are left to the
    run for image-file sources (imagenet, imagenet_lt, image_folder).
    """
    try:
        source = get_source(spec.name)
    except UnknownNameError as exc:
        raise ValueError(f"dataset.name: {exc}") from None
    if source.streams and spec.long_tail is not None and spec.name == "imagenet_lt":
        raise ValueError("dataset.long_tail: imagenet_lt is long-tailed by its split files; remove long_tail")
    if not require_files and missing_data(spec) is not None:
        if source.streams:
            return
    else:
        _check_files(spec, source)
    counts = source.train_class_counts(spec)
    if spec.long_tail is not None:
        _check_long_tail(spec, counts)
    elif spec.val_fraction > 0:
        for c, n in enumerate(counts):
            if held_out_size(n, spec.val_fraction) >= n:
                raise ValueError(
                    f"dataset.val_fraction: {spec.val_fraction:g} would hold out all {n} training images of class "
                    f"{c} of {spec.name}; use a smaller fraction"
                )


def missing_data(spec: DatasetSpec) -> str | None:
    """None when ``spec``'s files are present (or it needs none), else one line naming what is missing."""
    source = get_source(spec.name)
    return source.missing_files(spec) if source.missing_files is not None else None


def _check_files(spec: DatasetSpec, source: DatasetSource) -> None:
    if source.missing_files is None:
        return
    if spec.download:
        if spec.root is None:
            raise ValueError(f"dataset.root: download: true needs a folder to download '{spec.name}' into; none is set")
        return
    problem = source.missing_files(spec)
    if problem is not None:
        raise ValueError(f"dataset.root: {problem}")


def _check_long_tail(spec: DatasetSpec, counts: list[int]) -> None:
    long_tail = spec.long_tail
    assert long_tail is not None
    rho = long_tail.imbalance_ratio
    if spec.val_fraction > 0:
        raise ValueError(
            f"dataset.val_fraction: {spec.val_fraction:g} applies to balanced datasets only; a long-tailed "
            "dataset draws its validation set from the discarded images (dataset.val_per_class); set it to 0"
        )
    n_max = min(counts)
    kept = long_tailed_counts(n_max, len(counts), rho, long_tail.profile)
    empty = [c for c, k in enumerate(kept) if k == 0]
    if empty:
        limit = "at most" if long_tailed_counts(n_max, len(counts), n_max, long_tail.profile)[-1] >= 1 else "below"
        raise ValueError(
            f"dataset.long_tail.imbalance_ratio: {rho:g} would leave class {empty[0]} of {spec.name} with 0 "
            f"training images (n_max={n_max}, smallest class keeps floor(n_max / rho)); allowed: rho >= 1 and "
            f"{limit} {n_max}"
        )
