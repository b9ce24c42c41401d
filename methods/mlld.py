"""MLLD: Jin, Wang & Lin, "Multi-Level Logit Distillation", CVPR 2023.

Often called "MLKD" in literature tables; kdbench's ``mlkd`` is a different method (Ding et al., see mlkd.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from kdbench.loss import DistillLoss, LossContext, Needs, Progress, check_view_rows, loss_dtype, register_method
from kdbench.methods.kd import kd_loss

VARIANTS = ("described", "released")
#: In the released code the "strong" instance (and the unused strong class) sums take the WEAK logits at these
#: temperatures (its list is [T0, 3, 5, 2, 6] and the last two were copied from the weak block).
RELEASED_WEAK_TEMPERATURES = (2.0, 6.0)


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → fp32 for the loss arithmetic; fp32 and fp64 are kept as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _full_precision(x: torch.Tensor) -> torch.autocast:
    """Autocast switched off on ``x``'s device, so the similarity matmuls run in fp32 under bf16 training."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _softened(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.softmax(_fp32(logits) / temperature, dim=1)


def _batch_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample rows of the batch term: ``Σ_j (G_t − G_s)_ij²`` with ``G = P·Pᵀ`` (B values)."""
    with _full_precision(student_logits):
        p_student = _softened(student_logits, temperature)
        p_teacher = _softened(teacher_logits.detach(), temperature)
        return ((p_teacher @ p_teacher.T - p_student @ p_student.T) ** 2).sum(dim=1)


def _class_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-class rows of the class term: ``Σ_d (M_t − M_s)_cd²`` with ``M = Pᵀ·P`` (C values)."""
    with _full_precision(student_logits):
        p_student = _softened(student_logits, temperature)
        p_teacher = _softened(teacher_logits.detach(), temperature)
        return ((p_teacher.T @ p_teacher - p_student.T @ p_student) ** 2).sum(dim=1)


def batch_correlation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Unweighted batch-level term ``‖G_t − G_s‖_F² / B``, ``G = P·Pᵀ`` (B×B), ``P = softmax(z/T)``."""
    return _batch_rows(student_logits, teacher_logits, temperature).sum() / student_logits.shape[0]


def class_correlation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Unweighted class-level term ``‖M_t − M_s‖_F² / C``, ``M = Pᵀ·P`` (C×C), ``P = softmax(z/T)``."""
    return _class_rows(student_logits, teacher_logits, temperature).sum() / student_logits.shape[1]


def confidence_masks(teacher_weak_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample mask (B), class mask (C)) from the teacher's weak-view softmax at T=1; True = kept.

    A sample is kept when its max probability is at or below the batch median; a class when its probability
    summed over the batch is at or below the median over classes. The median interpolates between the two
    middle values of an even count (``torch.quantile(…, 0.5)``, as the reference's ``np.percentile(…, 50)``),
    so about half of the samples and half of the classes are kept: the LESS confident ones, as in the reference.
    """
    probs = F.softmax(_fp32(teacher_weak_logits.detach()), dim=1)
    confidence = probs.max(dim=1).values
    class_total = probs.sum(dim=0)
    sample_mask = confidence <= torch.quantile(confidence, 0.5)
    class_mask = class_total <= torch.quantile(class_total, 0.5)
    return sample_mask, class_mask


def masked_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                   mask: torch.Tensor) -> torch.Tensor:
    """``(1/B)·Σ_i mask_i·T²·KL_i``: kd_loss where the student logits of unkept rows are replaced by the teacher's.

    Those rows then have KL exactly 0 and send no gradient to the student; no boolean indexing (no device sync).
    """
    teacher_logits = teacher_logits.detach()
    return kd_loss(torch.where(mask[:, None], student_logits, teacher_logits.to(student_logits.dtype)),
                   teacher_logits, temperature)


def per_temperature_terms(student: torch.Tensor, teacher: torch.Tensor, kd_student: torch.Tensor,
                          temperatures: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All temperatures and views at once: (instance n×V, batch rows n×V×B, class rows n×V×C).

    ``student``, ``teacher``, ``kd_student``: V×B×C logits (V views; ``kd_student`` is what the instance term
    compares with the teacher, e.g. ``masked_kd_loss``'s row replacement); ``temperatures``: n values.
    ``instance[i, v] = kd_loss(kd_student[v], teacher[v], T_i)``, ``batch_rows[i, v] = _batch_rows(student[v],
    teacher[v], T_i)``, ``class_rows[i, v] = _class_rows(…)``: the same element-wise operations and row
    reductions as those functions, batched (one softmax per network and one bmm per product for all n·V), so the
    values are those of the per-temperature calls. Computed in ``loss_dtype`` (fp16/bf16 → fp32) without autocast.
    """
    views, size, classes = student.shape
    dtype = loss_dtype(student, teacher)
    temps = temperatures.to(device=student.device, dtype=dtype)
    scale = temps.view(-1, 1, 1, 1)
    teacher = teacher.detach().to(dtype)
    with _full_precision(student):
        log_p_student = F.log_softmax(kd_student.to(dtype) / scale, dim=-1)
        log_p_teacher = F.log_softmax(teacher / scale, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True)
        squares = (temperatures**2).to(device=student.device, dtype=dtype)  # T**2 in float64, as Python does
        instance = kl.flatten(2).sum(dim=-1) / size * squares[:, None]
        p_student = F.softmax(student.to(dtype) / scale, dim=-1).flatten(0, 1)
        p_teacher = F.softmax(teacher / scale, dim=-1).flatten(0, 1)
        batch_rows = ((p_teacher @ p_teacher.mT - p_student @ p_student.mT) ** 2).sum(dim=-1)
        class_rows = ((p_teacher.mT @ p_teacher - p_student.mT @ p_student) ** 2).sum(dim=-1)
    return instance, batch_rows.view(-1, views, size), class_rows.view(-1, views, classes)


def _in_order(values: torch.Tensor) -> torch.Tensor:
    """``((v_0 + v_1) + v_2) + …`` over ``values`` in row-major order: the per-temperature loop's accumulation."""
    total = 0.0
    for value in values.flatten().unbind():
        total = total + value
    return total


@register_method("mlld")
class MLLD(DistillLoss):
    """Multi-level logit distillation on [weak (B), strong (B)] views (weak_strong view), both through both nets.

    Terms at temperature T (``P = softmax(z/T)``): instance ``T²·KL(p_t ‖ p_s)`` (summed KL, ``kd_loss``);
    batch ``‖P_t·P_tᵀ − P_s·P_sᵀ‖_F²/B``; class ``‖P_tᵀ·P_t − P_sᵀ·P_s‖_F²/C``; each summed over
    ``temperatures`` and weighted by ``kd_weight``. ``ce`` = ``ce_weight``·(CE(weak) + CE(strong)).
    Masks (``confidence_masks``, from the teacher's weak-view softmax at T=1): m keeps the samples whose max
    probability is at or below the batch median, m_c the classes whose summed probability is at or below the
    median (i.e. the less confident half, which is what the reference code selects).

    ``variant: described`` (default) — every term of both views is added, masks applied per element:

    * instance = Σ_T [ (1/B)Σ_i m_i·KL_i(weak) + KL(strong) ];
    * batch    = Σ_T [ (1/B)Σ_i m_i·Σ_j D_ij²(weak) + (1/B)Σ_i m_i·Σ_j D_ij²(strong) ],  D = G_t − G_s;
    * class    = Σ_T [ (1/C)Σ_c m_c·Σ_d E_cd²(weak) + ‖E(strong)‖²/C ],  E = M_t − M_s.

    Which term carries which mask follows the reference code (weak instance/batch: sample mask; weak class:
    class mask; strong batch: sample mask; strong instance/class: none); a masked row is kept or dropped whole
    and the normalisation stays B (or C), the reduce=False form the reference has commented out.

    ``variant: released`` — what the reference code (Jin-Ying/Multi-Level-Logit-Distillation, KD_ours.py)
    computes: each weak term is the batch-averaged scalar times the kept share (``(scalar·mask).mean()``, ≈0.5);
    the strong instance sum uses the weak logits at T ∈ {2, 6}; strong batch and class terms are never added:

    * instance = Σ_T [ share(m)·KL(weak) + KL(strong, or weak if T ∈ {2, 6}) ];
    * batch    = Σ_T share(m)·‖D(weak)‖²/B;   class = Σ_T share(m_c)·‖E(weak)‖²/C.

    Defaults are CIFAR's (temperatures 2–6, ce_weight 0.1, kd_weight 0.9); ImageNet uses temperatures
    [1, 2, 3, 5, 6] with 0.5/0.5. Returns {"ce", "instance", "batch", "class"}, each weighted. No trainable
    parameters and no state.
    """

    paper = "Jin, Wang & Lin, Multi-Level Logit Distillation, CVPR 2023"
    needs = Needs(student_taps=("logits",), teacher_taps=("logits",), views="weak_strong")
    defaults = {
        "ce_weight": 0.1,
        "kd_weight": 0.9,
        "temperatures": [2.0, 3.0, 4.0, 5.0, 6.0],
        "variant": "described",
    }
    term_weights = {"ce": "ce_weight", "instance": "kd_weight", "batch": "kd_weight", "class": "kd_weight"}

    @classmethod
    def resolve_hparams(cls, hparams: dict[str, Any]) -> dict[str, Any]:
        """Validate ``variant`` and ``temperatures`` at plan time; temperatures become floats (stable run ids)."""
        resolved = super().resolve_hparams(hparams)
        cls._check(resolved)
        resolved["temperatures"] = [float(t) for t in resolved["temperatures"]]
        return resolved

    @staticmethod
    def _check(hparams: dict[str, Any]) -> None:
        if hparams["variant"] not in VARIANTS:
            raise ValueError(f"mlld: variant '{hparams['variant']}' is unknown; allowed: {', '.join(VARIANTS)}")
        temperatures = hparams["temperatures"]
        if (isinstance(temperatures, (str, bytes)) or not hasattr(temperatures, "__iter__") or not temperatures
                or any(isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0 for t in temperatures)):
            raise ValueError(f"mlld: temperatures must be a non-empty list of positive numbers, got {temperatures!r}")

    def __init__(self, ctx: LossContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        self._check(self.hparams)
        self.hparams["temperatures"] = [float(t) for t in self.hparams["temperatures"]]
        # constants kept on the loss's device (no host-to-device copy per step); float64 holds the Python floats
        temperatures = self.hparams["temperatures"]
        self.register_buffer("_temperatures", torch.tensor(temperatures, dtype=torch.float64), persistent=False)
        self.register_buffer("_released_weak", torch.tensor([t in RELEASED_WEAK_TEMPERATURES for t in temperatures]),
                             persistent=False)

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "instance", "batch", "class"}, each weighted."""
        assert teacher is not None, "mlld needs a teacher"
        target = batch["target"]
        size = check_view_rows("mlld", "weak_strong", 2, target, student=student["logits"],
                               teacher=teacher["logits"])
        student_weak, student_strong = student["logits"][:size], student["logits"][size:]
        teacher_logits = teacher["logits"].detach()
        teacher_weak, teacher_strong = teacher_logits[:size], teacher_logits[size:]
        sample_mask, class_mask = confidence_masks(teacher_weak)

        ce = self.student_ce_loss(_fp32(student_weak), target) + self.student_ce_loss(_fp32(student_strong), target)
        if self.hparams["variant"] == "described":
            instance, batch_term, class_term = self._described(
                student_weak, student_strong, teacher_weak, teacher_strong, sample_mask, class_mask)
        else:
            instance, batch_term, class_term = self._released(
                student_weak, student_strong, teacher_weak, teacher_strong, sample_mask, class_mask)
        kd_weight = self.hparams["kd_weight"]
        return {
            "ce": self.hparams["ce_weight"] * ce,
            "instance": kd_weight * instance,
            "batch": kd_weight * batch_term,
            "class": kd_weight * class_term,
        }

    def _described(self, student_weak, student_strong, teacher_weak, teacher_strong, sample_mask, class_mask):
        size, classes = student_weak.shape
        keep = sample_mask.to(torch.float32)
        keep_class = class_mask.to(torch.float32)
        teacher_weak = teacher_weak.detach()
        masked_weak = torch.where(sample_mask[:, None], student_weak, teacher_weak.to(student_weak.dtype))
        instance, batch_rows, class_rows = per_temperature_terms(
            torch.stack([student_weak, student_strong]), torch.stack([teacher_weak, teacher_strong]),
            torch.stack([masked_weak, student_strong]), self._temperatures)
        batch_terms = (batch_rows * keep).sum(dim=-1) / size  # the sample mask on both views
        class_terms = (class_rows * torch.stack([keep_class, torch.ones_like(keep_class)])).sum(dim=-1) / classes
        return _in_order(instance), _in_order(batch_terms), _in_order(class_terms)

    def _released(self, student_weak, student_strong, teacher_weak, teacher_strong, sample_mask, class_mask):
        size, classes = student_weak.shape
        share = sample_mask.to(torch.float32).mean()
        class_share = class_mask.to(torch.float32).mean()
        instance, batch_rows, class_rows = per_temperature_terms(
            torch.stack([student_weak, student_strong]), torch.stack([teacher_weak, teacher_strong]),
            torch.stack([student_weak, student_strong]), self._temperatures)
        weak_kd = instance[:, 0]
        strong_kd = torch.where(self._released_weak, weak_kd, instance[:, 1])
        instance_terms = torch.stack([weak_kd * share, strong_kd], dim=1)
        batch_terms = batch_rows[:, 0].sum(dim=-1) / size * share
        class_terms = class_rows[:, 0].sum(dim=-1) / classes * class_share
        return _in_order(instance_terms), _in_order(batch_terms), _in_order(class_terms)
