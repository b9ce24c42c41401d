"""The one loss interface every KD method implements: DistillLoss, its Needs, and what it is built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from kdbench.registry import Registry, closest_match_hint

METHODS: Registry[type[DistillLoss]] = Registry("method", entry_point_group="kdbench.methods")


def register_method(name: str):
    """Class decorator: register a DistillLoss subclass under ``name`` and record the name on it."""

    def decorator(cls: type[DistillLoss]) -> type[DistillLoss]:
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


@dataclass(frozen=True)
class Needs:
    """What a method needs from the harness: taps per network, batch extras, views and dataset facts."""

    student_taps: tuple[str, ...] = ("logits",)  # "stage*" stands for every stageK of the model
    teacher_taps: tuple[str, ...] = ("logits",)
    batch_extras: tuple[str, ...] = ()
    views: str = "single"
    dataset_facts: tuple[str, ...] = ()
    integer_labels: bool = True

    @property
    def teacher(self) -> bool:
        """Whether the method uses a teacher at all (vanilla does not)."""
        return bool(self.teacher_taps)

    def describe(self) -> str:
        """One-line summary for `kdbench methods`."""
        parts = [f"student taps: {', '.join(self.student_taps)}"]
        parts.append(f"teacher taps: {', '.join(self.teacher_taps) or 'none (no teacher)'}")
        if self.batch_extras:
            parts.append(f"batch: {', '.join(self.batch_extras)}")
        parts.append(f"views: {self.views}")
        if self.dataset_facts:
            parts.append(f"dataset: {', '.join(self.dataset_facts)}")
        return "; ".join(parts)


@dataclass(frozen=True)
class LossContext:
    """Facts a method may size itself from: tap shapes (no batch dim), classes, dataset size, epochs."""

    num_classes: int
    student_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    teacher_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_samples: int = 0
    class_counts: tuple[int, ...] = ()
    epochs: int = 1


@dataclass(frozen=True)
class PlanFacts:
    """What plan time knows about one run: batch size, epochs and the tap shapes (no batch dim) of its networks."""

    batch_size: int
    epochs: int
    student_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    teacher_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """Where training is: epoch counts from 1, step from 0 within the epoch."""

    epoch: int
    epochs: int
    step: int = 0
    steps_per_epoch: int = 1

    @property
    def fraction(self) -> float:
        """Share of training completed before this step, in [0, 1)."""
        done_steps = (self.epoch - 1) * self.steps_per_epoch + self.step
        return done_steps / max(1, self.epochs * self.steps_per_epoch)


def check_view_rows(method: str, view: str, copies: int, target: torch.Tensor,
                    **tensors: torch.Tensor) -> int:
    """Raise ValueError unless every tensor holds ``copies`` × B rows (B = len(target)); return B."""
    size = target.shape[0]
    wrong = {name: t.shape[0] for name, t in tensors.items() if t.shape[0] != copies * size}
    if wrong:
        raise ValueError(f"{method} needs the {view} view: {copies}×{size} rows, got "
                         + ", ".join(f"{rows} {name} rows" for name, rows in wrong.items()))
    return size


def loss_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype a pure loss computes in: fp16/bf16 inputs are upcast to fp32, fp32 and fp64 are kept."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


class DistillLoss(nn.Module):
    """Base class of every method: returns a dict of already-weighted loss terms, "ce" included."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs()
    defaults: ClassVar[dict[str, Any]] = {}
    #: K negatives per sample, set by methods whose needs include the batch extra "contrast_index"
    contrast_k: int | None = None

    def __init__(self, ctx: LossContext, **hparams: Any) -> None:
        super().__init__()
        self.check_hparams(hparams)
        self.ctx = ctx
        self.hparams: dict[str, Any] = {**self.defaults, **hparams}

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any]) -> None:
        """Raise ValueError naming any hyper-parameter this method does not have."""
        allowed = sorted(cls.defaults)
        for key in hparams:
            if key not in cls.defaults:
                raise ValueError(
                    f"method '{cls.name}' has no hyper-parameter '{key}'{closest_match_hint(key, allowed)}; "
                    f"allowed: {', '.join(allowed) or 'none'}"
                )

    @classmethod
    def needs_for(cls, hparams: dict[str, Any]) -> Needs:
        """The needs of this method with these hyper-parameters (e.g. FitNet's hint stage); default: ``needs``."""
        return cls.needs

    @classmethod
    def check_plan(cls, hparams: dict[str, Any], facts: PlanFacts) -> None:
        """Raise ValueError naming the value if these (resolved) hyper-parameters cannot run on this plan."""

    @classmethod
    def resolve_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with the given values (validated), as stored in a RunSpec."""
        cls.check_hparams(hparams)
        resolved = {**cls.defaults, **hparams}
        for key, default in cls.defaults.items():
            value = resolved[key]
            # 4 and 4.0 must give the same run id
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                resolved[key] = float(value)
        return resolved

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return the weighted loss terms for one batch; the engine sums them."""
        raise NotImplementedError
