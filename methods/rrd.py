"""RRD: Giakoumoglou & Stathaki, "Relational Representation Distillation", 2024 (arXiv:2407.12073).

``e_s = normalize(g_s(f_s))``, ``e_t = normalize(g_t(f_t))`` embed the ``pooled`` features
(heads Linear(D→feat_dim)); ``Q`` is a FIFO queue of the last K teacher embeddings. With ``s_s = e_s·Qᵀ`` and
``s_t = e_t·Qᵀ`` (B×K), ``L_rrd = −mean_i Σ_k softmax(s_t/τ_t)_ik · log softmax(s_s/τ_s)_ik`` (``rrd_loss``), the
teacher side detached; ``L = ce_weight·CE + rrd_weight·L_rrd`` (+ ``kd_weight·KD`` for ``rrd_kd``).

The teacher head gets no gradient: the teacher scores are detached in the loss and the queue is a buffer, so
in this form of the method nothing could train it. It is therefore a **fixed random projection** (PyTorch's
default Linear initialisation under the global seed): its parameters have ``requires_grad=False`` and it runs
under ``no_grad``, so the optimiser (which receives ``loss.parameters()``) never changes it, weight decay
included. It is still checkpointed with the module's ``state_dict``.

Choices where the authors' code (giakoumoglou/distillers, ``RRD_FifoMemory_Loss``) and this implementation
differ (each choice is ours, named here):

* Enqueue order: their code enqueues the batch's teacher embeddings *before* scoring, so each sample's own
  teacher embedding is in the queue it is scored against; here the queue is updated *after* the loss (as the
  spec says), so the scores only involve embeddings of previous batches.
* Queue initialisation: their ``normalize(queue, dim=0)`` normalises columns; here each of the K random
  Gaussian rows is L2-normalised, so the initial queue holds unit vectors like the embeddings that replace it.
* Wrap-around: their code asserts ``K % B == 0``; here positions are ``(ptr + i) mod K``, so any B works (a
  batch larger than K keeps its last K rows), and the pointer advances by B modulo K without a host sync.
* Queue and pointer are only written in training mode (the engine calls ``loss.train()``); in eval mode the
  loss is computed without changing the state.
* Precision: heads and scores in fp32 with autocast disabled (τ_s = 0.04 amplifies bf16 rounding).
* Several processes (torch.distributed, each rank holding a shard of the global batch): when training, the
  teacher embeddings of all ranks are all-gathered in rank order (= the global batch's order) and enqueued
  together, so the queue and its pointer stay identical on every rank and equal to one process's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.engine.distributed import all_gather_rows
from kdbench.loss import DistillLoss, LossContext, Needs, Progress, loss_dtype, register_method
from kdbench.methods.kd import KD_TERM_DEFAULTS, PlusKD


def rrd_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor, tau_s: float, tau_t: float) -> torch.Tensor:
    """``−mean_i Σ_k softmax(s_t/τ_t)_ik · log softmax(s_s/τ_s)_ik``; the teacher scores are detached.

    Computed in at least fp32 (fp16/bf16 scores upcast, fp64 kept).
    """
    dtype = loss_dtype(student_scores, teacher_scores)
    target = F.softmax(teacher_scores.detach().to(dtype) / tau_t, dim=1)
    return -(target * F.log_softmax(student_scores.to(dtype) / tau_s, dim=1)).sum(dim=1).mean()


@torch.no_grad()
def enqueue(queue: torch.Tensor, pointer: torch.Tensor, keys: torch.Tensor) -> None:
    """FIFO write of ``keys`` (B×d) into ``queue`` (K×d) at ``pointer`` (wrapping); pointer ← (pointer + B) mod K.

    Everything stays on the device: no ``.item()``. A batch longer than K keeps its last K rows.
    """
    size, count = queue.shape[0], keys.shape[0]
    kept = min(count, size)
    offsets = torch.arange(count - kept, count, device=queue.device)
    positions = (pointer + offsets) % size
    queue.index_copy_(0, positions, keys[count - kept :].detach().to(queue.dtype))
    pointer.copy_((pointer + count) % size)


def _feature_dim(shapes: dict[str, tuple[int, ...]], side: str, method: str) -> int:
    if "pooled" not in shapes:
        raise ValueError(f"{method} needs the {side}'s 'pooled' tap shape in the LossContext; got {sorted(shapes)}")
    return math.prod(shapes["pooled"])


@register_method("rrd")
class RRD(DistillLoss):
    """ce_weight·CE + rrd_weight·L_rrd: the student's similarity distribution over a queue of teacher
    embeddings (temperature τ_s) matches the teacher's (τ_t).

    State (checkpointed by ``state_dict``): ``queue`` (K×feat_dim, unit rows) and ``queue_ptr`` (int64). The
    student head ``embed_s`` is trained; the teacher head ``embed_t`` is a fixed random projection (no gradient,
    ``requires_grad=False``; see the module docstring).
    """

    paper = "Giakoumoglou & Stathaki, Relational Representation Distillation, arXiv:2407.12073, 2024"
    needs = Needs(student_taps=("logits", "pooled"), teacher_taps=("pooled",))
    defaults: dict[str, Any] = {
        "ce_weight": 1.0,
        "rrd_weight": 1.0,
        "feat_dim": 128,
        "queue_size": 16384,
        "tau_s": 0.04,
        "tau_t": 0.10,
    }
    term_weights = {"ce": "ce_weight", "rrd": "rrd_weight"}

    def __init__(self, ctx: LossContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        feat_dim, size = int(self.hparams["feat_dim"]), int(self.hparams["queue_size"])
        if size < 1:
            raise ValueError(f"{self.name}: queue_size must be >= 1, got {size}")
        self.embed_s = nn.Linear(_feature_dim(ctx.student_shapes, "student", self.name), feat_dim)
        self.embed_t = nn.Linear(_feature_dim(ctx.teacher_shapes, "teacher", self.name), feat_dim)
        self.embed_t.requires_grad_(False)  # fixed random projection: see the module docstring
        self.register_buffer("queue", F.normalize(torch.randn(size, feat_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def rrd_terms(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        """Unweighted L_rrd for pooled features; enqueues the teacher embeddings afterwards when training."""
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            e_s = F.normalize(self.embed_s(f_s.flatten(1).float()), dim=1)
            with torch.no_grad():
                e_t = F.normalize(self.embed_t(f_t.detach().flatten(1).float()), dim=1)
                queue = self.queue.clone()  # the enqueue below must not alter what backward reads
                teacher_scores = e_t @ queue.T
            loss = rrd_loss(e_s @ queue.T, teacher_scores, float(self.hparams["tau_s"]), float(self.hparams["tau_t"]))
            if self.training:
                enqueue(self.queue, self.queue_ptr, all_gather_rows(e_t))
        return loss

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "rrd"}, each weighted."""
        assert teacher is not None, f"{self.name} needs a teacher"
        ce = self.student_ce_loss(student["logits"], batch["target"])
        rrd = self.rrd_terms(student["pooled"], teacher["pooled"])
        return {"ce": self.hparams["ce_weight"] * ce, "rrd": self.hparams["rrd_weight"] * rrd}


@register_method("rrd_kd")
class RRDKD(PlusKD, RRD):
    """RRD plus ``kd_weight·kd_loss(T)`` on the logits ("RRD+KD"): terms {"ce", "rrd", "kd"}."""

    needs = Needs(student_taps=("logits", "pooled"), teacher_taps=("logits", "pooled"))
    defaults: dict[str, Any] = {**RRD.defaults, **KD_TERM_DEFAULTS}
    term_weights = {**RRD.term_weights, "kd": "kd_weight"}
