"""RKD: Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from kdbench.loss import DistillLoss, Needs, Progress, register_method

SQUARED_DISTANCE_FLOOR = 1e-12  # clamp before the square root (finite gradient for coincident embeddings)


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """At least fp32: half/bfloat16 inputs are upcast, float64 is kept."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast on ``device`` (under bf16/fp16 autocast the angle's bmm would run in low precision)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # a device type autocast does not know (e.g. meta): nothing to disable
        return contextlib.nullcontext()


def _relations(embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ψ, angles) of a B×D embedding: B×B distances over their positive mean, and the B×B×B angle cosines."""
    batch = embedding.shape[0]
    diff = embedding.unsqueeze(0) - embedding.unsqueeze(1)  # diff[i, j] = e_j − e_i, B×B×D
    eye = torch.eye(batch, dtype=torch.bool, device=embedding.device)
    distance = diff.pow(2).sum(dim=2).clamp(min=SQUARED_DISTANCE_FLOOR).sqrt().masked_fill(eye, 0.0)
    # Off-diagonal distances are ≥ 1e-6 > 0, so "the mean of the positive entries" is the off-diagonal mean;
    # dividing by B(B − 1) avoids boolean indexing, which would sync the host with the device.
    mean = distance.sum() / max(batch * (batch - 1), 1)
    psi = distance / mean.clamp(min=SQUARED_DISTANCE_FLOOR)
    unit = F.normalize(diff, p=2, dim=2)  # zero vectors (j = i) stay zero
    angles = torch.bmm(unit, unit.transpose(1, 2))  # angles[i, j, k] = <unit(e_j − e_i), unit(e_k − e_i)>
    return psi, angles


def rkd_terms(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted (L_D, L_A): SmoothL1 means over the B² distance and the B³ angle entries; teacher without grad."""
    if student_embedding.shape[0] != teacher_embedding.shape[0]:
        raise ValueError(
            f"rkd: student embedding {tuple(student_embedding.shape)} and teacher embedding "
            f"{tuple(teacher_embedding.shape)} have different batch sizes"
        )
    dtype = _compute_dtype(student_embedding, teacher_embedding)
    with _autocast_off(student_embedding.device):
        with torch.no_grad():
            psi_t, angles_t = _relations(teacher_embedding.detach().flatten(1).to(dtype))
        psi_s, angles_s = _relations(student_embedding.flatten(1).to(dtype))
        return F.smooth_l1_loss(psi_s, psi_t), F.smooth_l1_loss(angles_s, angles_t)


def rkd_loss(
    student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, distance_weight: float, angle_weight: float
) -> torch.Tensor:
    """distance_weight·L_D + angle_weight·L_A on B×D embeddings (widths may differ), in at least fp32.

    L_D: SmoothL1 between the pairwise-distance matrices, each divided by the mean of its positive entries
    (squared distances clamped at 1e-12 before the root, diagonal 0). L_A: SmoothL1 between the cosines of the
    angles e_j − e_i, e_k − e_i over all (i, j, k). The teacher side carries no gradient.
    """
    distance, angle = rkd_terms(student_embedding, teacher_embedding)
    return distance_weight * distance + angle_weight * angle


@register_method("rkd")
class RKD(DistillLoss):
    """Relational KD (Park et al., CVPR 2019): w_ce·CE + w_d·L_D + w_a·L_A on the pooled features.

    Choices where the sources leave room:
    - Distances and angles come from explicit differences e_j − e_i (B×B×D memory, as RepDistiller's angle
      term), not from |a|² + |b|² − 2ab, which cancels badly in fp32.
    - Computed in at least fp32 (bf16/fp16 embeddings are upcast, autocast is turned off for the angle's bmm);
      SmoothL1 with beta 1 (PyTorch's default).
    - The mean of positive distances is the off-diagonal mean (identical, and no host-device sync); a batch of
      one gives a zero distance term instead of NaN.
    """

    paper = "Park, Kim, Lu & Cho, Relational Knowledge Distillation, CVPR 2019"
    needs = Needs(student_taps=("logits", "pooled"), teacher_taps=("pooled",))
    defaults = {"ce_weight": 1.0, "distance_weight": 25.0, "angle_weight": 50.0}
    term_weights = {"ce": "ce_weight", "rkd_distance": "distance_weight", "rkd_angle": "angle_weight"}

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "rkd_distance", "rkd_angle"}, each weighted."""
        assert teacher is not None, "rkd needs a teacher"
        hp = self.hparams
        ce = self.student_ce_loss(student["logits"], batch["target"])
        distance, angle = rkd_terms(student["pooled"], teacher["pooled"])
        return {
            "ce": hp["ce_weight"] * ce,
            "rkd_distance": hp["distance_weight"] * distance,
            "rkd_angle": hp["angle_weight"] * angle,
        }
