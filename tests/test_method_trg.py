"""TRG: its pure losses (golden values, invariants, gradients), token handling, schedule, ablations and training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from method_harness import checkpoint_round_trip, train_steps

from kdbench.config import ConfigError, parse_grid
from kdbench.grid.expand import expand_grid
from kdbench.grid.needs import check_method_needs
from kdbench.loss import LossContext, Progress
from kdbench.methods.trg import (
    TRG,
    contextual_loss,
    global_contrastive_loss,
    global_temperature,
    knn_indices,
    local_preserving_loss,
    match_grids,
    sample_positions,
    token_grid,
)

TINY_VIT = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def _reference_local(student: torch.Tensor, teacher: torch.Tensor, k: int, sigma: float, tau: float) -> float:
    """The local preserving loss written out with Python loops and math (an independent reading of the formula)."""
    def unit(rows: list[list[float]]) -> list[list[float]]:
        return [[x / math.sqrt(sum(v * v for v in row)) for x in row] for row in rows]

    def weight(a: list[float], b: list[float]) -> float:
        return math.exp(-sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / (2 * sigma))

    def softmax(values: list[float]) -> list[float]:
        exps = [math.exp(v / tau) for v in values]
        return [e / sum(exps) for e in exps]

    s, t = unit(student.tolist()), unit(teacher.tolist())
    total = 0.0
    for i in range(len(t)):
        def cosine(j: int, i: int = i) -> float:
            return sum(a * b for a, b in zip(t[i], t[j], strict=True))

        others = sorted((j for j in range(len(t)) if j != i), key=lambda j: -cosine(j))
        neighbours = others[:k]
        p_t = softmax([weight(t[i], t[j]) for j in neighbours])
        p_s = softmax([weight(s[i], s[j]) for j in neighbours])
        total += sum(p * (math.log(p) - math.log(q)) for p, q in zip(p_t, p_s, strict=True))
    return total / len(t)


def _trg(hparams: dict | None = None, student_shape=(16, 6), teacher_shape=(16, 5), epochs: int = 2) -> TRG:
    ctx = LossContext(num_classes=4, student_shapes={"tokens": student_shape, "logits": (4,)},
                      teacher_shapes={"tokens": teacher_shape, "logits": (4,)}, epochs=epochs)
    return TRG(ctx, **TRG.resolve_hparams({"tokens_per_image": 4, "knn_k": 3, **(hparams or {})}))


# ------------------------------------------------------------------------------------------------ pure losses

def test_identical_tokens_give_zero_local_and_contextual_loss():
    torch.manual_seed(0)
    nodes = torch.randn(40, 12)
    assert local_preserving_loss(nodes, nodes, 5, 1.0, 0.1).item() == 0.0
    tokens = torch.randn(3, 9, 12)
    assert contextual_loss(tokens, tokens).item() == 0.0
    assert local_preserving_loss(torch.randn(40, 7), nodes, 5, 1.0, 0.1).item() > 0.0


def test_global_loss_is_lower_with_identical_than_with_shuffled_rows():
    torch.manual_seed(1)
    embeddings = F.normalize(torch.randn(32, 16), dim=1)
    shuffled = embeddings[torch.roll(torch.arange(32), 1)]
    assert global_contrastive_loss(embeddings, embeddings, 0.1) < global_contrastive_loss(embeddings, shuffled, 0.1)


@pytest.mark.parametrize(("k", "sigma", "tau"), [(1, 1.0, 0.1), (3, 0.5, 0.2), (7, 2.0, 1.0)])
def test_local_loss_matches_loop_reference(k, sigma, tau):
    torch.manual_seed(k)
    student, teacher = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    value = local_preserving_loss(student, teacher, k, sigma, tau).item()
    assert value == pytest.approx(_reference_local(student, teacher, k, sigma, tau), rel=1e-9, abs=1e-12)
    reverse = local_preserving_loss(student, teacher, k, sigma, tau, kl_direction="student_teacher").item()
    if k > 1:
        assert reverse != pytest.approx(value)


def test_hand_computed_global_and_contextual_values():
    # two orthogonal embeddings, τ=1: each row's logits are [1, 0] → −log(e/(e+1)) = log(1 + e⁻¹)
    eye = torch.eye(2)
    assert global_contrastive_loss(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # teacher tokens [[1], [0]] (D=1): CS_t rows [e/(e+1), 1/(e+1)] and [½, ½]; a zero student gives ½ everywhere
    teacher = torch.tensor([[[1.0], [0.0]]])
    gap = math.e / (math.e + 1) - 0.5
    assert contextual_loss(torch.zeros(1, 2, 1), teacher).item() == pytest.approx(2 * gap**2 / 4, rel=1e-6)


def test_knn_is_built_on_the_teacher_and_excludes_self():
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05]])
    neighbours = knn_indices(points, 2)
    assert neighbours.shape == (5, 2)
    assert all(i not in row for i, row in enumerate(neighbours.tolist()))
    assert set(neighbours[2].tolist()) == {3, 1}
    assert set(neighbours[0].tolist()) == {4, 1}
    with pytest.raises(ValueError, match="k must be in"):
        knn_indices(points, 5)


def test_blockwise_computation_equals_the_full_one():
    torch.manual_seed(2)
    student = torch.randn(50, 6, requires_grad=True)
    teacher = torch.randn(50, 4)
    full = local_preserving_loss(student, teacher, 4, 1.0, 0.1, block_size=4096)
    (grad_full,) = torch.autograd.grad(full, student)
    blocked = local_preserving_loss(student, teacher, 4, 1.0, 0.1, block_size=7)
    (grad_blocked,) = torch.autograd.grad(blocked, student)
    torch.testing.assert_close(blocked, full)
    torch.testing.assert_close(grad_blocked, grad_full)

    s = F.normalize(torch.randn(50, 8), dim=1).requires_grad_()
    t = F.normalize(torch.randn(50, 8), dim=1).requires_grad_()
    full = global_contrastive_loss(s, t, 0.07)
    grads_full = torch.autograd.grad(full, (s, t))
    blocked = global_contrastive_loss(s, t, 0.07, block_size=16)
    grads_blocked = torch.autograd.grad(blocked, (s, t))
    torch.testing.assert_close(blocked, full)
    for a, b in zip(grads_blocked, grads_full, strict=True):
        torch.testing.assert_close(a, b)


def test_finite_difference_gradients():
    torch.manual_seed(3)
    teacher_nodes = torch.randn(9, 3, dtype=torch.float64)
    student_nodes = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: local_preserving_loss(s, teacher_nodes, 3, 1.0, 0.5), (student_nodes,))
    s = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: global_contrastive_loss(F.normalize(a, dim=1), F.normalize(b, dim=1), 0.3, block_size=4), (s, t)
    )
    teacher_tokens = torch.randn(2, 4, 3, dtype=torch.float64)
    student_tokens = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: contextual_loss(x, teacher_tokens), (student_tokens,))


def test_no_gradient_reaches_teacher_tokens():
    torch.manual_seed(4)
    teacher = torch.randn(12, 3, requires_grad=True)
    student = torch.randn(12, 5, requires_grad=True)
    (local_preserving_loss(student, teacher, 3, 1.0, 0.1)
     + contextual_loss(student.view(3, 4, 5), teacher.view(3, 4, 3))).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- tokens, sampling, τ_g

def test_token_grid_and_grid_matching():
    tokens = torch.arange(2 * 16 * 3, dtype=torch.float32).view(2, 16, 3)
    grid = token_grid(tokens)
    assert grid.shape == (2, 3, 4, 4)
    assert torch.equal(grid[1, :, 2, 3], tokens[1, 2 * 4 + 3])  # row-major positions
    with pytest.raises(ValueError, match="N=17"):
        token_grid(torch.zeros(1, 17, 3))
    large, small = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    pooled_student, same_teacher = match_grids(large, small)
    assert pooled_student.shape == (2, 3, 4, 4) and same_teacher is small
    torch.testing.assert_close(pooled_student[:, :, 1, 2], large[:, :, 2:4, 4:6].mean(dim=(2, 3)))
    assert match_grids(small, large, "max")[1][0, 0, 0, 0] == large[0, 0, :2, :2].max()


def test_the_same_positions_are_sampled_for_both_networks():
    loss = _trg()
    positions = torch.arange(16, dtype=torch.float32)
    student = positions.view(1, 16, 1).expand(5, 16, 6)  # every channel holds the token's position
    teacher = (1000 + positions).view(1, 16, 1).expand(5, 16, 5)
    torch.manual_seed(5)
    s, t = loss.sample_tokens(student, teacher)
    assert s.shape == (5, 4, 6) and t.shape == (5, 4, 5)
    assert torch.equal(s[..., 0] + 1000, t[..., 0])
    assert all(len(set(row)) == 4 for row in s[..., 0].tolist())  # without replacement
    assert len({tuple(row) for row in s[..., 0].tolist()}) > 1  # drawn per image
    s2, _ = loss.sample_tokens(student, teacher)
    assert not torch.equal(s, s2)  # re-drawn each step


def test_sample_positions_rejects_m_larger_than_the_grid():
    assert sample_positions(3, 16, 16, "cpu").sort(dim=1).values.tolist() == [list(range(16))] * 3
    with pytest.raises(ValueError, match=r"tokens_per_image must be in \[1, 16\]"):
        sample_positions(3, 16, 17, "cpu")


def test_tau_schedule_hits_its_endpoints():
    assert global_temperature(0.2, 0.05, 0.0) == 0.2
    assert global_temperature(0.2, 0.05, 1.0) == pytest.approx(0.05)
    assert global_temperature(0.2, 0.05, 0.5, "linear") == pytest.approx(0.125)
    assert global_temperature(0.2, 0.05, 0.5) == pytest.approx(0.125)
    values = [global_temperature(0.2, 0.05, f / 10) for f in range(11)]
    assert values == sorted(values, reverse=True)
    loss = _trg(epochs=3)
    assert loss.tau_global(Progress(epoch=1, epochs=3, step=0, steps_per_epoch=5)) == 0.2
    assert loss.tau_global(Progress(epoch=3, epochs=3, step=4, steps_per_epoch=5)) == pytest.approx(0.05)
    fixed = _trg({"tau_global_start": 0.1, "tau_global_end": 0.1})
    assert fixed.tau_global(Progress(epoch=2, epochs=2, step=0, steps_per_epoch=3)) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------ the method module

def _outputs(loss: TRG, batch: int = 3, seed: int = 6):
    generator = torch.Generator().manual_seed(seed)
    student = {"logits": torch.randn(batch, 4, generator=generator, requires_grad=True),
               "tokens": torch.randn(batch, 16, 6, generator=generator, requires_grad=True)}
    teacher = {"logits": torch.randn(batch, 4, generator=generator),
               "tokens": torch.randn(batch, 16, 5, generator=generator)}
    return student, teacher, {"target": torch.tensor([0, 1, 2, 3][:batch])}


def test_all_terms_and_their_weights():
    loss = _trg()
    student, teacher, batch = _outputs(loss)
    torch.manual_seed(0)
    terms = loss(student, teacher, batch, Progress(1, 2))
    assert set(terms) == {"ce", "kd", "inner", "local", "global"}
    doubled = _trg({"local_weight": 2.0, "global_weight": 1.0, "inner_weight": 200.0})
    doubled.load_state_dict(loss.state_dict())
    torch.manual_seed(0)
    terms2 = doubled(student, teacher, batch, Progress(1, 2))
    for name in ("local", "global", "inner"):
        torch.testing.assert_close(terms2[name], 2 * terms[name])


@pytest.mark.parametrize("off", ["kd_weight", "inner_weight", "local_weight", "global_weight"])
def test_ablation_flags_remove_their_terms(off):
    term = off.removesuffix("_weight")
    loss = _trg({off: 0.0})
    student, teacher, batch = _outputs(loss)
    terms = loss(student, teacher, batch, Progress(1, 2))
    assert term not in terms and "ce" in terms and len(terms) == 4
    assert hasattr(loss, "proj_s") == (off != "global_weight")
    assert ("logits" in TRG.needs_for(loss.hparams).teacher_taps) == (off != "kd_weight")


def test_gradients_reach_student_and_projections_never_teacher():
    loss = _trg()
    student, teacher, batch = _outputs(loss)
    teacher = {name: value.clone().requires_grad_() for name, value in teacher.items()}
    terms = loss(student, teacher, batch, Progress(1, 2))
    sum(terms.values()).backward()
    assert student["tokens"].grad.abs().sum() > 0
    for name in ("proj_s", "proj_t"):
        assert getattr(loss, name).weight.grad.abs().sum() > 0
    assert teacher["tokens"].grad is None
    assert teacher["logits"].grad is None


def test_partial_batch_with_fewer_nodes_than_k_uses_every_other_node():
    loss = _trg({"knn_k": 8, "tokens_per_image": 4})
    student, teacher, batch = _outputs(loss, batch=2)  # 8 nodes, so k = 7
    terms = loss(student, teacher, batch, Progress(1, 2))
    assert torch.isfinite(terms["local"])


def test_terms_stay_fp32_under_bf16_autocast():
    loss = _trg()
    student, teacher, batch = _outputs(loss)
    student = {name: value.detach().bfloat16() for name, value in student.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = loss(student, {n: v.bfloat16() for n, v in teacher.items()}, batch, Progress(1, 2))
    assert all(terms[name].dtype == torch.float32 for name in ("inner", "local", "global"))


def test_bad_hyper_parameters_are_named():
    for params, message in [({"tau_global_end": 0.3}, "tau_global_end=0.3 is above tau_global_start=0.2"),
                            ({"kl_direction": "both"}, "kl_direction must be one of"),
                            ({"tokens_per_image": 0}, "tokens_per_image must be a positive integer"),
                            ({"local_weight": -1.0}, "local_weight must be ≥ 0"),
                            ({"sigma": "wide"}, "sigma must be a number")]:
        with pytest.raises(ValueError, match=message):
            _trg(params)


# ------------------------------------------------------------------------------------- real networks train

@pytest.mark.parametrize(
    ("teacher", "teacher_kwargs", "student", "student_kwargs"),
    [
        ("resnet8x4", {}, "resnet20", {}),
        ("resnet8x4", {}, "vit_cifar_tiny", TINY_VIT),
        ("vit_cifar_tiny", TINY_VIT, "vit_cifar_tiny", TINY_VIT),
        ("resnet8x4", {}, "timm:deit_tiny_distilled_patch16_224", {"img_size": 32, "patch_size": 8, **TINY_VIT}),
    ],
    ids=["cnn-cnn", "cnn-vit", "vit-vit", "cnn-deit-grid-matched"],
)
def test_trg_trains_two_steps(teacher, teacher_kwargs, student, student_kwargs):
    result = train_steps("trg", teacher, student, steps=2, batch_size=4, teacher_grad=True,
                         teacher_kwargs=teacher_kwargs, student_kwargs=student_kwargs)
    assert set(result.terms[-1]) == {"ce", "kd", "inner", "local", "global"}
    assert result.student_grads and not result.teacher_grads
    assert {"proj_s.weight", "proj_t.weight"} <= result.loss_grads
    assert result.extra_parameters == sum(p.numel() for p in result.loss.parameters())
    restored = checkpoint_round_trip(result.loss)
    assert torch.equal(restored.proj_s.weight, result.loss.proj_s.weight)


# ------------------------------------------------------------------------------------------ plan-time errors

def _plan(tiny_grid_raw: dict, method: dict, pair: dict | None = None, batch_size: int = 16) -> None:
    raw = {**tiny_grid_raw, "methods": [method], "seeds": [0]}
    raw["recipe"] = {**raw["recipe"], "batch_size": batch_size}
    if pair is not None:
        raw["pairs"] = [pair]
    check_method_needs(expand_grid(parse_grid(raw)))


def test_plan_accepts_defaults_and_rejects_bad_values(tiny_grid_raw):
    _plan(tiny_grid_raw, {"name": "trg"})
    cases = [
        ({"name": "trg", "params": {"knn_k": 64}}, None, 4, r"knn_k=64 must be smaller than the 64 graph nodes"),
        ({"name": "trg", "params": {"tokens_per_image": 50}}, {"teacher": "cnn_large", "student": "cnn_small"}, 16,
         r"tokens_per_image=50 is larger than the 7×7 = 49 token grid"),
        ({"name": "trg", "params": {"tau_global_end": 0.5}}, None, 16, r"tau_global_end=0.5 is above"),
        ({"name": "trg"}, {"teacher": "cnn_small", "student": "mlp_800x2"}, 16,
         r"needs the student tap 'tokens', which student mlp_800x2 does not have"),
    ]
    for method, pair, batch_size, message in cases:
        with pytest.raises(ConfigError, match=message):
            _plan(tiny_grid_raw, method, pair, batch_size)
