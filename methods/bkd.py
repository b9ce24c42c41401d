"""BKD: Zhang, Chen, Hu & Peng, "Balanced Knowledge Distillation for Long-tailed Learning", Neurocomputing 2023.

Specified from the authors' released code (EricZsy/BalancedKnowledgeDistillation: ``BKDLoss`` in losses.py, the
class weights in train_student.py); the paper's own equations were not readable.

``L = ce_weight·CE(z, y) + kd_weight·T²·mean_batch KL(q̃ ‖ softmax(z/T))`` with the teacher's target reweighted
per class and renormalised per sample, ``q̃_c = w_c·q_c / Σ_k w_k·q_k``, ``q = softmax(v/T)`` (teacher logits v),
and the "effective number" class weights of Cui et al. 2019, ``w_c = (1 − β)/(1 − β^{n_c})`` rescaled to
``Σ_c w_c = C`` (n_c: training images of class c, from ``LossContext.class_counts``).

Identity (used for the computation and in the tests): ``w_c·exp(v_c/T) = exp(v_c/T + log w_c)``, so ``q̃`` is the
softmax of the teacher's tempered logits shifted by ``log w``, i.e. BKD is KD to the teacher logits ``v + T·log w``:
``bkd_loss(z, v, n, T, β) = kd_loss(z, v + T·log w, T)``.

Choices where the released code leaves room, each an option or stated here:

* ``weight_start_epoch`` (default 0): the weights apply from epoch ``weight_start_epoch + 1`` on (epochs count
  from 1); before, the weights are uniform and BKD is plain KD. The authors use them from the first epoch on
  CIFAR-100-LT ("Reweight") and from their 0-based epoch 160 on CIFAR-10-LT ("DRW"), which is
  ``weight_start_epoch: 160`` here.
* ``beta`` (default 0.9999): β = 0 gives uniform weights (their DRW's first stage).
* The CE term is plain (unweighted), as in their ``BKDLoss``; their "KD" baseline puts the class weights into CE,
  kdbench's ``kd`` does not. ``student_ce`` (every method's option) can make it logit-adjusted.
* The teacher target is built in the log domain (``log_softmax(v/T + log w)``) instead of multiplying
  probabilities and renormalising: the same value, without underflow. The teacher is detached.
* A class with no training image has an infinite weight: ValueError when the loss is built.
* Weighting each row by the weight of the sample's own label and renormalising would cancel out (a known wrong
  re-implementation); the weights here are per class column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from kdbench.loss import DistillLoss, LossContext, Needs, Progress, loss_dtype, register_method


def effective_number_weights(class_counts: Sequence[int] | torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. 2019 class weights ``(1 − β)/(1 − β^{n_c})`` rescaled to sum to C (float64, on the CPU)."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = torch.as_tensor(class_counts).detach().cpu().to(torch.float64)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"class counts must be one count per class, got shape {tuple(counts.shape)}")
    if bool((counts <= 0).any()):
        empty = (counts <= 0).nonzero().flatten()[:5].tolist()
        raise ValueError(f"every class needs a positive training count for effective-number weights, "
                         f"got none for class(es) {empty}")
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return weights / weights.sum() * counts.numel()


def _balanced_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, log_weights: torch.Tensor | None,
                 temperature: float) -> torch.Tensor:
    """T²·KL(softmax(v/T + log w) ‖ softmax(z/T)), summed over classes, batch-mean; None: uniform weights."""
    dtype = loss_dtype(student_logits, teacher_logits)
    log_p_student = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    teacher_z = teacher_logits.detach().to(dtype) / temperature
    if log_weights is not None:
        teacher_z = teacher_z + log_weights.to(device=teacher_z.device, dtype=dtype)
    log_q = F.log_softmax(teacher_z, dim=1)
    return F.kl_div(log_p_student, log_q, reduction="batchmean", log_target=True) * temperature**2


def bkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, class_counts: Sequence[int] | torch.Tensor,
             temperature: float, beta: float) -> torch.Tensor:
    """Unweighted ``T²·mean_batch KL(q̃ ‖ softmax(z/T))``, q̃ the effective-number-reweighted teacher target.

    ``q̃_c = w_c·q_c / Σ_k w_k·q_k`` with ``q = softmax(v/T)`` and ``w = effective_number_weights(class_counts,
    β)``; equal to ``kd_loss(z, v + T·log w, T)``. In at least fp32 (fp16/bf16 upcast, fp64 kept); the teacher
    is detached.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"bkd: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    log_weights = effective_number_weights(class_counts, beta).log()
    if log_weights.shape[0] != student_logits.shape[1]:
        raise ValueError(f"bkd: {log_weights.shape[0]} class counts for logits of {student_logits.shape[1]} classes")
    return _balanced_kd(student_logits, teacher_logits, log_weights, temperature)


def check_bkd_hparams(hparams: dict[str, Any]) -> None:
    """Raise ValueError naming the first given BKD value that cannot be used (only the keys present are checked)."""
    def number(key: str) -> float | None:
        value = hparams.get(key)
        if key in hparams and (isinstance(value, bool) or not isinstance(value, (int, float))
                               or not math.isfinite(value)):
            raise ValueError(f"bkd: {key} must be a number, got {value!r}")
        return value

    for key in ("ce_weight", "kd_weight"):
        if (value := number(key)) is not None and value < 0:
            raise ValueError(f"bkd: {key} must be ≥ 0, got {value}")
    if (value := number("temperature")) is not None and value <= 0:
        raise ValueError(f"bkd: temperature must be > 0, got {value}")
    if (value := number("beta")) is not None and not 0 <= value < 1:
        raise ValueError(f"bkd: beta must be in [0, 1) (0 gives uniform weights), got {value}")
    start = hparams.get("weight_start_epoch", 0)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"bkd: weight_start_epoch must be an integer ≥ 0 (epochs before the class weights "
                         f"apply), got {start!r}")


@register_method("bkd")
class BKD(DistillLoss):
    """Balanced KD (Zhang et al., Neurocomputing 2023): ce_weight·CE + kd_weight·T²·KL(q̃ ‖ p_s), q̃ reweighted.

    See the module docstring for the loss, the identity with KD and the choices. Defaults are the released
    code's (T = 2, α = kd_weight = 1, β = 0.9999, weights from the first epoch). Terms {"ce", "bkd"}, weighted.
    No trainable parameters; the log class weights are a non-persistent buffer derived from the loss context.
    """

    paper = ("Zhang, Chen, Hu & Peng, Balanced Knowledge Distillation for Long-tailed Learning, Neurocomputing "
             "2023 (arXiv 2021)")
    needs = Needs(student_taps=("logits",), teacher_taps=("logits",), dataset_facts=("class_counts",))
    defaults: dict[str, Any] = {
        "ce_weight": 1.0,
        "kd_weight": 1.0,
        "temperature": 2.0,
        "beta": 0.9999,
        "weight_start_epoch": 0,
    }
    term_weights = {"ce": "ce_weight", "bkd": "kd_weight"}

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any]) -> None:
        """Unknown names and bad student_ce (the base class), then BKD's own values."""
        super().check_hparams(hparams)
        check_bkd_hparams(hparams)

    def __init__(self, ctx: LossContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        if len(ctx.class_counts) != ctx.num_classes:
            raise ValueError(f"bkd needs the training counts of all {ctx.num_classes} classes "
                             f"(LossContext.class_counts), got {len(ctx.class_counts)}")
        try:
            weights = effective_number_weights(ctx.class_counts, float(self.hparams["beta"]))
        except ValueError as error:
            raise ValueError(f"bkd: {error}") from None
        self.register_buffer("log_class_weights", weights.log().float(), persistent=False)

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "bkd"}, each weighted; uniform weights (plain KD) up to ``weight_start_epoch``."""
        assert teacher is not None, "bkd needs a teacher"
        hp = self.hparams
        log_weights = self.log_class_weights if progress.epoch > hp["weight_start_epoch"] else None
        distill = _balanced_kd(student["logits"], teacher["logits"], log_weights, hp["temperature"])
        ce = self.student_ce_loss(student["logits"], batch["target"])
        return {"ce": hp["ce_weight"] * ce, "bkd": hp["kd_weight"] * distill}
