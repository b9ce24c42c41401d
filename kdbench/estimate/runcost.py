"""Estimated cost of one run in seconds: measured epochs of finished runs where the grid has them, else a model.

The model (all of its assumptions are here):

    seconds = epochs × (train images × (3 × F_student + F_teacher) × method factor + evaluated images × F_student)
              / (ASSUMED_TFLOPS × 10¹²)

with F the forward FLOPs per image at the run's input size (kdbench.estimate.flops), backward taken as twice the
forward (the usual convention; torch's counter overstates grouped and depthwise convolutions' backward, so it
is not used), F_teacher only when the method uses a teacher, the method factor from method_factors.csv, and
evaluated images the test (and validation) images evaluated after every epoch. A teacher given by weights is
evaluated once. Data loading, checkpoints, and GPUs kept far below their peak by small networks are not modelled.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from kdbench.estimate.factors import method_factor
from kdbench.estimate.flops import forward_flops
from kdbench.estimate.sizes import dataset_sizes
from kdbench.runspec import RunSpec
from kdbench.tracking.index import RunSummary
from kdbench.tracking.record import RunRecord

#: The reference GPU the model's seconds are for, and the effective training throughput assumed for it: an
#: assumption, not a measurement (about 13% of the A100's 156 TFLOP/s TF32 tensor-core peak; ImageNet-size
#: ResNets in fp32/TF32 come near it, small CIFAR networks at batch 64 usually stay below it).
REFERENCE_GPU = "NVIDIA A100"
ASSUMED_TFLOPS = 20.0
#: Training FLOPs of a network per image as a multiple of its forward FLOPs (forward + backward ≈ 2 × forward).
TRAIN_FLOPS_PER_FORWARD = 3.0

Basis = Literal["model", "measured", "unknown"]
CostKey = tuple[str, str, str, str]  # (teacher|student, method label, pair, dataset variant)


@dataclass(frozen=True)
class RunCost:
    """Estimated seconds of a run (None when unknown), what they rest on, and whether its method factor is assumed."""

    seconds: float | None
    basis: Basis
    factor_assumed: bool = False


@dataclass(frozen=True)
class MeasuredRate:
    """Mean training seconds per epoch of a cell's finished runs, their mean training-set size, runs, devices."""

    seconds_per_epoch: float
    train_images: float
    runs: int
    devices: tuple[str, ...]


def cost_key(spec: RunSpec) -> CostKey:
    """The (stage, method, pair, dataset) cell whose finished runs measure a run's cost (tuning runs join their
    method's final runs: same networks, same step)."""
    label = spec.display_method.split("[")[0] if spec.tuning else spec.display_method
    return ("teacher" if spec.stage == "teacher" else "student", label, spec.pair, spec.dataset.variant)


def measured_rates(runs: Iterable[tuple[RunSpec, RunRecord | RunSummary | None]]) -> dict[CostKey, MeasuredRate]:
    """Per cost cell, the seconds per training epoch of its finished runs (``(spec, record)`` pairs, or the grid
    index's summaries in place of records; the report's cost table defines seconds per epoch the same way: the
    mean of a record's epoch seconds)."""
    cells: dict[CostKey, list[tuple[float, int, str]]] = defaultdict(list)
    for spec, record in runs:
        if spec.weights is not None or record is None or record.status != "done":
            continue
        if isinstance(record, RunSummary):  # the grid index's summary of the record: the same facts, precomputed
            if not record.epochs:
                continue
            device = str(record.device or "unknown device")
            cells[cost_key(spec)].append((record.seconds_per_epoch, record.train_images, device))
            continue
        if not record.history:
            continue
        device = str(record.provenance.get("device_name") or record.provenance.get("device") or "unknown device")
        seconds = sum(epoch.seconds for epoch in record.history) / len(record.history)
        cells[cost_key(spec)].append((seconds, sum(record.class_counts), device))
    return {key: MeasuredRate(sum(s for s, _, _ in found) / len(found), sum(n for _, n, _ in found) / len(found),
                              len(found), tuple(sorted({d for _, _, d in found})))
            for key, found in cells.items()}


class CostModel:
    """Estimates runs' seconds: from ``measured`` cells when given (and ``prefer_measured``), else the model."""

    def __init__(self, measured: dict[CostKey, MeasuredRate] | None = None, prefer_measured: bool = True) -> None:
        self.measured = measured or {}
        self.prefer_measured = prefer_measured

    def run_cost(self, spec: RunSpec) -> RunCost:
        """The run's estimated seconds and their basis."""
        rate = self.measured.get(cost_key(spec)) if self.prefer_measured else None
        if rate is not None:
            sizes = dataset_sizes(spec.dataset)
            scale = sizes.train / rate.train_images if sizes is not None and rate.train_images > 0 else 1.0
            return RunCost(rate.seconds_per_epoch * scale * spec.recipe.epochs, "measured")
        return model_cost(spec)


def model_cost(spec: RunSpec, count: bool = True) -> RunCost:
    """The model's seconds for ``spec`` on the reference GPU (see the module docstring); unknown when a dataset
    size or a network's FLOPs are unknown (``count=False``: FLOPs from the shipped table only, nothing is built)."""
    sizes = dataset_sizes(spec.dataset)
    if sizes is None:
        return RunCost(None, "unknown")
    student = _forward_flops(spec.arch, spec.arch_kwargs, spec, sizes.num_classes, count)
    if student is None:
        return RunCost(None, "unknown")
    if spec.weights is not None:  # a given teacher is evaluated once, not trained
        return RunCost(sizes.evaluated * student / (ASSUMED_TFLOPS * 1e12), "model")
    teacher = 0.0
    if spec.teacher is not None:
        found = _forward_flops(spec.teacher.arch, spec.teacher.arch_kwargs, spec, sizes.num_classes, count)
        if found is None:
            return RunCost(None, "unknown")
        teacher = found
    factor = method_factor(spec.method) if spec.stage == "student" else None
    step = (TRAIN_FLOPS_PER_FORWARD * student + teacher) * (factor.factor if factor is not None else 1.0)
    per_epoch = sizes.train * step + sizes.evaluated * student
    return RunCost(spec.recipe.epochs * per_epoch / (ASSUMED_TFLOPS * 1e12), "model",
                   factor_assumed=factor is not None and not factor.listed)


def _forward_flops(arch: str, kwargs: dict, spec: RunSpec, num_classes: int, count: bool) -> float | None:
    from kdbench.models import model_info

    try:
        info = model_info(arch, **kwargs)
    except (KeyError, TypeError, ValueError):
        return None
    return forward_flops(arch, kwargs, info.in_channels, spec.dataset.image_size or info.input_size, num_classes,
                         count)
