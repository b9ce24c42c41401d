"""MLKD: Ding et al., "Multi-level Knowledge Distillation via Knowledge Alignment and Correlation", 2021.

This is the seed paper's MLKD (published in TNNLS 2024 as "DLKD"). It is NOT the CVPR 2023 "Multi-Level Logit
Distillation" of Jin et al., which kdbench registers as ``mlld`` (literature tables call both "MLKD").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.loss import DistillLoss, LossContext, Needs, Progress, check_view_rows, register_method

#: Copies per image of the rotations4 view: rot0 (the plain view), rot90, rot180, rot270.
NUM_VIEWS = 4


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 → fp32 for the loss arithmetic; fp32 and fp64 are kept as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _full_precision(x: torch.Tensor) -> torch.autocast:
    """Autocast switched off on ``x``'s device, so the similarity matmuls run in fp32 under bf16 training."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def correlation_loss(
    student_rotated: torch.Tensor,
    student_plain: torch.Tensor,
    teacher_rotated: torch.Tensor,
    teacher_plain: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Row-wise ``KL(softmax(S_t/τ) ‖ softmax(S_s/τ))`` averaged over rows, teacher side detached.

    ``S = cos(rotated_i, plain_j)``: R×B cosine similarities between R rotated-copy features (3B in MLKD) and the
    B un-rotated ones, each network with its own features (dimensions may differ between the networks).
    """
    def similarities(rotated: torch.Tensor, plain: torch.Tensor) -> torch.Tensor:
        return F.normalize(_fp32(rotated), dim=1) @ F.normalize(_fp32(plain), dim=1).T

    with _full_precision(student_rotated):
        sim_student = similarities(student_rotated, student_plain)
        sim_teacher = similarities(teacher_rotated.detach(), teacher_plain.detach())
        log_p_student = F.log_softmax(sim_student / temperature, dim=1)
        log_p_teacher = F.log_softmax(sim_teacher / temperature, dim=1)
        return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over N L2-normalised embeddings (N×D) with labels (N).

    Every embedding is an anchor; its positives are all OTHER embeddings with the same label; the softmax runs
    over all other embeddings: ``L = mean_i −1/|P(i)| Σ_{p∈P(i)} log(exp(e_i·e_p/τ) / Σ_{a≠i} exp(e_i·e_a/τ))``.
    An anchor without positives contributes 0 (still counted in the mean), as in the reference SupCon code's
    later fix; the reference's extra factor τ/base_τ is 1 at the default τ = base_τ = 0.07 and is left out.
    """
    embeddings = _fp32(embeddings)
    count = embeddings.shape[0]
    self_mask = torch.eye(count, dtype=torch.bool, device=embeddings.device)
    with _full_precision(embeddings):
        logits = (embeddings @ embeddings.T / temperature).masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    positive_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return -(positive_log_prob / positives.sum(dim=1).clamp(min=1)).mean()


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class _Embed(nn.Module):
    """Linear projection followed by L2 normalisation."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(_fp32(self.linear(x)), dim=1)


@register_method("mlkd")
class MLKD(DistillLoss):
    """``γ·CE + α·L_corr + β·L_supcon + δ·L_align`` on the 4 rotated views of every image (rotations4 view).

    Inputs hold 4B rows in view order [rot0, rot90, rot180, rot270] (``batch["target"]`` holds B labels):

    * ``ce``: cross-entropy on the B un-rotated copies only.
    * ``corr`` (τ = corr_temperature): student pooled features through ``corr_head`` (Linear D_s→D_s, BN, ReLU,
      Linear D_s→D_s), teacher features raw; ``correlation_loss`` between the 3B rotated and B plain copies.
    * ``supcon`` (τ = supcon_temperature): ``student_embed``/``teacher_embed`` (Linear D→feat_dim + L2), BOTH
      trained (the teacher backbone is frozen, its head is not); all 8B embeddings are anchors, labels repeat
      over the views and the two networks; ``supcon_loss``.
    * ``align``: ``predictor`` (Linear D_s→e·D_t, BN, ReLU, Linear e·D_t→D_t, e = predictor_expansion) on the
      student features; ``2 − 2·mean cos(pred(f_s), f_t)`` over all 4B rows.

    Defaults are CIFAR's (γ=1, α=50, β=1, δ=20); ImageNet uses 1, 20, 0.5, 10. The heads' BatchNorm running
    statistics are buffers (checkpointed); the heads are trainable parameters of this loss (about 2.3M on
    resnet32x4→resnet8x4, most of them in the predictor).
    """

    paper = ("Ding, Yang, Hu, Krovi & Luo, Multi-level Knowledge Distillation via Knowledge Alignment and "
             "Correlation, arXiv:2012.00573, 2021 (TNNLS 35(2), 2024, as Dual-Level KD, DLKD)")
    needs = Needs(student_taps=("logits", "pooled"), teacher_taps=("logits", "pooled"), views="rotations4")
    defaults = {
        "ce_weight": 1.0,
        "corr_weight": 50.0,
        "supcon_weight": 1.0,
        "align_weight": 20.0,
        "corr_temperature": 0.5,
        "supcon_temperature": 0.07,
        "predictor_expansion": 16,
        "feat_dim": 128,
    }
    term_weights = {"ce": "ce_weight", "corr": "corr_weight", "supcon": "supcon_weight", "align": "align_weight"}

    def __init__(self, ctx: LossContext, **hparams) -> None:
        super().__init__(ctx, **hparams)
        if "pooled" not in ctx.student_shapes or "pooled" not in ctx.teacher_shapes:
            raise ValueError("mlkd needs the 'pooled' tap shapes of both networks in the loss context")
        student_dim = math.prod(ctx.student_shapes["pooled"])
        teacher_dim = math.prod(ctx.teacher_shapes["pooled"])
        expansion, feat_dim = int(self.hparams["predictor_expansion"]), int(self.hparams["feat_dim"])
        if expansion < 1 or feat_dim < 1:
            raise ValueError(f"predictor_expansion={expansion} and feat_dim={feat_dim} must be >= 1")
        self.corr_head = _mlp(student_dim, student_dim, student_dim)
        self.student_embed = _Embed(student_dim, feat_dim)
        self.teacher_embed = _Embed(teacher_dim, feat_dim)
        self.predictor = _mlp(student_dim, expansion * teacher_dim, teacher_dim)

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "corr", "supcon", "align"}, each weighted."""
        assert teacher is not None, "mlkd needs a teacher"
        target = batch["target"]
        size = check_view_rows("mlkd", "rotations4", NUM_VIEWS, target, student=student["logits"],
                               teacher=teacher["pooled"])
        hp = self.hparams
        feat_student = student["pooled"].flatten(1)
        feat_teacher = teacher["pooled"].flatten(1).detach()

        ce = self.student_ce_loss(_fp32(student["logits"][:size]), target)

        projected = self.corr_head(feat_student)
        corr = correlation_loss(projected[size:], projected[:size], feat_teacher[size:], feat_teacher[:size],
                                hp["corr_temperature"])

        embeddings = torch.cat([self.student_embed(feat_student), self.teacher_embed(feat_teacher)])
        labels = target.repeat(2 * NUM_VIEWS)
        supcon = supcon_loss(embeddings, labels, hp["supcon_temperature"])

        predicted = _fp32(self.predictor(feat_student))
        with _full_precision(predicted):
            align = 2.0 - 2.0 * F.cosine_similarity(predicted, _fp32(feat_teacher), dim=1).mean()

        return {
            "ce": hp["ce_weight"] * ce,
            "corr": hp["corr_weight"] * corr,
            "supcon": hp["supcon_weight"] * supcon,
            "align": hp["align_weight"] * align,
        }
