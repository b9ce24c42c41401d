"""TRG: Zhang, Liu & He, "Knowledge Distillation via Token-level Relationship Graph", 2023.

``L = ce_weight·CE + kd_weight·KD(T) + inner_weight·L_inner + local_weight·L_local + global_weight·L_global``.

Tokens. A CNN's tokens are the positions of its last stage's map before global pooling (the ``tokens`` tap, B×HW×C);
a ViT's are the patch tokens of its last block, CLS/distillation tokens dropped (the ``tokens`` tap of a
:class:`~kdbench.models.timm_adapter.TimmModel`). Both are laid out on their square G×G grid. When the two grids
differ, the larger one is pooled to the smaller (``grid_match``), so token i is the same image region in both.

Per step, ``tokens_per_image`` (m) grid positions are drawn per image, uniformly without replacement, the same
positions for student and teacher, re-drawn every step. The B·m sampled tokens of the batch are the graph's nodes.

* **Local preserving** (``local_preserving_loss``): on L2-normalised tokens, each node's k nearest neighbours
  (self excluded) are found among the *teacher's* nodes; the student uses the same support. Edge weights are
  Gaussian, ``A_ij = exp(−‖t_i − t_j‖²/(2σ))``; per node, ``KL(softmax_j(A_t/τ_l) ‖ softmax_j(A_s/τ_l))`` over its
  neighbours (``kl_direction`` may reverse it), averaged over nodes.
* **Global contrastive** (``global_contrastive_loss``): trainable linear projections of student and teacher nodes
  to ``proj_dim`` (both heads are trained; the teacher backbone is not), L2-normalised; InfoNCE where the
  positive of student node i is teacher node i and the other teacher nodes of the batch are its negatives;
  temperature τ_g annealed from ``tau_global_start`` to ``tau_global_end`` over training
  (``global_temperature``; ``tau_global_schedule`` cosine or linear) — the paper's "dynamic temperature".
* **Contextual / inner-instance** (``contextual_loss``): per image, ``CS = softmax(F·Fᵀ/√D)`` over that image's
  tokens (each network its own D); ``MSE(CS_t, CS_s)`` averaged over images.
* **KD**: Hinton's ``T²·KL`` on the logits; **CE** on the labels.

Which choices are the paper's and which are ours. The paper's full text and code were not available; its
structure (token graph, kNN with Gaussian edges built on the teacher, local preserving KL, global contrastive
loss with a dynamic temperature, contextual inner-instance loss, plus KD and CE) comes from its abstract and
secondary summaries of the paper. Every number is ours: m=16, k=8, σ=1, τ_l=0.1, the cosine
0.2→0.05 τ_g schedule, 128-d projections, the weights λ=1, α=100, β=1, γ=0.5 and T=4. Also ours: tokens taken
after the last stage's activation (CNN) or final norm (ViT); average pooling for grid matching; sampling per
image without replacement; the forward KL direction; the contextual loss over all G×G tokens of each image
(``context_tokens: sampled`` uses only the m sampled ones); InfoNCE in one direction (student anchors).
All of them are options below.

Ablations are grid values: a term whose weight is 0 is not computed at all (and the global term's projection
heads are not built when ``global_weight`` is 0). A fixed τ_g is ``tau_global_start == tau_global_end``.

Implementation notes. Every TRG term runs in fp32 with autocast off (bf16 similarities at τ_l=0.1 would be
coarse). The kNN search is done in row blocks of ``block_size`` nodes (O(block·B·m) memory instead of
O((B·m)²)); the student's neighbour similarities are gathered (O(B·m·k·D)); InfoNCE over more than
``block_size`` nodes is computed in row blocks with activation checkpointing, so its B·m × B·m logits are never
all alive. A partial last batch with B·m ≤ k uses k = B·m − 1 neighbours.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from kdbench.loss import DistillLoss, LossContext, Needs, PlanFacts, Progress, register_method
from kdbench.methods.kd import kd_loss

KL_DIRECTIONS = ("teacher_student", "student_teacher")
SCHEDULES = ("cosine", "linear")
GRID_MATCHES = ("avg", "max")
CONTEXT_TOKENS = ("all", "sampled")
TERM_WEIGHTS = ("ce_weight", "kd_weight", "inner_weight", "local_weight", "global_weight")


# ------------------------------------------------------------------------------------------------ pure losses

def _fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least fp32 (fp64 stays fp64, for gradient checks)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _neighbour_cosines(nodes: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """M×k cosines ``⟨n_i, n_j⟩`` of each row's neighbours j = ``neighbours[i]`` (``nodes`` L2-normalised)."""
    return torch.bmm(nodes[neighbours], nodes.unsqueeze(2)).squeeze(2)


@torch.no_grad()
def knn_indices(nodes: torch.Tensor, k: int, block_size: int = 2048) -> torch.Tensor:
    """M×k indices of each row's k most cosine-similar other rows (self excluded), computed in row blocks."""
    count = nodes.shape[0]
    if not 0 < k < count:
        raise ValueError(f"k must be in [1, {count - 1}] for {count} nodes, got k={k}")
    unit = F.normalize(_fp32(nodes), dim=1)
    blocks = []
    for start in range(0, count, block_size):
        similarity = unit[start:start + block_size] @ unit.T
        rows = torch.arange(similarity.shape[0], device=nodes.device)
        similarity[rows, rows + start] = -math.inf
        blocks.append(similarity.topk(k, dim=1).indices)
    return torch.cat(blocks)


def local_preserving_loss(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor, k: int, sigma: float,
                          tau: float, *, kl_direction: str = "teacher_student", block_size: int = 2048) -> torch.Tensor:
    """Mean over nodes of ``KL(softmax(A_t/τ) ‖ softmax(A_s/τ))`` over each node's k teacher-kNN neighbours.

    ``student_tokens`` M×D_s and ``teacher_tokens`` M×D_t are the graph's nodes (row i the same token in both).
    ``A_ij = exp(−‖u_i − u_j‖²/(2σ)) = exp(−(1 − cos_ij)/σ)`` on L2-normalised tokens u. The neighbour set is
    built on the teacher's tokens (no gradient) and reused for the student. ``kl_direction="student_teacher"``
    gives ``KL(P_s ‖ P_t)`` instead.
    """
    if kl_direction not in KL_DIRECTIONS:
        raise ValueError(f"kl_direction must be one of {', '.join(KL_DIRECTIONS)}, got {kl_direction!r}")
    if student_tokens.shape[0] != teacher_tokens.shape[0]:
        raise ValueError(f"student and teacher must have the same nodes, got {student_tokens.shape[0]} and "
                         f"{teacher_tokens.shape[0]} rows")
    teacher_unit = F.normalize(_fp32(teacher_tokens.detach()), dim=1)
    student_unit = F.normalize(_fp32(student_tokens), dim=1)
    neighbours = knn_indices(teacher_unit, k, block_size)
    log_p_teacher = F.log_softmax(torch.exp((_neighbour_cosines(teacher_unit, neighbours) - 1) / sigma) / tau, dim=1)
    log_p_student = F.log_softmax(torch.exp((_neighbour_cosines(student_unit, neighbours) - 1) / sigma) / tau, dim=1)
    if kl_direction == "teacher_student":
        return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return F.kl_div(log_p_teacher, log_p_student, reduction="batchmean", log_target=True)


def _infonce_block_sum(student_block: torch.Tensor, teacher_embeddings: torch.Tensor, first_row: int,
                       tau: float) -> torch.Tensor:
    """Summed InfoNCE of student rows ``first_row…`` against all teacher rows (positive: the same row index)."""
    logits = student_block @ teacher_embeddings.T / tau
    targets = torch.arange(first_row, first_row + student_block.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets, reduction="sum")


def global_contrastive_loss(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, tau: float,
                            *, block_size: int = 2048) -> torch.Tensor:
    """InfoNCE: mean over rows i of ``−log softmax_j(⟨s_i, t_j⟩/τ)[i]`` (M×d each, projected and normalised).

    Over more than ``block_size`` rows it runs in row blocks with activation checkpointing, so the M×M logits
    are never all kept for the backward pass; the value and gradients are the same. In at least fp32.
    """
    if student_embeddings.shape != teacher_embeddings.shape:
        raise ValueError(f"embeddings must have the same shape, got {tuple(student_embeddings.shape)} and "
                         f"{tuple(teacher_embeddings.shape)}")
    student_embeddings, teacher_embeddings = _fp32(student_embeddings), _fp32(teacher_embeddings)
    count = student_embeddings.shape[0]
    if count <= block_size:
        return _infonce_block_sum(student_embeddings, teacher_embeddings, 0, tau) / count
    total = student_embeddings.new_zeros(())
    for start in range(0, count, block_size):
        block = student_embeddings[start:start + block_size]
        total = total + checkpoint(_infonce_block_sum, block, teacher_embeddings, start, tau, use_reentrant=False)
    return total / count


def context_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """B×N×N ``softmax(F·Fᵀ/√D)`` of B×N×D tokens, row-wise, in fp32."""
    tokens = _fp32(tokens)
    return torch.softmax(tokens @ tokens.transpose(1, 2) / math.sqrt(tokens.shape[2]), dim=2)


def contextual_loss(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """``MSE(CS_t, CS_s)`` of the per-image token self-similarities (B×N×D_s and B×N×D_t), averaged over images."""
    if student_tokens.shape[:2] != teacher_tokens.shape[:2]:
        raise ValueError(f"student and teacher need the same B×N tokens, got {tuple(student_tokens.shape[:2])} and "
                         f"{tuple(teacher_tokens.shape[:2])}")
    return F.mse_loss(context_similarity(student_tokens), context_similarity(teacher_tokens.detach()))


def global_temperature(start: float, end: float, fraction: float, schedule: str = "cosine") -> float:
    """τ_g at ``fraction`` ∈ [0, 1] of training: ``start`` at 0, ``end`` at 1, cosine or linear in between."""
    fraction = min(max(fraction, 0.0), 1.0)
    if schedule == "cosine":
        return end + (start - end) * (1.0 + math.cos(math.pi * fraction)) / 2.0
    if schedule == "linear":
        return start + (end - start) * fraction
    raise ValueError(f"tau_global_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


# ------------------------------------------------------------------------------------------ tokens and sampling

def token_grid(tokens: torch.Tensor) -> torch.Tensor:
    """B×D×G×G grid of a B×C×H×W map (square) or of B×N×D tokens with N = G² (row-major positions)."""
    if tokens.dim() == 4:
        if tokens.shape[2] != tokens.shape[3]:
            raise ValueError(f"trg needs a square token grid, got a {tokens.shape[2]}×{tokens.shape[3]} map")
        return tokens
    if tokens.dim() == 3:
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"trg needs N = G² tokens on a square grid, got N={tokens.shape[1]} (prefix tokens "
                             "such as CLS must be dropped: use the 'tokens' tap)")
        return tokens.transpose(1, 2).unflatten(2, (side, side))
    raise ValueError(f"trg needs B×N×D tokens or a B×C×H×W map, got shape {tuple(tokens.shape)}")


def grid_side(shape: tuple[int, ...]) -> int:
    """G of a per-sample token shape (N×D or C×H×W); raise ValueError if it is not a square grid."""
    return token_grid(torch.empty((1, *shape), device="meta")).shape[-1]


def match_grids(student_map: torch.Tensor, teacher_map: torch.Tensor,
                mode: str = "avg") -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger of two B×D×G×G grids to the smaller G (adaptive average or max pooling)."""
    pool = {"avg": F.adaptive_avg_pool2d, "max": F.adaptive_max_pool2d}.get(mode)
    if pool is None:
        raise ValueError(f"grid_match must be one of {', '.join(GRID_MATCHES)}, got {mode!r}")
    side = min(student_map.shape[-1], teacher_map.shape[-1])
    if student_map.shape[-1] != side:
        student_map = pool(student_map, side)
    if teacher_map.shape[-1] != side:
        teacher_map = pool(teacher_map, side)
    return student_map, teacher_map


def sample_positions(batch: int, positions: int, m: int, device: torch.device | str) -> torch.Tensor:
    """B×m grid positions per image, uniform without replacement (one batched draw from the global RNG)."""
    if not 0 < m <= positions:
        raise ValueError(f"tokens_per_image must be in [1, {positions}] (the token grid), got {m}")
    return torch.rand(batch, positions, device=device).topk(m, dim=1).indices


def gather_tokens(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The B×m×D tokens of B×N×D ``tokens`` at B×m ``positions``."""
    return tokens.gather(1, positions.unsqueeze(2).expand(-1, -1, tokens.shape[2]))


# ----------------------------------------------------------------------------------------------------- method

def check_trg_hparams(hp: dict[str, Any]) -> None:
    """Raise ValueError naming the first hyper-parameter value TRG cannot use."""
    for key in (*TERM_WEIGHTS, "sigma", "tau_local", "tau_global_start", "tau_global_end", "temperature"):
        if isinstance(hp[key], bool) or not isinstance(hp[key], (int, float)):
            raise ValueError(f"trg: {key} must be a number, got {hp[key]!r}")
    for key in TERM_WEIGHTS:
        if hp[key] < 0:
            raise ValueError(f"trg: {key} must be ≥ 0 (0 switches the term off), got {hp[key]}")
    if not any(hp[key] > 0 for key in TERM_WEIGHTS):
        raise ValueError(f"trg: every term weight is 0 ({', '.join(TERM_WEIGHTS)}); switch at least one on")
    for key in ("tokens_per_image", "knn_k", "proj_dim", "block_size"):
        if isinstance(hp[key], bool) or not isinstance(hp[key], int) or hp[key] < 1:
            raise ValueError(f"trg: {key} must be a positive integer, got {hp[key]!r}")
    for key in ("sigma", "tau_local", "tau_global_start", "tau_global_end", "temperature"):
        if not hp[key] > 0:
            raise ValueError(f"trg: {key} must be > 0, got {hp[key]}")
    if hp["tau_global_end"] > hp["tau_global_start"]:
        raise ValueError(f"trg: the τ_g schedule must anneal from high to low, but tau_global_end="
                         f"{hp['tau_global_end']} is above tau_global_start={hp['tau_global_start']}")
    for key, allowed in (("kl_direction", KL_DIRECTIONS), ("tau_global_schedule", SCHEDULES),
                         ("grid_match", GRID_MATCHES), ("context_tokens", CONTEXT_TOKENS)):
        if hp[key] not in allowed:
            raise ValueError(f"trg: {key} must be one of {', '.join(allowed)}, got {hp[key]!r}")


@register_method("trg")
class TRG(DistillLoss):
    """Token-level relationship graph KD (Zhang, Liu & He 2023): CE + KD + contextual + local graph + global NCE.

    See the module docstring for each term and for which choices are the paper's and which are ours. Trained
    submodules: ``proj_s``, ``proj_t`` (Linear(D→proj_dim)), only when ``global_weight`` > 0.
    """

    paper = "Zhang, Liu & He, Knowledge Distillation via Token-level Relationship Graph, 2023"
    needs = Needs(student_taps=("logits", "tokens"), teacher_taps=("logits", "tokens"))
    defaults: dict[str, Any] = {
        "ce_weight": 1.0,
        "kd_weight": 1.0,
        "temperature": 4.0,
        "inner_weight": 100.0,
        "local_weight": 1.0,
        "global_weight": 0.5,
        "token_tap": "tokens",
        "grid_match": "avg",
        "tokens_per_image": 16,
        "knn_k": 8,
        "sigma": 1.0,
        "tau_local": 0.1,
        "kl_direction": "teacher_student",
        "tau_global_start": 0.2,
        "tau_global_end": 0.05,
        "tau_global_schedule": "cosine",
        "proj_dim": 128,
        "context_tokens": "all",
        "block_size": 2048,
    }
    term_weights = {"ce": "ce_weight", "kd": "kd_weight", "inner": "inner_weight", "local": "local_weight",
                    "global": "global_weight"}

    @classmethod
    def needs_for(cls, hparams: dict[str, Any]) -> Needs:
        """Student: logits and the token tap; teacher: the token tap, and logits only if the KD term is on."""
        hp = {**cls.defaults, **hparams}
        teacher = (("logits",) if hp["kd_weight"] > 0 else ()) + (hp["token_tap"],)
        return Needs(student_taps=("logits", hp["token_tap"]), teacher_taps=teacher)

    @classmethod
    def check_plan(cls, hparams: dict[str, Any], facts: PlanFacts) -> None:
        """Check values, that m fits the matched token grid and that k < B·m nodes, naming the value."""
        hp = {**cls.defaults, **hparams}
        check_trg_hparams(hp)
        tap = hp["token_tap"]
        side = min(grid_side(facts.student_shapes[tap]), grid_side(facts.teacher_shapes[tap]))
        m = hp["tokens_per_image"]
        if m > side * side:
            shapes = f"student {tuple(facts.student_shapes[tap])}, teacher {tuple(facts.teacher_shapes[tap])}"
            raise ValueError(f"trg: tokens_per_image={m} is larger than the {side}×{side} = {side * side} token grid "
                             f"({shapes})")
        nodes = facts.batch_size * m
        if hp["local_weight"] > 0 and hp["knn_k"] >= nodes:
            raise ValueError(f"trg: knn_k={hp['knn_k']} must be smaller than the {nodes} graph nodes "
                             f"(batch_size {facts.batch_size} × tokens_per_image {m})")

    def __init__(self, ctx: LossContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        check_trg_hparams(self.hparams)
        tap = self.hparams["token_tap"]
        if tap not in ctx.student_shapes or tap not in ctx.teacher_shapes:
            raise ValueError(f"trg needs the '{tap}' shape of both networks; got student taps "
                             f"{sorted(ctx.student_shapes)} and teacher taps {sorted(ctx.teacher_shapes)}")
        side = min(grid_side(ctx.student_shapes[tap]), grid_side(ctx.teacher_shapes[tap]))
        if self.hparams["tokens_per_image"] > side * side:
            raise ValueError(f"trg: tokens_per_image={self.hparams['tokens_per_image']} is larger than the "
                             f"{side}×{side} token grid")
        if self.hparams["global_weight"] > 0:
            proj_dim = int(self.hparams["proj_dim"])
            self.proj_s = nn.Linear(_token_dim(ctx.student_shapes[tap]), proj_dim)
            self.proj_t = nn.Linear(_token_dim(ctx.teacher_shapes[tap]), proj_dim)

    def tau_global(self, progress: Progress) -> float:
        """τ_g of this step: the schedule at done_steps / (total_steps − 1), so the last step uses the end value."""
        total = progress.epochs * progress.steps_per_epoch
        done = (progress.epoch - 1) * progress.steps_per_epoch + progress.step
        hp = self.hparams
        return global_temperature(hp["tau_global_start"], hp["tau_global_end"], done / max(1, total - 1),
                                  hp["tau_global_schedule"])

    def sample_tokens(self, student_tokens: torch.Tensor,
                      teacher_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The B×m tokens of each network at the same freshly drawn positions (B×N×D in, B×m×D out)."""
        batch, positions = student_tokens.shape[:2]
        chosen = sample_positions(batch, positions, self.hparams["tokens_per_image"], student_tokens.device)
        return gather_tokens(student_tokens, chosen), gather_tokens(teacher_tokens, chosen)

    def token_terms(self, student_tokens: torch.Tensor, teacher_tokens: torch.Tensor,
                    progress: Progress) -> dict[str, torch.Tensor]:
        """The weighted TRG terms (inner, local, global) that are switched on, from the two networks' tokens."""
        hp = self.hparams
        student_map, teacher_map = match_grids(token_grid(_fp32(student_tokens)),
                                               token_grid(_fp32(teacher_tokens.detach())), hp["grid_match"])
        student_all = student_map.flatten(2).transpose(1, 2)  # B×N×D_s, N = G²
        teacher_all = teacher_map.flatten(2).transpose(1, 2)
        terms: dict[str, torch.Tensor] = {}
        if hp["local_weight"] > 0 or hp["global_weight"] > 0 or hp["context_tokens"] == "sampled":
            student_sampled, teacher_sampled = self.sample_tokens(student_all, teacher_all)
        if hp["inner_weight"] > 0:
            pair = (student_all, teacher_all) if hp["context_tokens"] == "all" else (student_sampled, teacher_sampled)
            terms["inner"] = hp["inner_weight"] * contextual_loss(*pair)
        if hp["local_weight"] > 0 or hp["global_weight"] > 0:
            student_nodes = student_sampled.reshape(-1, student_sampled.shape[2])
            teacher_nodes = teacher_sampled.reshape(-1, teacher_sampled.shape[2])
        if hp["local_weight"] > 0:
            k = min(hp["knn_k"], student_nodes.shape[0] - 1)  # a partial last batch may have fewer nodes
            terms["local"] = hp["local_weight"] * local_preserving_loss(
                student_nodes, teacher_nodes, k, hp["sigma"], hp["tau_local"], kl_direction=hp["kl_direction"],
                block_size=hp["block_size"])
        if hp["global_weight"] > 0:
            student_embeddings = F.normalize(self.proj_s(student_nodes), dim=1)
            teacher_embeddings = F.normalize(self.proj_t(teacher_nodes), dim=1)
            terms["global"] = hp["global_weight"] * global_contrastive_loss(
                student_embeddings, teacher_embeddings, self.tau_global(progress), block_size=hp["block_size"])
        return terms

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "kd", "inner", "local", "global"} (the terms whose weight is > 0), each weighted."""
        assert teacher is not None, "trg needs a teacher"
        hp = self.hparams
        terms: dict[str, torch.Tensor] = {}
        if hp["ce_weight"] > 0:
            terms["ce"] = hp["ce_weight"] * self.student_ce_loss(student["logits"], batch["target"])
        if hp["kd_weight"] > 0:
            terms["kd"] = hp["kd_weight"] * kd_loss(student["logits"], teacher["logits"].detach(), hp["temperature"])
        tap = hp["token_tap"]
        with torch.autocast(device_type=student[tap].device.type, enabled=False):
            terms.update(self.token_terms(student[tap], teacher[tap], progress))
        return terms


def _token_dim(shape: tuple[int, ...]) -> int:
    """D of a per-sample token shape: C of a C×H×W map, D of N×D tokens."""
    return shape[0] if len(shape) == 3 else shape[-1]
