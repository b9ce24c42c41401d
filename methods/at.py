"""AT: Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance of Convolutional
Neural Networks via Attention Transfer", ICLR 2017."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from kdbench.loss import DistillLoss, LossContext, Needs, Progress, register_method


def attention_map(feature_map: torch.Tensor, p: float) -> torch.Tensor:
    """a(F) = normalize(flatten(mean over channels of |F|^p)): B×C×H×W → B×(H·W), unit L2 norm per row.

    |F|^p equals F^p for even p (the paper's definition uses |F|; RepDistiller's F.pow(p) differs only for odd p).
    """
    powered = feature_map.pow(p) if float(p).is_integer() and int(p) % 2 == 0 else feature_map.abs().pow(p)
    return F.normalize(powered.mean(dim=1).flatten(1), p=2, dim=1)


def at_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, p: float) -> torch.Tensor:
    """mean((a(F_s) − a(F_t))²) for one stage, in at least fp32; the teacher side carries no gradient.

    When the spatial sizes differ, the larger feature map is adaptive-average-pooled to the smaller size before
    the attention map is taken (each of H and W separately pooled to the smaller of the two). Channel counts may
    differ.
    """
    if student_map.dim() != 4 or teacher_map.dim() != 4:
        raise ValueError(
            f"at: needs B×C×H×W maps, got student {tuple(student_map.shape)} and teacher {tuple(teacher_map.shape)}"
        )
    if student_map.shape[0] != teacher_map.shape[0]:
        raise ValueError(
            f"at: student map {tuple(student_map.shape)} and teacher map {tuple(teacher_map.shape)} "
            "have different batch sizes"
        )
    dtype = torch.promote_types(torch.promote_types(student_map.dtype, teacher_map.dtype), torch.float32)
    student_map, teacher_map = student_map.to(dtype), teacher_map.detach().to(dtype)
    size = (min(student_map.shape[2], teacher_map.shape[2]), min(student_map.shape[3], teacher_map.shape[3]))
    if tuple(student_map.shape[2:]) != size:
        student_map = F.adaptive_avg_pool2d(student_map, size)
    if tuple(teacher_map.shape[2:]) != size:
        teacher_map = F.adaptive_avg_pool2d(teacher_map, size)
    return (attention_map(student_map, p) - attention_map(teacher_map, p)).pow(2).mean()


def stage_names(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The stageK names among ``shapes``, ordered by K."""
    found = [(int(m.group(1)), name) for name in shapes if (m := re.fullmatch(r"stage(\d+)", name))]
    return [name for _, name in sorted(found)]


@register_method("at")
class AT(DistillLoss):
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): w_ce·CE + w_at·Σ_k at_loss(F_s^k, F_t^k).

    Choices where the sources leave room:
    - Stages are paired in order, student stageK with teacher stageK for K = 1 … min(N_s, N_t), as RepDistiller
      zips the two feature lists (extra stages of the deeper network are ignored); the pairs are fixed from the
      LossContext shapes and listed in ``self.pairs``.
    - "All stage outputs after the stem" are the models' stageK taps (post-activation; for WRN the raw residual
      sum); the stem and the pooled feature are excluded, as RepDistiller's feat[1:-1].
    - Pooling is applied to the feature map before |F|^p (RepDistiller), per spatial dimension.
    """

    paper = "Zagoruyko & Komodakis, Paying More Attention to Attention (attention transfer), ICLR 2017"
    needs = Needs(student_taps=("logits", "stage*"), teacher_taps=("stage*",))
    defaults = {"ce_weight": 1.0, "at_weight": 1000.0, "p": 2.0}
    term_weights = {"ce": "ce_weight", "at": "at_weight"}

    def __init__(self, ctx: LossContext, **hparams) -> None:
        super().__init__(ctx, **hparams)
        student_stages, teacher_stages = stage_names(ctx.student_shapes), stage_names(ctx.teacher_shapes)
        if not student_stages or not teacher_stages:
            raise ValueError(
                f"at needs stage taps on both sides; got student taps {sorted(ctx.student_shapes)} and "
                f"teacher taps {sorted(ctx.teacher_shapes)}"
            )
        self.pairs: list[tuple[str, str]] = list(zip(student_stages, teacher_stages, strict=False))
        for s_name, t_name in self.pairs:
            s_shape, t_shape = ctx.student_shapes[s_name], ctx.teacher_shapes[t_name]
            if len(s_shape) != 3 or len(t_shape) != 3:
                raise ValueError(
                    f"at needs C×H×W stage maps; student {s_name} is {s_shape}, teacher {t_name} is {t_shape}"
                )

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "at"}, each weighted; "at" is summed over the paired stages."""
        assert teacher is not None, "at needs a teacher"
        hp = self.hparams
        ce = self.student_ce_loss(student["logits"], batch["target"])
        transfer = sum(at_loss(student[s], teacher[t], hp["p"]) for s, t in self.pairs)
        return {"ce": hp["ce_weight"] * ce, "at": hp["at_weight"] * transfer}
