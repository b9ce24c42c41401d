"""Vanilla: cross-entropy only; the student trained alone, and how teachers are trained."""

from __future__ import annotations

import torch

from kdbench.loss import DistillLoss, Needs, Progress, register_method


@register_method("vanilla")
class Vanilla(DistillLoss):
    """Cross-entropy on the labels, no teacher."""

    paper = "baseline: cross-entropy only (no distillation)"
    needs = Needs(student_taps=("logits",), teacher_taps=())
    defaults = {"ce_weight": 1.0, "label_smoothing": 0.0}
    term_weights = {"ce": "ce_weight"}

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce": weighted CE}."""
        ce = self.student_ce_loss(student["logits"], batch["target"],
                                 label_smoothing=self.hparams["label_smoothing"])
        return {"ce": self.hparams["ce_weight"] * ce}
