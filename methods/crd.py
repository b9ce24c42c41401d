"""CRD: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020.

Follows RepDistiller, the authors' code, where it and the paper differ.

Notation. ``e_s = normalize(g_s(f_s))`` and ``e_t = normalize(g_t(f_t))`` are the 128-d embeddings of the
student's and the teacher's ``pooled`` features (heads ``g_s``, ``g_t``: Linear(D→feat_dim), both trained; the
teacher backbone is frozen and its features are detached here). ``M_s`` and ``M_t`` are the N×feat_dim memory
banks of past student and teacher embeddings (N = training-set size). For a sample with contrast indices
``j_0`` (the positive) … ``j_K`` (negatives):

* ``u_j = exp(⟨M_t[j], e_s⟩/τ) / Z_s``: the **student** embedding scored against the **teacher** bank
  (RepDistiller's ``out_v1``, whose loss is ``criterion_s``);
* ``v_j = exp(⟨M_s[j], e_t⟩/τ) / Z_t``: the **teacher** embedding scored against the **student** bank
  (RepDistiller's ``out_v2``, ``criterion_t``).

``L_crd = h(u) + h(v)`` with the NCE loss ``h`` of ``nce_loss`` (noise probability ``P_n = 1/N``), then
``L = ce_weight·CE + crd_weight·L_crd`` (+ ``kd_weight·KD`` for ``crd_kd``).

Choices where the paper, RepDistiller and this implementation differ (each deliberate):

* Normaliser Z. The paper's critic is ``h = e^{s/τ}/(e^{s/τ} + N/M)`` with no Z. RepDistiller (and we) divide
  by a constant ``Z = mean(exp-scores)·N`` estimated once, on the very first forward, from that batch's own
  B×(K+1) scores — the same K+1 samples then scored with it, positive column included — and never updated.
  Here Z_s, Z_t are buffers (−1 means "not set yet"), so they are checkpointed; the sentinel is resolved with
  ``torch.where`` on the device, so no forward ever calls ``.item()`` or syncs with the host. Z is computed as
  ``exp(logsumexp − log count)·N`` (same value as RepDistiller's ``exp(·).mean()·N``, no overflow of the
  intermediate exponentials).
* Both directions. The paper motivates one critic (teacher anchor); RepDistiller sums the NCE loss of both
  directions, and so do we (``h(u) + h(v)``).
* Positives. "Exact" mode (RepDistiller's default): the positive ``j_0`` is the sample itself, not another
  image of its class ("relax" mode is not implemented).
* Negatives come from other classes only (uniform with rejection, see ``kdbench.data.contrast``), as
  RepDistiller's per-class index lists do, yet ``P_n = 1/N`` counts the whole set, as in RepDistiller.
  K is the number of negative columns of the batch's ``contrast_index`` (the data layer draws ``nce_k``).
* The loss is evaluated in log space (``log x = s/τ − log Z``; ``log(x/(x+c)) = −softplus(log c − log x)``),
  which is exactly ``h`` without RepDistiller's ``eps = 1e-7`` in the denominators and cannot give log(0).
* Precision. Heads, scores, NCE and bank updates run in fp32 with autocast disabled (bf16 scores at τ=0.07
  would put ~10% errors into ``exp(s/τ)``); banks and Z are fp32.
* Memory update ``M[n] ← normalize(m·M[n] + (1−m)·e)`` (m = nce_momentum) happens after scoring, without grad,
  at the batch's ``index``, from the post-normalisation embeddings, student → M_s, teacher → M_t. Banks and Z
  are only written in training mode (``loss.train()``, which the engine sets); in eval mode the loss is computed
  from the current state without changing it (an unset Z is then estimated from the batch but not stored).
  Indices in a batch are assumed distinct (the sampler gives a permutation); duplicates would make the
  ``index_copy_`` keep an arbitrary one.
* Banks are initialised uniformly in ±1/√(feat_dim/3) with the global RNG (no generator), like RepDistiller; the
  rows are not normalised (their expected squared norm is 1).
* Several processes (torch.distributed, each rank holding a shard of the global batch): when training, each
  rank's (e_s, e_t, index) rows and per-row log-sum-exp of its scores are all-gathered (one collective of a
  float64 B×(2·feat_dim+3) tensor, rank order = global batch order) before the bank update, so every rank
  applies the same global-batch update and the banks stay identical on all ranks, as in one process; the
  first-batch Z is estimated from all ranks' scores (the same value one process computes on the global
  batch). Each rank scores only its own rows, against the shared banks.

Cost and the two scoring paths. The two banks are 2·N·feat_dim·4 bytes (CIFAR: 51 MB; ImageNet: 1.3 GB).

* Dense (chosen when N ≤ c·(K+1), c = ``DENSE_SCORES_MAX_ROWS_PER_COLUMN`` = 8; ``use_dense_scores``): one
  GEMM ``e @ Mᵀ`` (B×N, 12.8 MB for CIFAR's N = 50,000 at B = 64) and ``torch.gather`` of the B×(K+1) scores
  from it; autograd's backward scatter-adds the score gradients into a B×N zero matrix and multiplies it by
  a copy of the bank taken at scoring time (a second GEMM; the copy, N×feat_dim, is what the in-place bank
  update must not reach). N·B·feat_dim FLOPs each way instead of moving B·(K+1)·feat_dim floats. Each score is
  the same dot product in another summation order (within ~1e-7 relative of the gather path's); the gradient
  at the embeddings differs by up to ~2e-6 of its largest value, the dense one being the closer to float64.
* Gather (N > c·(K+1), e.g. ImageNet's N = 1.28 M at K = 16384): the bank rows ``M[j]`` are gathered and
  scored by a bmm, as below.

The crossover, fwd+bwd of one side at B = 64, K = 16384, feat_dim = 128 on the 2-core CPU VM (fp32, freed memory
kept, bank copy included): dense 32 ms vs gather 152 ms at N = 50,000 (N/(K+1) = 3), 68 vs 137 ms at 6, 85 vs
133 ms at 9, 109 vs 140 ms at 12, 131 vs 133 ms at 18 (timings noisy); c = 8 keeps a margin (the dense cost grows
with N, the gather's does not). A CRD training step (resnet32x4 → resnet8x4, CIFAR sizes) went from 1.33× to
1.11× KD's with the dense path.

Gather path: the gathered bank rows are B×(K+1)×feat_dim floats per side, kept for the backward pass (B=64,
K=16384: ≈0.5 GB each). On the CPU the module gathers into two buffers it keeps between steps
(``index_select(out=…)``): a fresh 0.5 GB tensor per step is a fresh mmap whose page faults cost more than the
gather itself (on CUDA the caching allocator already reuses the memory, and the gather allocates as before).
The scores' backward is the bmm autograd would run, written ``bmm(grad, rows)`` on the CPU (bit-identical
there, ~7× faster than ``bmm(rowsᵀ, grad)``, which copies the
transposed rows); on CUDA it is autograd's own expression.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.engine.distributed import active_world, all_gather_rows
from kdbench.loss import DistillLoss, LossContext, Needs, Progress, loss_dtype, register_method
from kdbench.methods.kd import KD_TERM_DEFAULTS, PlusKD


class _RowScores(torch.autograd.Function):
    """``bmm(rows, e)`` (B×(K+1)×D by B×D → B×(K+1)), differentiable in ``e`` only; ``rows`` is kept for backward."""

    @staticmethod
    def forward(ctx: Any, embedding: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(rows)  # a later in-place gather into the same buffer is caught at backward
        return torch.bmm(rows, embedding.unsqueeze(2)).squeeze(2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (rows,) = ctx.saved_tensors
        if rows.device.type == "cpu":  # same values as autograd's bmm(rowsᵀ, grad), without copying rowsᵀ
            return torch.bmm(grad.unsqueeze(1), rows).squeeze(1), None
        return rows.transpose(1, 2).bmm(grad.unsqueeze(2)).squeeze(2), None  # exactly autograd's BmmBackward0


def gather_rows(bank: torch.Tensor, contrast_index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``bank[contrast_index]`` (B×(K+1)×D, detached), written into ``out``'s first B·(K+1)·D elements if given."""
    batch, columns = contrast_index.shape
    flat = contrast_index.reshape(-1)
    if out is None:
        return bank.detach().index_select(0, flat).view(batch, columns, bank.shape[1])
    rows = out[: flat.numel() * bank.shape[1]].view(flat.numel(), bank.shape[1])
    torch.index_select(bank.detach(), 0, flat, out=rows)
    return rows.view(batch, columns, bank.shape[1])


#: Dense scores when the bank has at most this many rows per contrast column (N ≤ c·(K+1)); see the module docstring.
DENSE_SCORES_MAX_ROWS_PER_COLUMN = 8.0


def use_dense_scores(bank_rows: int, columns: int) -> bool:
    """Whether ``crd_logits`` scores against the whole bank (N ≤ c·(K+1)) rather than gathering the rows."""
    return bank_rows <= DENSE_SCORES_MAX_ROWS_PER_COLUMN * columns


def dense_scores(embedding: torch.Tensor, bank: torch.Tensor, contrast_index: torch.Tensor) -> torch.Tensor:
    """B×(K+1) ``⟨bank[j], embedding_i⟩`` picked from the B×N product ``embedding @ bankᵀ`` (grad to ``embedding``).

    When a gradient is wanted the backward GEMM needs the bank as it is now, so it is copied (N×D): ``CRD``
    updates its banks in place before the backward pass.
    """
    bank = bank.detach()
    if embedding.requires_grad and torch.is_grad_enabled():
        bank = bank.clone()
    return torch.gather(embedding @ bank.T, 1, contrast_index)


def crd_logits(embedding: torch.Tensor, bank: torch.Tensor, contrast_index: torch.Tensor,
               temperature: float, out: torch.Tensor | None = None, dense: bool | None = None) -> torch.Tensor:
    """B×(K+1) scores ``⟨bank[j], embedding_i⟩/τ`` for ``j = contrast_index[i]`` (dense GEMM, or gather and bmm).

    The bank rows are detached (the bank is state, not a parameter); the gradient flows to ``embedding`` only.
    ``dense``: score against the whole bank and pick the B×(K+1) entries (``dense_scores``), or gather the rows
    (``gather_rows``, ``_RowScores``); None chooses by size (``use_dense_scores``). ``out`` (gather path only): a
    flat buffer of at least B·(K+1)·D elements (bank's dtype and device) to gather into, reused by the caller
    across steps; it must not be overwritten before this step's backward (that raises there).
    """
    if dense is None:
        dense = use_dense_scores(bank.shape[0], contrast_index.shape[1])
    if dense:
        return dense_scores(embedding, bank, contrast_index) / temperature
    return _RowScores.apply(embedding, gather_rows(bank, contrast_index, out)) / temperature


def nce_normalizer(logits: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Z = mean over all B×(K+1) entries of ``exp(logits)``, times N (a 0-dim tensor, no grad)."""
    logits = logits.detach()
    return torch.exp(torch.logsumexp(logits.reshape(-1), dim=0) - math.log(logits.numel())) * num_samples


def nce_loss_from_log(log_x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """The NCE loss h(x) of ``nce_loss``, given ``log x`` (B×(K+1), column 0 the positive).

    ``log(x_0/(x_0 + c)) = −softplus(log c − log x_0)`` and ``log(c/(x_k + c)) = −softplus(log x_k − log c)``
    with ``c = K·P_n = K/N``: exact, and finite whatever the magnitude of x. In at least fp32 (fp16/bf16
    upcast, fp64 kept).
    """
    log_x = log_x.to(loss_dtype(log_x))
    negatives = log_x.shape[1] - 1
    if negatives < 1:
        raise ValueError(f"NCE needs at least one negative, got scores of shape {tuple(log_x.shape)}")
    log_c = math.log(negatives / num_samples)
    positive = F.softplus(log_c - log_x[:, 0])
    negative = F.softplus(log_x[:, 1:] - log_c).sum(dim=1)
    return (positive + negative).mean()


def nce_loss(x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """NCE loss with noise probability ``P_n = 1/N`` on normalised scores ``x`` (B×(K+1), positive first).

    ``h(x) = −mean_i[ log(x_i0/(x_i0 + K·P_n)) + Σ_{k≥1} log(K·P_n/(x_ik + K·P_n)) ]``, K = columns − 1.
    ``x`` must be positive (it is ``exp(s/τ)/Z``); ``CRD`` itself works from ``log x`` (``nce_loss_from_log``).
    """
    return nce_loss_from_log(torch.log(x), num_samples)


@torch.no_grad()
def momentum_update(bank: torch.Tensor, index: torch.Tensor, embedding: torch.Tensor, momentum: float) -> None:
    """In place: ``bank[n] ← normalize(m·bank[n] + (1 − m)·e)`` for each batch row (index n, embedding e)."""
    mixed = bank.index_select(0, index) * momentum + embedding.detach().to(bank.dtype) * (1.0 - momentum)
    bank.index_copy_(0, index, F.normalize(mixed, dim=1))


def _feature_dim(shapes: dict[str, tuple[int, ...]], side: str, method: str) -> int:
    if "pooled" not in shapes:
        raise ValueError(f"{method} needs the {side}'s 'pooled' tap shape in the LossContext; got {sorted(shapes)}")
    return math.prod(shapes["pooled"])


@register_method("crd")
class CRD(DistillLoss):
    """ce_weight·CE + crd_weight·(h(u) + h(v)): NCE contrast of embeddings against momentum memory banks.

    See the module docstring for the definitions of u and v and every place this departs from the paper.
    State (checkpointed by ``state_dict``): ``memory_s``, ``memory_t`` (N×feat_dim), ``z_s``, ``z_t`` (−1 until
    the first forward). Both heads ``embed_s``, ``embed_t`` are trained (they are this module's parameters).
    Scores come from one B×N GEMM against the whole bank when N ≤ 8·(K+1) (CIFAR), else from the B×(K+1)
    gathered bank rows (ImageNet): an implementation detail, not a hyper-parameter (module docstring, "Cost").
    """

    paper = "Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020"
    needs = Needs(student_taps=("logits", "pooled"), teacher_taps=("pooled",), batch_extras=("index", "contrast_index"))
    defaults: dict[str, Any] = {
        "ce_weight": 1.0,
        "crd_weight": 0.8,
        "feat_dim": 128,
        "nce_k": 16384,
        "nce_t": 0.07,
        "nce_momentum": 0.5,
    }
    term_weights = {"ce": "ce_weight", "crd": "crd_weight"}

    def __init__(self, ctx: LossContext, **hparams: Any) -> None:
        super().__init__(ctx, **hparams)
        if ctx.num_samples <= 0:
            raise ValueError(f"{self.name} needs the training-set size (LossContext.num_samples), got "
                             f"{ctx.num_samples}")
        feat_dim = int(self.hparams["feat_dim"])
        self.contrast_k = int(self.hparams["nce_k"])
        self.num_samples = ctx.num_samples
        self.embed_s = nn.Linear(_feature_dim(ctx.student_shapes, "student", self.name), feat_dim)
        self.embed_t = nn.Linear(_feature_dim(ctx.teacher_shapes, "teacher", self.name), feat_dim)
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(ctx.num_samples, feat_dim) * (2 * bound) - bound)
        self.register_buffer("memory_t", torch.rand(ctx.num_samples, feat_dim) * (2 * bound) - bound)
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        # scratch for the gathered bank rows (not state: neither a buffer nor in the state_dict)
        self._gather_buffers: list[torch.Tensor | None] = [None, None]
        # the scoring path: None chooses by size (use_dense_scores); True/False force it (tests, benchmarks)
        self._dense_scores: bool | None = None

    def _gather_buffer(self, side: int, contrast_index: torch.Tensor) -> torch.Tensor | None:
        """The flat CPU buffer side ``side`` (0: u, 1: v) gathers its bank rows into, grown (never shrunk) on
        demand; None on other devices (CUDA's caching allocator already reuses the memory, and leaves it to
        evaluation between epochs)."""
        if self.memory_s.device.type != "cpu":
            return None
        size = contrast_index.numel() * self.memory_s.shape[1]
        buffer = self._gather_buffers[side]
        if (buffer is None or buffer.numel() < size or buffer.device != self.memory_s.device
                or buffer.dtype != self.memory_s.dtype):
            buffer = self._gather_buffers[side] = None  # free the old one before allocating
            buffer = self._gather_buffers[side] = torch.empty(size, dtype=self.memory_s.dtype,
                                                              device=self.memory_s.device)
        return buffer

    def _normalizer(self, buffer: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        """The stored Z, or (first forward) the batch's ``estimate`` of it, stored when training; no host sync."""
        z = torch.where(buffer < 0, estimate.to(buffer.dtype), buffer)
        if self.training:
            buffer.copy_(z)
        return z

    def crd_terms(self, f_s: torch.Tensor, f_t: torch.Tensor, index: torch.Tensor,
                  contrast_index: torch.Tensor) -> torch.Tensor:
        """Unweighted ``h(u) + h(v)`` for pooled features; updates Z (once) and both banks when training."""
        tau = float(self.hparams["nce_t"])
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            e_s = F.normalize(self.embed_s(f_s.flatten(1).float()), dim=1)
            e_t = F.normalize(self.embed_t(f_t.detach().flatten(1).float()), dim=1)
            dense = self._dense_scores
            if dense is None:
                dense = use_dense_scores(self.memory_s.shape[0], contrast_index.shape[1])
            buffers = (None, None) if dense else (self._gather_buffer(0, contrast_index),
                                                  self._gather_buffer(1, contrast_index))
            # student vs teacher bank, teacher vs student bank
            logits_u = crd_logits(e_s, self.memory_t, contrast_index, tau, buffers[0], dense=dense)
            logits_v = crd_logits(e_t, self.memory_s, contrast_index, tau, buffers[1], dense=dense)
            with torch.no_grad():
                if self.training and active_world() > 1:
                    e_s_all, e_t_all, index, estimate_u, estimate_v = self._global_batch(e_s, e_t, index, logits_u,
                                                                                         logits_v)
                else:
                    e_s_all, e_t_all = e_s, e_t
                    estimate_u = nce_normalizer(logits_u, self.num_samples)
                    estimate_v = nce_normalizer(logits_v, self.num_samples)
                log_z_s = torch.log(self._normalizer(self.z_s, estimate_u))
                log_z_t = torch.log(self._normalizer(self.z_t, estimate_v))
            loss = (nce_loss_from_log(logits_u - log_z_s, self.num_samples)
                    + nce_loss_from_log(logits_v - log_z_t, self.num_samples))
            if self.training:
                momentum = float(self.hparams["nce_momentum"])
                momentum_update(self.memory_s, index, e_s_all, momentum)
                momentum_update(self.memory_t, index, e_t_all, momentum)
        return loss

    def _global_batch(self, e_s: torch.Tensor, e_t: torch.Tensor, index: torch.Tensor, logits_u: torch.Tensor,
                      logits_v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """All ranks' (e_s, e_t, index) rows in rank order and the global batch's Z estimates (one all-gather)."""
        dim = e_s.shape[1]
        rows = torch.cat([e_s.double(), e_t.double(), index.to(e_s.device).double()[:, None],
                          torch.logsumexp(logits_u, dim=1).double()[:, None],
                          torch.logsumexp(logits_v, dim=1).double()[:, None]], dim=1)
        gathered = all_gather_rows(rows)  # float64 holds the fp32 values and indices < 2^53 exactly
        log_count = math.log(gathered.shape[0] * logits_u.shape[1])
        estimates = [torch.exp(torch.logsumexp(gathered[:, column], dim=0) - log_count) * self.num_samples
                     for column in (2 * dim + 1, 2 * dim + 2)]
        return (gathered[:, :dim].float(), gathered[:, dim : 2 * dim].float(), gathered[:, 2 * dim].long(),
                *estimates)

    def forward(
        self,
        student: dict[str, torch.Tensor],
        teacher: dict[str, torch.Tensor] | None,
        batch: dict[str, torch.Tensor],
        progress: Progress,
    ) -> dict[str, torch.Tensor]:
        """Return {"ce", "crd"}, each weighted."""
        assert teacher is not None, f"{self.name} needs a teacher"
        if "contrast_index" not in batch or "index" not in batch:
            raise KeyError(f"{self.name} needs batch['index'] and batch['contrast_index'] (declared in its needs)")
        ce = self.student_ce_loss(student["logits"], batch["target"])
        crd = self.crd_terms(student["pooled"], teacher["pooled"], batch["index"], batch["contrast_index"])
        return {"ce": self.hparams["ce_weight"] * ce, "crd": self.hparams["crd_weight"] * crd}


@register_method("crd_kd")
class CRDKD(PlusKD, CRD):
    """CRD plus ``kd_weight·kd_loss(T)`` on the logits (the paper's "CRD+KD"): terms {"ce", "crd", "kd"}."""

    needs = Needs(student_taps=("logits", "pooled"), teacher_taps=("logits", "pooled"),
                  batch_extras=("index", "contrast_index"))
    defaults: dict[str, Any] = {**CRD.defaults, **KD_TERM_DEFAULTS}
    term_weights = {**CRD.term_weights, "kd": "kd_weight"}
