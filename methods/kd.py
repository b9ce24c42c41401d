"""KD: Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.loss import DistillLoss, Needs, Progress, loss_dtype, register_method


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Unweighted T²·KL(p_t^T ‖ p_s^T), summed over classes and averaged over the batch.

    Computed in at least fp32 whatever the autocast dtype, since softening by T loses precision in bf16
    (fp16/bf16 inputs are upcast; fp64 stays fp64).
    """
    dtype = loss_dtype(student_logits, teacher_logits)
    log_p_student = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_method("kd")
class KD(DistillLoss):
    """w_ce·CE + w_kd·T²·KL(teacher ‖ student) on softened logits.

    Defaults are the CIFAR ones of the CRD and DKD benchmarks (T=4, w_ce=0.1, w_kd=0.9); ImageNet uses T=1, 0.5/0.5 and
    Hinton's MNIST experiment T=20 — set them in the grid file.
    """

    paper = "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, NIPS-W 2015"
    needs = Needs(student_taps=("logits",), teacher_taps=("logits",))
    defaults = {"temperature": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
    term_weights = {"ce": "ce_weight", "kd": "kd_weight"}

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "kd"}, each weighted."""
        assert teacher is not None, "kd needs a teacher"
        ce = self.student_ce_loss(student["logits"], batch["target"])
        kd = kd_loss(student["logits"], teacher["logits"], self.hparams["temperature"])
        return {"ce": self.hparams["ce_weight"] * ce, "kd": self.hparams["kd_weight"] * kd}


class PlusKD:
    """Mixin that adds ``kd_weight·kd_loss(T)`` on the logits to another method's terms (e.g. CRD+KD, RRD+KD).

    Put it first in the bases (``class CRDKD(PlusKD, CRD)``) and merge ``KD_TERM_DEFAULTS`` into ``defaults``.
    """

    def forward(self, student, teacher, batch, progress):  # the DistillLoss.forward signature
        """The base method's terms plus {"kd"}, weighted."""
        terms = super().forward(student, teacher, batch, progress)
        assert teacher is not None, f"{type(self).__name__} needs the teacher's logits"
        kd = kd_loss(student["logits"], teacher["logits"], self.hparams["temperature"])
        return {**terms, "kd": self.hparams["kd_weight"] * kd}


KD_TERM_DEFAULTS = {"kd_weight": 1.0, "temperature": 4.0}
