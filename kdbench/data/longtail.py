"""Per-class counts of long-tailed subsets and the seeded per-class splits that pick the images."""

from __future__ import annotations

import math

import torch

PROFILES = ("exp", "step")


def long_tailed_counts(n_max: int, num_classes: int, imbalance_ratio: float, profile: str = "exp") -> list[int]:
    """Training images kept per class (0-based label order) by the LDAM-DRW long-tail construction.

    ``exp``: class c keeps ``int(n_max * (1 / rho) ** (c / (C - 1.0)))`` images, exactly the LDAM-DRW reference
    expression (int() floors these positive values); written this way, not as ``rho ** (-c / (C - 1))``, so that
    floating point rounds as in the reference and the published totals come out (CIFAR-100-LT, n_max=500:
    10,847 / 12,608 / 19,573 for rho = 100 / 50 / 10; CIFAR-10-LT, n_max=5000, rho=100: 12,406).
    ``step``: classes c < C // 2 keep n_max, the others ``int(n_max * (1 / rho))`` (floored, e.g. 500 / 3 -> 166);
    with an odd C the middle class belongs to the second (minority) half.
    """
    if profile not in PROFILES:
        raise ValueError(f"long-tail profile '{profile}' is unknown; allowed: {', '.join(PROFILES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: a long-tailed subset needs at least 2 classes")
    if n_max < 1:
        raise ValueError(f"n_max={n_max}: the largest class must keep at least 1 image")
    rho = float(imbalance_ratio)
    if not (math.isfinite(rho) and rho >= 1):
        raise ValueError(f"imbalance_ratio={imbalance_ratio!r}: rho = n_max / n_min must be a finite number >= 1")
    inverse = 1.0 / rho
    if profile == "exp":
        return [int(n_max * inverse ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    half = num_classes // 2
    return [n_max if c < half else int(n_max * inverse) for c in range(num_classes)]


def per_class_indices(targets: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """Ascending positions of each class's samples in ``targets``."""
    return [torch.nonzero(targets == c, as_tuple=False).flatten() for c in range(num_classes)]


def long_tailed_split(
    targets: torch.Tensor, counts: list[int], val_per_class: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded long-tailed subset plus a balanced validation set from the discarded images.

    For each class c (in label order) one permutation of its images is drawn from ``generator``; the first
    ``counts[c]`` form the training subset and the next ``min(val_per_class, pool_c)`` (a uniform draw from the
    discarded pool, since the permutation is random) the validation set. The training subset therefore does not
    depend on ``val_per_class``. Returns (train indices, validation indices), each sorted ascending.

    Our choice where docs/protocol.md is silent: the head classes of CIFAR-LT keep all their images (class 0 keeps
    n_max of n_max), so their discarded pool is empty or smaller than ``val_per_class``; such classes give what
    their pool holds (class 0: nothing) rather than shrinking the literature's training sets. The validation set
    is therefore balanced over the classes whose pool is large enough, and records carry its per-class totals.
    Raises ValueError when a class has fewer images than it must keep.
    """
    train_parts, val_parts = [], []
    for c, idx in enumerate(per_class_indices(targets, len(counts))):
        if counts[c] > len(idx):
            raise ValueError(f"class {c} has {len(idx)} training images but the long-tailed subset keeps {counts[c]}")
        perm = idx[torch.randperm(len(idx), generator=generator)]
        train_parts.append(perm[: counts[c]])
        val_parts.append(perm[counts[c] : counts[c] + val_per_class])  # slicing caps it at the pool's size
    return _sorted_cat(train_parts), _sorted_cat(val_parts)


def held_out_size(count: int, fraction: float) -> int:
    """Images of a class of ``count`` held out by a stratified split: ``floor(count * fraction + 0.5)``."""
    return int(math.floor(count * fraction + 0.5))


def stratified_split(
    targets: torch.Tensor, num_classes: int, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified split: (kept indices, held-out indices), each sorted ascending.

    Class c holds out ``held_out_size(n_c, fraction)`` images (round half up), the first ones of a permutation
    drawn from ``generator``; every class must keep at least one image.
    """
    kept_parts, held_parts = [], []
    for c, idx in enumerate(per_class_indices(targets, num_classes)):
        n_held = held_out_size(len(idx), fraction)
        if len(idx) and n_held >= len(idx):
            raise ValueError(f"fraction {fraction} would hold out all {len(idx)} images of class {c}")
        perm = idx[torch.randperm(len(idx), generator=generator)]
        held_parts.append(perm[:n_held])
        kept_parts.append(perm[n_held:])
    return _sorted_cat(kept_parts), _sorted_cat(held_parts)


def _sorted_cat(parts: list[torch.Tensor]) -> torch.Tensor:
    if not parts:
        return torch.zeros(0, dtype=torch.int64)
    return torch.sort(torch.cat(parts)).values.to(torch.int64)
