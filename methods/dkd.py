"""DKD: Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kdbench.loss import DistillLoss, Needs, Progress, loss_dtype, register_method

# Floor of log(p_g) and log(1 − p_g) (the same floor torch.nn.BCELoss puts on its logs). Both logs are computed
# exactly in the log domain, so for finite logits the floor only touches probabilities below e^-100 ≈ 3.7e-44,
# which fp32 cannot even hold as a normal number (a "sum the masked softmax, then log" implementation would give
# -inf there). It keeps TCKD finite when a logit is -inf.
LOG_FLOOR = -100.0


def check_integer_labels(target: torch.Tensor, logits: torch.Tensor, method: str = "dkd") -> None:
    """Raise ValueError unless ``target`` holds one integer class label in [0, C) per row of the B×C ``logits``.

    Dtype and shape checks are free. The range check is exact and raises ValueError on the CPU; on CUDA it is a
    ``torch._assert_async`` (no host-device sync), so a bad label there surfaces as a device-side assertion
    (RuntimeError) at a later kernel launch and leaves the CUDA context unusable; other devices check with a sync.
    """
    if logits.dim() != 2:
        raise ValueError(f"{method}: logits must be B×C, got shape {tuple(logits.shape)}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"{method} needs integer class labels, got a {target.dtype} target of shape {tuple(target.shape)}; "
            f"soft labels (mixup, cutmix, label smoothing as targets) are undefined for {method}"
        )
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{method} needs one integer class label per sample, a target of shape ({logits.shape[0]},); "
            f"got shape {tuple(target.shape)} (soft or multi-labels are undefined for {method})"
        )
    num_classes = logits.shape[1]
    in_range = (target >= 0) & (target < num_classes)
    if target.device.type == "cuda":
        torch._assert_async(in_range.all(), f"{method}: a class label is outside [0, {num_classes})")
    elif target.numel() and not bool(in_range.all()):
        bad = target[~in_range].unique()[:5].tolist()
        raise ValueError(f"{method}: class labels must lie in [0, {num_classes}), got {bad}")


def _dkd_parts(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T²·KL summed over its classes and divided by B, computed in the inputs' dtype.

    The teacher is detached. Everything is in the log domain: with z = logits/T, ``lse`` the log-sum-exp over
    all classes and ``lse_not`` over the non-target classes (target filled with −inf),
    log p_g = z_g − lse, log(1 − p_g) = lse_not − lse, and the non-target log-softmax is z − lse_not.
    """
    target = target.long()
    classes = torch.arange(student_logits.shape[1], device=student_logits.device)
    gt_mask = classes.unsqueeze(0) == target.unsqueeze(1)  # B×C, no host sync (unlike one_hot's checks)
    z_s = student_logits / temperature
    z_t = teacher_logits.detach() / temperature
    batch = student_logits.shape[0]

    def binary_and_non_target_logs(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lse = torch.logsumexp(z, dim=1)
        lse_not = torch.logsumexp(z.masked_fill(gt_mask, float("-inf")), dim=1)
        log_p_target = z.gather(1, target.unsqueeze(1)).squeeze(1) - lse
        log_p_other = lse_not - lse  # log(1 − p_g), exact even when p_g rounds to 1
        log_b = torch.stack([log_p_target, log_p_other], dim=1).clamp(min=LOG_FLOOR)
        log_p_hat = z - lse_not.unsqueeze(1)  # non-target log-softmax (value at the target is unused)
        return log_b, log_p_hat

    log_b_s, log_p_hat_s = binary_and_non_target_logs(z_s)
    log_b_t, log_p_hat_t = binary_and_non_target_logs(z_t)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum() / batch
    # masking before exp: the teacher's target entry becomes exactly 0 (and cannot overflow)
    p_hat_t = log_p_hat_t.masked_fill(gt_mask, float("-inf")).exp()
    nckd = (p_hat_t * (log_p_hat_t - log_p_hat_s)).sum() / batch
    scale = temperature**2
    return scale * tckd, scale * nckd


def dkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (TCKD, NCKD) in at least fp32 (fp16/bf16 upcast, fp64 kept), after checking the labels."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"dkd: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    check_integer_labels(target, student_logits)
    dtype = loss_dtype(student_logits, teacher_logits)
    return _dkd_parts(student_logits.to(dtype), teacher_logits.to(dtype), target, temperature)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """α·TCKD + β·NCKD (no warm-up, no CE), in at least fp32 (fp16/bf16 upcast, fp64 kept).

    TCKD = T²·KL(b_t ‖ b_s) on the binary distributions b = [p_g, 1 − p_g]; NCKD = T²·KL(p̂_t ‖ p̂_s) on the
    softmax over the non-target classes; both summed over classes and divided by the batch size. ``target``
    must hold integer labels in [0, C) (ValueError otherwise; see ``check_integer_labels`` for CUDA).
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def warmup_factor(epoch: int, warmup: float) -> float:
    """min(epoch/W, 1) with epochs counted from 1; no warm-up when W ≤ 0."""
    return 1.0 if warmup <= 0 else min(epoch / warmup, 1.0)


@register_method("dkd")
class DKD(DistillLoss):
    """Decoupled KD (Zhao et al., CVPR 2022): w_ce·CE + min(epoch/W, 1)·(α·TCKD + β·NCKD).

    Choices where the sources leave room:
    - TCKD and NCKD are logged as separate terms ("tckd", "nckd"), each already multiplied by its weight and the
      warm-up factor; their sum is exactly min(epoch/W, 1)·dkd_loss(...).
    - The logs are computed exactly with log-sum-exp rather than by summing the masked softmax and taking its log
      (mdistiller); both logs of the binary distribution are floored at LOG_FLOOR = −100.
    - The target is masked with −inf before the non-target log-sum-exp (mdistiller subtracts 1000 instead).
    - ``warmup`` ≤ 0 means no warm-up. Labels are checked (integer, one per sample, in [0, C)) before the CE.

    β depends on the pair in the authors' CIFAR-100 configurations: 8 (the default) for most pairs, 2 for
    resnet56→resnet20 and resnet110→resnet32, 6 for wrn_40_2→wrn_16_2, wrn_40_2→wrn_40_1, vgg13→vgg8 and
    vgg13→MobileNetV2 (``experiments/cifar100.yaml`` sets them as per-pair overrides). ImageNet: α 0.5, T 1,
    warm-up 1 epoch, β 0.5 for resnet34→resnet18 and 2 for resnet50→mobilenet_v1 (``experiments/imagenet.yaml``).
    """

    paper = "Zhao, Cui, Song, Qiu & Liang, Decoupled Knowledge Distillation, CVPR 2022"
    needs = Needs(student_taps=("logits",), teacher_taps=("logits",), integer_labels=True)
    defaults = {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20.0}
    term_weights = {"ce": "ce_weight", "tckd": "alpha", "nckd": "beta"}
    term_weight_note = "dkd: tckd and nckd are also divided by the warm-up factor min(epoch / warmup, 1) of each epoch"

    @classmethod
    def term_scales(cls, hparams: dict[str, Any], epochs: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """α and β times the epoch's warm-up factor (constant within an epoch, so the division is exact)."""
        scales = super().term_scales(hparams, epochs)
        warmup = float({**cls.defaults, **hparams}["warmup"])
        factor = np.array([warmup_factor(int(epoch), warmup) for epoch in np.ravel(epochs)]).reshape(np.shape(epochs))
        return {term: scale * factor if term in ("tckd", "nckd") else scale for term, scale in scales.items()}

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "tckd", "nckd"}, each weighted (the last two include the warm-up factor)."""
        assert teacher is not None, "dkd needs a teacher"
        hp = self.hparams
        target = batch["target"]
        tckd, nckd = dkd_terms(student["logits"], teacher["logits"], target, hp["temperature"])
        factor = warmup_factor(progress.epoch, hp["warmup"])
        ce = self.student_ce_loss(student["logits"], target)
        return {"ce": hp["ce_weight"] * ce, "tckd": factor * hp["alpha"] * tckd, "nckd": factor * hp["beta"] * nckd}
