"""The one loss interface every KD method implements: DistillLoss, its Needs, and what it is built from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.registry import Registry, closest_match_hint

METHODS: Registry[type[DistillLoss]] = Registry("method", entry_point_group="kdbench.methods")

#: How every method computes its student's CE term (the hyper-parameter ``student_ce``, with ``tau``).
STUDENT_CE_CHOICES = ("plain", "logit_adjusted", "balanced_softmax")
#: Hyper-parameters every method accepts besides its own ``defaults``.
STUDENT_CE_DEFAULTS: dict[str, Any] = {"student_ce": "plain", "tau": 1.0}


def register_method(name: str):
    """Class decorator: register a DistillLoss subclass under ``name`` and record the name on it."""

    def decorator(cls: type[DistillLoss]) -> type[DistillLoss]:
        shadowed = sorted(set(cls.defaults) & set(STUDENT_CE_DEFAULTS))
        if shadowed:
            raise ValueError(f"method '{name}' defines {', '.join(shadowed)}, which every method has (the student's "
                             "CE term); rename it")
        check_term_weights(name, cls)
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


def check_term_weights(name: str, cls: type[DistillLoss]) -> None:
    """Raise ValueError unless every weight ``cls.term_weights`` names is a numeric key of ``cls.defaults``.

    The inherited ``{"ce": "ce_weight"}`` of a method without a ``ce_weight`` only leaves its CE as logged.
    """
    if cls.term_weights is DistillLoss.term_weights:
        return
    numeric = [key for key, value in cls.defaults.items() if _is_number(value)]
    for term, weight in cls.term_weights.items():
        if weight not in numeric:
            raise ValueError(f"method '{name}': term_weights['{term}'] = '{weight}' must name a numeric "
                             f"hyper-parameter of its defaults; allowed: {', '.join(numeric) or 'none'}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def log_class_prior(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """float64 ``log π_c = log(n_c / Σ_k n_k)`` of per-class training counts (on the CPU); every count must be > 0."""
    counts = torch.as_tensor(class_counts).detach().cpu().to(torch.float64)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"class counts must be one count per class, got shape {tuple(counts.shape)}")
    empty = (counts <= 0).nonzero().flatten()
    if empty.numel():
        shown = {int(c): float(counts[c]) for c in empty[:5]}
        raise ValueError(f"every class needs a positive training count for a class prior, got {len(empty)} "
                         f"class(es) without (class: count {shown})")
    return counts.log() - counts.sum().log()


def _shifted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, shift: torch.Tensor,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean CE of ``logits + shift`` (shift: C per-class offsets), in fp32 for fp16/bf16 logits."""
    dtype = loss_dtype(logits)
    adjusted = logits.to(dtype) + shift.to(device=logits.device, dtype=dtype)
    return F.cross_entropy(adjusted, target, label_smoothing=label_smoothing)


def logit_adjusted_ce(logits: torch.Tensor, target: torch.Tensor, class_counts: Sequence[int] | torch.Tensor,
                      tau: float, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Logit-adjusted CE (Menon et al., ICLR 2021): mean ``CE(z + τ·log π, y)``, π the training class prior.

    ``class_counts`` holds the C training counts (all > 0). τ = 1 is balanced softmax (Ren et al., NeurIPS 2020):
    its ``z + log n_c`` differs from ``z + log π_c`` by ``log Σ n`` in every entry, which softmax ignores; τ = 0,
    or uniform counts, give plain CE. Only the training loss is adjusted: predictions use the raw logits z.
    Computed in fp32 for fp16/bf16 logits, fp64 kept (the prior is computed in fp64, then cast).
    """
    shift = tau * log_class_prior(class_counts)
    if shift.shape[0] != logits.shape[1]:
        raise ValueError(f"logit adjustment: {shift.shape[0]} class counts for logits of {logits.shape[1]} classes")
    return _shifted_cross_entropy(logits, target, shift, label_smoothing)


def check_student_ce(method: str, hparams: dict[str, Any]) -> None:
    """Raise ValueError (one line, naming field, value and what is allowed) on a bad ``student_ce`` or ``tau``.

    Checks the values given; ``tau`` beside a ``student_ce`` other than logit_adjusted only when both are given
    (an override may set ``tau`` alone: ``resolve_hparams`` checks the merged values).
    """
    mode = hparams.get("student_ce", "plain")
    if "student_ce" in hparams and mode not in STUDENT_CE_CHOICES:
        hint = closest_match_hint(mode, list(STUDENT_CE_CHOICES)) if isinstance(mode, str) else ""
        raise ValueError(f"method '{method}': student_ce {mode!r} is unknown{hint}; allowed: "
                         f"{', '.join(STUDENT_CE_CHOICES)}")
    if "tau" in hparams:
        tau = hparams["tau"]
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"method '{method}': tau must be a number > 0 (the strength of student_ce: "
                             f"logit_adjusted), got {tau!r}")
        if "student_ce" in hparams and mode != "logit_adjusted":
            raise ValueError(f"method '{method}': tau applies to student_ce: logit_adjusted only, got student_ce: "
                             f"{mode} (balanced_softmax is tau = 1)")


def _student_ce_shift(method: str, ctx: LossContext, hparams: dict[str, Any]) -> torch.Tensor | None:
    """The fp32 per-class offsets ``τ·log π`` the student's CE adds to its logits; None for plain CE."""
    mode = hparams.get("student_ce", "plain")
    if mode == "plain":
        return None
    tau = float(hparams.get("tau", 1.0)) if mode == "logit_adjusted" else 1.0
    if len(ctx.class_counts) != ctx.num_classes:
        raise ValueError(f"method '{method}': student_ce: {mode} needs the training counts of all {ctx.num_classes} "
                         f"classes (LossContext.class_counts), got {len(ctx.class_counts)}")
    try:
        log_prior = log_class_prior(ctx.class_counts)
    except ValueError as error:
        raise ValueError(f"method '{method}': student_ce: {mode}: {error}") from None
    return (tau * log_prior).float()


class DistillLoss(nn.Module):
    """Base class of every method: returns a dict of already-weighted loss terms, "ce" included.

    Every method also takes ``student_ce`` (``plain`` | ``logit_adjusted`` | ``balanced_softmax``) and, for
    ``logit_adjusted``, ``tau`` (default 1): its "ce" term is ``self.student_ce_loss(logits, target)``, which is
    ``F.cross_entropy`` for plain and the CE of ``logits + τ·log π`` otherwise (``logit_adjusted_ce``; π from
    ``ctx.class_counts``; balanced_softmax is τ = 1, kept as its own name so reports show what the grid asked).

    ``term_weights`` says which hyper-parameter multiplies each returned term, e.g. ``{"ce": "ce_weight",
    "kd": "kd_weight"}`` for ``ce_weight·CE + kd_weight·KD`` (default ``{"ce": "ce_weight"}``). The records keep
    the weighted terms; the report's training curves divide each by its weight from the run's hyper-parameters
    to plot it unweighted (a term whose weight is 0 is left out; a term not named here is plotted as logged and
    labelled so). Every name must be a key of ``defaults`` (checked at registration). A weight that changes with
    the epoch (DKD's warm-up) overrides ``term_scales`` and says how in ``term_weight_note``.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs()
    defaults: ClassVar[dict[str, Any]] = {}
    #: logged term → the hyper-parameter that multiplies it (see the class docstring)
    term_weights: ClassVar[dict[str, str]] = {"ce": "ce_weight"}
    #: one line for the report when a weight is not just a hyper-parameter (e.g. a warm-up factor)
    term_weight_note: ClassVar[str] = ""
    #: K negatives per sample, set by methods whose needs include the batch extra "contrast_index"
    contrast_k: int | None = None

    def __init__(self, ctx: LossContext, **hparams: Any) -> None:
        super().__init__()
        self.check_hparams(hparams)
        check_student_ce(self.name, {"student_ce": "plain", **hparams})
        self.ctx = ctx
        self.hparams: dict[str, Any] = {**self.defaults, **hparams}
        # not persistent: derived from ctx, so checkpoints stay as they were
        self.register_buffer("student_ce_shift", _student_ce_shift(self.name, ctx, self.hparams), persistent=False)

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any]) -> None:
        """Raise ValueError naming any hyper-parameter this method does not have, or a bad student_ce/tau."""
        allowed = sorted({*cls.defaults, *STUDENT_CE_DEFAULTS})
        for key in hparams:
            if key not in cls.defaults and key not in STUDENT_CE_DEFAULTS:
                raise ValueError(
                    f"method '{cls.name}' has no hyper-parameter '{key}'{closest_match_hint(key, allowed)}; "
                    f"allowed: {', '.join(allowed) or 'none'}"
                )
        check_student_ce(cls.name, hparams)

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
        check_student_ce(cls.name, {"student_ce": "plain", **resolved})
        # plain CE is stored as before (no key), so run ids of existing runs do not change
        mode = resolved.pop("student_ce", "plain")
        if mode == "logit_adjusted":
            resolved.update(student_ce=mode, tau=float(resolved.get("tau", STUDENT_CE_DEFAULTS["tau"])))
        elif mode == "balanced_softmax":
            resolved["student_ce"] = mode
        return resolved

    @classmethod
    def term_scales(cls, hparams: dict[str, Any], epochs: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """The factor each logged term was multiplied by at each of ``epochs`` (1-based), from ``term_weights``.

        ``hparams`` are a run's (resolved) hyper-parameters, overlaid on ``defaults``; a term whose weight is not a
        hyper-parameter here is absent. Override (calling this) when a weight varies with the epoch.
        """
        resolved = {**cls.defaults, **hparams}
        shape = np.shape(epochs)
        return {term: np.full(shape, float(resolved[weight])) for term, weight in cls.term_weights.items()
                if _is_number(resolved.get(weight))}

    def student_ce_loss(self, logits: torch.Tensor, target: torch.Tensor, *,
                        label_smoothing: float = 0.0) -> torch.Tensor:
        """The student's (unweighted) CE term as ``student_ce`` says: plain, logit_adjusted or balanced_softmax."""
        if self.student_ce_shift is None:
            return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
        return _shifted_cross_entropy(logits, target, self.student_ce_shift, label_smoothing)

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return the weighted loss terms for one batch; the engine sums them."""
        raise NotImplementedError
