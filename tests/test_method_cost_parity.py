"""The cheaper CRD, MLLD and contrast-index code paths compute the numbers the straightforward formulations do.

Each reference below is the formulation the methods used before they were made cheaper (issue 15), written out
here with plain torch ops and independent of the methods' code: CRD's gather + autograd bmm and its Z, NCE and
bank update (against both of CRD's scoring paths, gather and dense); the contrast sampler's full-matrix
rejection loop; MLLD's per-temperature loop. One SGD step of real networks runs through both on identical
weights and batches, and the loss terms, the gradients and every parameter and buffer after the step are
compared: bit for bit where the arithmetic is the same operation, else (MLLD's Gram products, bmm instead of
mm, and the gradient sums over temperatures) within 1e-6 of the largest value (``_close``), and CRD's dense
scores (a GEMM against the whole bank instead of a bmm of gathered rows) within ``DENSE_RELATIVE``.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from kdbench.data import sample_contrast_indices
from kdbench.loss import METHODS, LossContext, Progress
from kdbench.methods.crd import crd_logits, use_dense_scores
from kdbench.models import FeatureTaps, build_model, tap_shapes

NUM_CLASSES = 10
PROGRESS = Progress(epoch=1, epochs=1)
RELATIVE = 1e-6
#: CRD's dense scoring path against the gather reference, per tensor. Measured on these steps: the gradient at the
#: embeddings 1.9e-6, the second step's kd term 1.3e-6, a BatchNorm bias after the steps 1.6e-6, the rest below
#: 1e-6: each score and its gradient is the same sum in another order, and at CIFAR scale the dense path's gradient
#: is the one closer to float64 (test_crd_dense_scores_and_gradient_at_cifar_scale).
DENSE_RELATIVE = 1e-5


def _close(new: torch.Tensor, reference: torch.Tensor, what: str, relative: float = RELATIVE) -> None:
    """``max |new − reference| ≤ relative · max |reference|`` (per tensor, default 1e-6), shapes and dtypes equal."""
    assert new.shape == reference.shape and new.dtype == reference.dtype, what
    scale = reference.detach().abs().max().item()
    error = (new.detach() - reference.detach()).abs().max().item()
    assert error <= relative * scale, f"{what}: max error {error:.3g} against max value {scale:.3g}"


def _sgd_step(parameters: list[torch.nn.Parameter], total: torch.Tensor) -> dict[str, torch.Tensor]:
    """One step of the recipe's optimiser (SGD, momentum, weight decay); returns the gradients used."""
    optimizer = torch.optim.SGD(parameters, lr=0.05, momentum=0.9, weight_decay=5e-4)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grads = {str(i): p.grad.clone() for i, p in enumerate(parameters) if p.grad is not None}
    optimizer.step()
    return grads


def _pair(method: str, teacher_arch: str, student_arch: str, num_samples: int = 0, **hparams):
    torch.manual_seed(0)
    teacher = build_model(teacher_arch, NUM_CLASSES).eval().requires_grad_(False)
    student = build_model(student_arch, NUM_CLASSES)
    cls = METHODS.get(method)
    needs = cls.needs_for(cls.resolve_hparams(dict(hparams)))
    ctx = LossContext(num_classes=NUM_CLASSES, num_samples=num_samples,
                      student_shapes=tap_shapes(student, needs.student_taps, (3, 32, 32)),
                      teacher_shapes=tap_shapes(teacher, needs.teacher_taps, (3, 32, 32)))
    return teacher, student, cls(ctx, **cls.resolve_hparams(dict(hparams))), needs


# ---------------------------------------------------------------------------------------------------- contrast


def _reference_contrast(index: torch.Tensor, targets: torch.Tensor, k: int, generator: torch.Generator):
    """Rejection sampling re-checking the whole B×K matrix every round."""
    negatives = torch.randint(0, len(targets), (len(index), k), generator=generator)
    clash = targets[negatives] == targets[index][:, None]
    while clash.any():
        negatives[clash] = torch.randint(0, len(targets), (int(clash.sum()),), generator=generator)
        clash = targets[negatives] == targets[index][:, None]
    return torch.cat([index[:, None], negatives], dim=1)


@pytest.mark.parametrize(("classes", "count", "k", "batch"), [(100, 5000, 2048, 16), (2, 60, 40, 8), (3, 9, 5, 4)])
def test_contrast_indices_are_the_full_recheck_draws(classes: int, count: int, k: int, batch: int) -> None:
    targets = torch.arange(count) % classes
    for seed in range(3):
        index = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:batch]
        expected = _reference_contrast(index, targets, k, torch.Generator().manual_seed(seed))
        generator = torch.Generator().manual_seed(seed)
        assert torch.equal(sample_contrast_indices(index, targets, k, generator), expected)
        assert torch.equal(torch.randint(0, 1 << 30, (4,), generator=generator),  # the same number of draws
                           torch.randint(0, 1 << 30, (4,), generator=_advanced(index, targets, k, seed)))


def _advanced(index: torch.Tensor, targets: torch.Tensor, k: int, seed: int) -> torch.Generator:
    generator = torch.Generator().manual_seed(seed)
    _reference_contrast(index, targets, k, generator)
    return generator


# ---------------------------------------------------------------------------------------------------- CRD


def _reference_crd(loss, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
    """CRD's terms as formulated before (gather + autograd bmm), updating ``loss``'s Z and banks in place."""
    hp, n = loss.hparams, loss.num_samples
    contrast, index = batch["contrast_index"], batch["index"]
    e_s = F.normalize(loss.embed_s(student_out["pooled"].flatten(1).float()), dim=1)
    e_t = F.normalize(loss.embed_t(teacher_out["pooled"].detach().flatten(1).float()), dim=1)

    def scores(embedding, bank):
        rows = bank.detach().index_select(0, contrast.reshape(-1)).view(*contrast.shape, bank.shape[1])
        return torch.bmm(rows, embedding.unsqueeze(2)).squeeze(2) / hp["nce_t"]

    def log_z(buffer, logits):
        flat = logits.detach().reshape(-1)
        estimate = torch.exp(torch.logsumexp(flat, dim=0) - math.log(flat.numel())) * n
        value = torch.where(buffer < 0, estimate.to(buffer.dtype), buffer)
        buffer.copy_(value)
        return torch.log(value)

    def nce(log_x):
        log_c = math.log((log_x.shape[1] - 1) / n)
        return (F.softplus(log_c - log_x[:, 0]) + F.softplus(log_x[:, 1:] - log_c).sum(dim=1)).mean()

    u, v = scores(e_s, loss.memory_t), scores(e_t, loss.memory_s)
    with torch.no_grad():
        log_z_s, log_z_t = log_z(loss.z_s, u), log_z(loss.z_t, v)
    crd = nce(u - log_z_s) + nce(v - log_z_t)
    with torch.no_grad():
        m = hp["nce_momentum"]
        for bank, embedding in ((loss.memory_s, e_s), (loss.memory_t, e_t)):
            mixed = bank.index_select(0, index) * m + embedding.detach() * (1.0 - m)
            bank.index_copy_(0, index, F.normalize(mixed, dim=1))
    ce = F.cross_entropy(student_out["logits"], batch["target"])
    terms = {"ce": hp["ce_weight"] * ce, "crd": hp["crd_weight"] * crd}
    if "kd_weight" in hp:
        t = hp["temperature"]
        kl = F.kl_div(F.log_softmax(student_out["logits"] / t, dim=1), F.log_softmax(teacher_out["logits"] / t, dim=1),
                      reduction="batchmean", log_target=True)
        terms["kd"] = hp["kd_weight"] * (kl * t**2)
    return terms


def _crd_steps(method: str, fast: bool, steps: int = 2, batch_size: int = 8, num_samples: int = 300, k: int = 512,
               dense: bool | None = None):
    teacher, student, loss, needs = _pair(method, "resnet8", "resnet8", num_samples, nce_k=k)
    loss._dense_scores = dense
    generator = torch.Generator().manual_seed(1)
    targets_all = torch.arange(num_samples) % NUM_CLASSES
    records = []
    heads: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, inputs, output):
            output.retain_grad()
            heads[name] = output
        return hook

    loss.embed_s.register_forward_hook(keep("embedding_s"))
    loss.embed_t.register_forward_hook(keep("embedding_t"))
    with FeatureTaps(student, needs.student_taps) as student_taps, FeatureTaps(teacher, needs.teacher_taps) as taps:
        for _ in range(steps):
            index = torch.randperm(num_samples, generator=generator)[:batch_size]
            batch = {"input": torch.randn(batch_size, 3, 32, 32, generator=generator), "target": targets_all[index],
                     "index": index, "contrast_index": sample_contrast_indices(index, targets_all, k, generator)}
            student_out = student_taps(batch["input"])
            with torch.no_grad():
                teacher_out = taps(batch["input"])
            terms = (loss(student_out, teacher_out, batch, PROGRESS) if fast
                     else _reference_crd(loss, student_out, teacher_out, batch))
            grads = _sgd_step([*student.parameters(), *loss.parameters()], torch.stack(list(terms.values())).sum())
            records.append({"terms": {name: value.detach() for name, value in terms.items()}, "grads": grads,
                            "embedding_grads": {name: value.grad.clone() for name, value in heads.items()}})
    state = {**{f"student.{k}": v for k, v in student.state_dict().items()}, **loss.state_dict()}
    return records, state


def _same(new: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    assert torch.equal(new, reference), what


# (K, N): the gather path is chosen for N = 300 > 8·(16 + 1), the dense path for N = 300 ≤ 8·(512 + 1)
@pytest.mark.parametrize(("k", "dense"), [(16, False), (512, True)])
@pytest.mark.parametrize("method", ["crd", "crd_kd"])
def test_crd_steps_match_gather_and_autograd_bmm(method: str, k: int, dense: bool) -> None:
    """The automatically chosen path: gather + bmm bit for bit; dense GEMM + gather within 1e-6 of the largest value
    (each score is the same dot product summed in another order)."""
    assert use_dense_scores(300, k + 1) is dense
    fast, fast_state = _crd_steps(method, fast=True, k=k)
    reference, reference_state = _crd_steps(method, fast=False, k=k)
    _compare_crd_steps(fast, fast_state, reference, reference_state, dense)


def _compare_crd_steps(fast: list, fast_state: dict, reference: list, reference_state: dict, dense: bool) -> None:
    """Gather path: terms, every gradient and the state after the steps bit for bit. Dense path: the terms, the
    gradient at the embeddings (the heads' outputs) and every parameter and buffer after the steps within
    ``DENSE_RELATIVE`` of the largest value; the student's parameter gradients are not compared (the backward pass
    through the network amplifies a last-bit change at the embeddings, as in MLLD's test)."""
    compare = functools.partial(_close, relative=DENSE_RELATIVE) if dense else _same
    for step, (new, old) in enumerate(zip(fast, reference, strict=True)):
        assert new["terms"].keys() == old["terms"].keys()
        for name in old["terms"]:
            compare(new["terms"][name], old["terms"][name], f"step {step} term {name}")
        for name in old["embedding_grads"]:
            compare(new["embedding_grads"][name], old["embedding_grads"][name], f"step {step} gradient at {name}")
        if not dense:
            for name in old["grads"]:
                _same(new["grads"][name], old["grads"][name], f"step {step} gradient {name}")
    assert fast_state.keys() == reference_state.keys() and {"memory_s", "memory_t", "z_s", "z_t"} <= fast_state.keys()
    for name, value in reference_state.items():  # heads, banks, Z, student weights and BN statistics
        (compare if value.is_floating_point() else _same)(fast_state[name], value, name)


@pytest.mark.parametrize("dense", [False, True])
def test_crd_forced_path_matches_the_reference(dense: bool) -> None:
    """Either path, forced on the same case (N = 300, K = 512; automatic choice: dense), against the reference."""
    fast, fast_state = _crd_steps("crd", fast=True, dense=dense)
    reference, reference_state = _crd_steps("crd", fast=False)
    _compare_crd_steps(fast, fast_state, reference, reference_state, dense)


@pytest.mark.parametrize(("bank_rows", "k", "dense"), [(50_000, 16384, True), (50_000, 8192, True),
                                                      (1_281_167, 16384, False), (1_281_167, 65536, False)])
def test_crd_path_choice_by_size(bank_rows: int, k: int, dense: bool) -> None:
    """CIFAR-like sizes (N = 50,000) score densely, ImageNet-like ones (N = 1.28 M) gather the bank rows."""
    assert use_dense_scores(bank_rows, k + 1) is dense


def test_crd_dense_scores_and_gradient_at_cifar_scale() -> None:
    """Dense GEMM + gather against gather + bmm under CRD's NCE loss: scores within 1e-6; the gradient at the
    embedding no further from the float64 one than the gather path's (at this size the summation order alone moves
    it by ~1e-6 of its largest value); the bank updated in place after scoring does not reach the backward."""
    generator = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(5000, 128, generator=generator), dim=1)
    contrast = torch.randint(0, 5000, (64, 1025), generator=generator)
    embedding = F.normalize(torch.randn(64, 128, generator=generator), dim=1)
    assert use_dense_scores(5000, 1025)

    def run(dtype: torch.dtype, dense: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
        e, m = embedding.to(dtype, copy=True).requires_grad_(), bank.to(dtype, copy=True)
        if dense is None:  # the reference: gather + autograd bmm
            rows = m.index_select(0, contrast.reshape(-1)).view(64, 1025, 128)
            scores = torch.bmm(rows, e.unsqueeze(2)).squeeze(2) / 0.07
        else:
            scores = crd_logits(e, m, contrast, 0.07, dense=dense)
            m.mul_(-1.0)  # as CRD's momentum update after scoring
        log_c = math.log(1024 / 5000)
        log_x = scores - 12.0
        loss = (F.softplus(log_c - log_x[:, 0]) + F.softplus(log_x[:, 1:] - log_c).sum(dim=1)).mean()
        loss.backward()
        return scores.detach(), e.grad

    exact_scores, exact_grad = run(torch.float64, None)
    old_scores, old_grad = run(torch.float32, None)
    new_scores, new_grad = run(torch.float32, True)
    _close(new_scores, old_scores, "scores")
    assert (new_scores.double() - exact_scores).abs().max() <= (old_scores.double() - exact_scores).abs().max() * 2
    scale = exact_grad.abs().max().item()
    new_error = (new_grad.double() - exact_grad).abs().max().item()
    old_error = (old_grad.double() - exact_grad).abs().max().item()
    assert new_error <= max(RELATIVE * scale, old_error), (new_error, old_error, scale)


def test_crd_gather_scores_and_their_gradient_at_cifar_scale_are_bit_identical() -> None:
    generator = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(5000, 128, generator=generator), dim=1)
    contrast = torch.randint(0, 5000, (64, 1025), generator=generator)
    embedding = F.normalize(torch.randn(64, 128, generator=generator), dim=1)
    upstream = torch.randn(64, 1025, generator=generator)
    buffer = torch.empty(64 * 1025 * 128)
    new_e, old_e = embedding.clone().requires_grad_(), embedding.clone().requires_grad_()
    new = crd_logits(new_e, bank, contrast, 0.07, out=buffer, dense=False)
    rows = bank.index_select(0, contrast.reshape(-1)).view(64, 1025, 128)
    old = torch.bmm(rows, old_e.unsqueeze(2)).squeeze(2) / 0.07
    assert torch.equal(new, old)
    new.backward(upstream)
    old.backward(upstream)
    assert torch.equal(new_e.grad, old_e.grad)


def test_crd_gather_buffer_reused_and_guarded() -> None:
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 8, generator=generator)
    contrast = torch.randint(0, 50, (4, 6), generator=generator)
    buffer = torch.empty(4 * 6 * 8 + 5)
    embedding = torch.randn(4, 8, generator=generator, requires_grad=True)
    first = crd_logits(embedding, bank, contrast, 0.5, out=buffer, dense=False)
    crd_logits(embedding, bank, contrast.flip(0), 0.5, out=buffer, dense=False)  # overwrites the saved rows
    with pytest.raises(RuntimeError, match="inplace"):
        first.sum().backward()


# ---------------------------------------------------------------------------------------------------- MLLD


def _up(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _reference_kd(student, teacher, t):
    kl = F.kl_div(F.log_softmax(_up(student) / t, dim=1), F.log_softmax(_up(teacher) / t, dim=1),
                  reduction="batchmean", log_target=True)
    return kl * t**2


def _reference_rows(student, teacher, t):
    """(batch rows Σ_j (G_t − G_s)², class rows Σ_d (M_t − M_s)²) at temperature t, one mm per product."""
    p_s, p_t = F.softmax(_up(student) / t, dim=1), F.softmax(_up(teacher) / t, dim=1)
    return (((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum(dim=1), ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum(dim=1))


def _reference_mlld(loss, student_out, teacher_out, batch) -> dict[str, torch.Tensor]:
    """MLLD's terms as formulated before: a Python loop over temperatures, each term its own call."""
    hp, target = loss.hparams, batch["target"]
    size = target.shape[0]
    logits, teacher = student_out["logits"], teacher_out["logits"].detach()
    s_w, s_s, t_w, t_s = logits[:size], logits[size:], teacher[:size], teacher[size:]
    probs = F.softmax(_up(t_w), dim=1)
    confidence, class_total = probs.max(dim=1).values, probs.sum(dim=0)
    mask = confidence <= torch.quantile(confidence, 0.5)
    class_mask = class_total <= torch.quantile(class_total, 0.5)
    keep, keep_class = mask.float(), class_mask.float()
    classes = s_w.shape[1]
    instance = batch_term = class_term = 0.0
    for t in hp["temperatures"]:
        w_batch, w_class = _reference_rows(s_w, t_w, t)
        s_batch, s_class = _reference_rows(s_s, t_s, t)
        if hp["variant"] == "described":
            instance = instance + _reference_kd(torch.where(mask[:, None], s_w, t_w), t_w, t)
            instance = instance + _reference_kd(s_s, t_s, t)
            batch_term = batch_term + (w_batch * keep).sum() / size
            batch_term = batch_term + (s_batch * keep).sum() / size
            class_term = class_term + (w_class * keep_class).sum() / classes
            class_term = class_term + s_class.sum() / classes
        else:
            weak_kd = _reference_kd(s_w, t_w, t)
            instance = instance + weak_kd * keep.mean()
            instance = instance + (weak_kd if t in (2.0, 6.0) else _reference_kd(s_s, t_s, t))
            batch_term = batch_term + w_batch.sum() / size * keep.mean()
            class_term = class_term + w_class.sum() / classes * keep_class.mean()
    ce = F.cross_entropy(_up(s_w), target) + F.cross_entropy(_up(s_s), target)
    return {"ce": hp["ce_weight"] * ce, "instance": hp["kd_weight"] * instance, "batch": hp["kd_weight"] * batch_term,
            "class": hp["kd_weight"] * class_term}


def _mlld_step(fast: bool, dtype: torch.dtype = torch.float32, batch_size: int = 8, **hparams):
    """One SGD step of resnet8 → resnet8 on random [weak; strong] rows; (terms, logits gradient, student state)."""
    teacher, student, loss, needs = _pair("mlld", "resnet8", "resnet8", **hparams)
    teacher.to(dtype)
    student.to(dtype)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(2 * batch_size, 3, 32, 32, generator=generator).to(dtype)
    batch = {"input": inputs, "target": torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)}
    with FeatureTaps(student, needs.student_taps) as student_taps, FeatureTaps(teacher, needs.teacher_taps) as taps:
        student_out = student_taps(inputs)
        student_out["logits"].retain_grad()
        with torch.no_grad():
            teacher_out = taps(inputs)
        terms = (loss(student_out, teacher_out, batch, PROGRESS) if fast
                 else _reference_mlld(loss, student_out, teacher_out, batch))
        _sgd_step(list(student.parameters()), torch.stack(list(terms.values())).sum())
    return ({name: value.detach() for name, value in terms.items()}, student_out["logits"].grad,
            {name: value for name, value in student.state_dict().items() if value.is_floating_point()})


@pytest.mark.parametrize("hparams", [{"variant": "described"}, {"variant": "released"},
                                     {"variant": "described", "temperatures": [0.7, 3.3, 1.1]}])
def test_mlld_step_matches_the_per_temperature_loop(hparams: dict) -> None:
    """Terms: bit for bit, or 1e-6 where mm became bmm. Gradient at the logits: 1e-6 (the per-temperature
    contributions are summed in another order). Weights after the step: 1e-6 of each tensor's largest value, or
    within the reference's own fp32 rounding error (its distance to the same step in float64, ×3: two independent
    roundings): the zero-initialised BatchNorm biases are −lr·gradient after one step, and the backward pass
    through the network amplifies a last-bit change of the logits' gradient to ~1e-6 of those."""
    terms, grad, state = _mlld_step(True, **hparams)
    ref_terms, ref_grad, ref_state = _mlld_step(False, **hparams)
    exact_state = _mlld_step(False, torch.float64, **hparams)[2]
    assert terms.keys() == ref_terms.keys()
    for name in ("ce", "instance"):  # the same row-wise operations and reductions: bit for bit
        assert torch.equal(terms[name], ref_terms[name]), name
    for name in ("batch", "class"):  # bmm instead of one mm per temperature
        _close(terms[name], ref_terms[name], name)
    _close(grad, ref_grad, "gradient at the student's logits")
    assert state.keys() == ref_state.keys()
    for name, value in ref_state.items():
        error = (state[name] - value).abs().max().item()
        rounding = (value.double() - exact_state[name]).abs().max().item()
        assert error <= max(RELATIVE * value.abs().max().item(), 3 * rounding), (name, error, rounding)


def test_mlld_bf16_gradient_is_not_further_from_the_exact_one() -> None:
    """Under bf16 autocast the per-temperature gradients used to be summed in bf16, one rounding per term; now
    they are summed in fp32 and rounded once: the terms are unchanged, the gradient at least as exact."""
    generator = torch.Generator().manual_seed(0)
    size, classes = 32, 100
    student = (torch.randn(2 * size, classes, generator=generator) * 2).bfloat16()
    teacher = (torch.randn(2 * size, classes, generator=generator) * 3).bfloat16()
    batch = {"target": torch.randint(0, classes, (size,), generator=generator)}
    ctx = LossContext(num_classes=classes, student_shapes={"logits": (classes,)},
                      teacher_shapes={"logits": (classes,)})
    loss = METHODS.get("mlld")(ctx)

    def gradient(fn, dtype):
        logits = student.to(dtype).requires_grad_()
        terms = fn(loss, {"logits": logits}, {"logits": teacher.to(dtype)}, batch)
        torch.stack([v.float() for v in terms.values()]).sum().backward()
        return terms, logits.grad.double()

    exact = gradient(_reference_mlld, torch.float64)[1]
    new_terms, new = gradient(lambda module, *args: module(*args, PROGRESS), torch.bfloat16)
    old_terms, old = gradient(_reference_mlld, torch.bfloat16)
    for name in ("ce", "instance"):
        assert torch.equal(new_terms[name], old_terms[name]), name
    assert (new - exact).norm() <= (old - exact).norm()
