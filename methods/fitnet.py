"""FitNet: Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: Hints for Thin Deep Nets", ICLR 2015."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.loss import DistillLoss, LossContext, Needs, Progress, register_method


def hint_stage(hparams: dict[str, Any]) -> int:
    """The validated ``hint_stage`` (a positive int) of these hyper-parameters."""
    stage = hparams["hint_stage"]
    if isinstance(stage, bool) or not isinstance(stage, int) or stage < 1:
        raise ValueError(f"fitnet: hint_stage must be a positive integer (stageK tap), got {stage!r}")
    return stage


def build_regressor(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Sequential:
    """conv → BN → ReLU mapping a C_s×H_s×W_s student map onto the C_t×H_t×W_t teacher map.

    The conv is a stride-2 3×3 conv if the student map is twice the teacher's, a stride-2 4×4 transposed conv if
    it is half, and otherwise a (1 + H_s − H_t)×(1 + W_s − W_t) conv (1×1 for equal sizes). Raise ValueError
    naming both shapes when none fits (the teacher map larger but not exactly twice the student's).
    """
    if len(student_shape) != 3 or len(teacher_shape) != 3:
        raise ValueError(f"fitnet needs C×H×W hint maps; got student {student_shape} and teacher {teacher_shape}")
    (s_c, s_h, s_w), (t_c, t_h, t_w) = student_shape, teacher_shape
    conv: nn.Module
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif (2 * s_h, 2 * s_w) == (t_h, t_w):
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    elif s_h >= t_h and s_w >= t_w:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    else:
        raise ValueError(
            f"fitnet cannot regress the student hint map {tuple(student_shape)} onto the teacher hint map "
            f"{tuple(teacher_shape)}: the teacher map is larger but not exactly twice the student's size"
        )
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), nn.ReLU())


def hint_loss(regressed: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """MSE (mean over all elements) between the regressed student map and the teacher map, in at least fp32."""
    if regressed.shape != teacher_map.shape:
        raise ValueError(
            f"fitnet: regressed student map {tuple(regressed.shape)} does not match teacher map "
            f"{tuple(teacher_map.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(regressed.dtype, teacher_map.dtype), torch.float32)
    return F.mse_loss(regressed.to(dtype), teacher_map.detach().to(dtype))


@register_method("fitnet")
class FitNet(DistillLoss):
    """FitNets hints (Romero et al., ICLR 2015): w_ce·CE + w_hint·MSE(regressor(F_s^k), F_t^k), k = hint_stage.

    Choices where the sources leave room:
    - One-stage training (hint and CE together from the first step), as RepDistiller/CRD benchmark it; the
      paper's separate hint pre-training stage is not done.
    - The hint is the stageK tap (post-activation; for WRN the raw residual sum, which the ReLU-ended regressor
      cannot match where it is negative, as in RepDistiller); the regressor is ``self.regressor``
      (conv with bias, BN, ReLU; see ``build_regressor``), trained with the student; its BN statistics are
      buffers and so checkpointed.
    - The 2×/½× cases need both H and W to match that ratio; a non-square map falls to the general kernel.
    """

    paper = "Romero, Ballas, Kahou, Chassang, Gatta & Bengio, FitNets: Hints for Thin Deep Nets, ICLR 2015"
    needs = Needs(student_taps=("logits", "stage2"), teacher_taps=("stage2",))
    defaults = {"ce_weight": 1.0, "hint_weight": 100.0, "hint_stage": 2}
    term_weights = {"ce": "ce_weight", "hint": "hint_weight"}

    @classmethod
    def needs_for(cls, hparams: dict[str, Any]) -> Needs:
        """Ask for stage{hint_stage} on both sides (and the student's logits for the CE)."""
        tap = f"stage{hint_stage({**cls.defaults, **hparams})}"
        return Needs(student_taps=("logits", tap), teacher_taps=(tap,))

    def __init__(self, ctx: LossContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        self.tap = f"stage{hint_stage(self.hparams)}"
        if self.tap not in ctx.student_shapes or self.tap not in ctx.teacher_shapes:
            raise ValueError(
                f"fitnet (hint_stage={self.hparams['hint_stage']}) needs the '{self.tap}' shape of both networks; "
                f"got student taps {sorted(ctx.student_shapes)} and teacher taps {sorted(ctx.teacher_shapes)}"
            )
        self.regressor = build_regressor(ctx.student_shapes[self.tap], ctx.teacher_shapes[self.tap])

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "hint"}, each weighted."""
        assert teacher is not None, "fitnet needs a teacher"
        hp = self.hparams
        ce = self.student_ce_loss(student["logits"], batch["target"])
        hint = hint_loss(self.regressor(student[self.tap]), teacher[self.tap])
        return {"ce": hp["ce_weight"] * ce, "hint": hp["hint_weight"] * hint}
