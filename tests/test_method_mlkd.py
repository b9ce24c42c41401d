"""MLKD (Ding et al.): pure functions against independent loops, heads and gradients, real steps on rotations4."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_harness import checkpoint_round_trip

from kdbench.data import make_views
from kdbench.data.batches import normalise
from kdbench.loss import METHODS, LossContext, Progress
from kdbench.methods.mlkd import MLKD, correlation_loss, supcon_loss
from kdbench.models import FeatureTaps, build_model, tap_shapes

PROGRESS = Progress(epoch=1, epochs=1)
CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


# ---------------------------------------------------------------------------------------------------- references


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return float(dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)))


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _reference_correlation(s_rot, s_plain, t_rot, t_plain, tau: float) -> float:
    """Row by row: cosine similarities to every plain copy, softmax at τ, KL(teacher ‖ student); mean over rows."""
    total = 0.0
    for i in range(len(s_rot)):
        p_s = _softmax([_cos(s_rot[i], s_plain[j]) / tau for j in range(len(s_plain))])
        p_t = _softmax([_cos(t_rot[i], t_plain[j]) / tau for j in range(len(t_plain))])
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))
    return total / len(s_rot)


def _reference_supcon(embeddings: np.ndarray, labels: list[int], tau: float) -> float:
    """Khosla et al.'s SupCon written anchor by anchor; an anchor without positives adds 0."""
    count = len(embeddings)
    total = 0.0
    for i in range(count):
        dots = {a: float(np.dot(embeddings[i], embeddings[a])) / tau for a in range(count) if a != i}
        log_denominator = math.log(sum(math.exp(v) for v in dots.values()))
        positives = [p for p in dots if labels[p] == labels[i]]
        if positives:
            total += -sum(dots[p] - log_denominator for p in positives) / len(positives)
    return total / count


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("tau", [0.5, 0.1, 2.0])
def test_correlation_loss_matches_loops(tau: float) -> None:
    rng = np.random.default_rng(0)
    batch = 3
    s_rot, s_plain = rng.normal(size=(3 * batch, 5)), rng.normal(size=(batch, 5))
    t_rot, t_plain = rng.normal(size=(3 * batch, 7)), rng.normal(size=(batch, 7))  # the two widths differ
    value = correlation_loss(*(torch.tensor(a) for a in (s_rot, s_plain, t_rot, t_plain)), tau)
    assert value.item() == pytest.approx(_reference_correlation(s_rot, s_plain, t_rot, t_plain, tau), rel=1e-9)


def test_correlation_loss_hand_case() -> None:
    # student: cos(rot, plain) = [1, 0]; teacher: [0, 1]; τ=1 → p_s = σ([1,0]), p_t = σ([0,1]),
    # log p_t − log p_s = [−1, 1] → KL = p_t[1] − p_t[0] = (e − 1)/(e + 1) = tanh(1/2)
    plain = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    value = correlation_loss(torch.tensor([[2.0, 0.0]]), plain, torch.tensor([[0.0, 3.0]]), plain, 1.0)
    assert value.item() == pytest.approx(math.tanh(0.5), rel=1e-6)
    same = torch.randn(6, 4)
    assert correlation_loss(same, same[:2], same, same[:2], 0.5).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_supcon_loss_matches_loops(tau: float) -> None:
    rng = np.random.default_rng(1)
    embeddings = _unit_rows(rng, 10, 6)
    labels = [0, 1, 2, 0, 1, 0, 3, 2, 1, 0]  # label 3 has no positive
    value = supcon_loss(torch.tensor(embeddings), torch.tensor(labels), tau)
    assert value.item() == pytest.approx(_reference_supcon(embeddings, labels, tau), rel=1e-9)


def test_supcon_loss_hand_case() -> None:
    # e1 = e2 = [1,0], e3 = [0,1], labels [0,0,1], τ=1: anchors 1 and 2 each have log-prob 1 − log(e + 1) for
    # their one positive; anchor 3 has none and adds 0 → L = 2·(log(1 + e) − 1)/3
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    value = supcon_loss(embeddings, torch.tensor([0, 0, 1]), 1.0)
    assert value.item() == pytest.approx(2 * (math.log(1 + math.e) - 1) / 3, rel=1e-6)


def test_pure_functions_finite_difference_gradients() -> None:
    torch.manual_seed(0)
    s_rot, s_plain = torch.randn(6, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    t_rot, t_plain = torch.randn(6, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: correlation_loss(a, b, t_rot, t_plain, 0.5),
                                    (s_rot.requires_grad_(), s_plain.requires_grad_()))
    raw, labels = torch.randn(8, 5, dtype=torch.float64), torch.tensor([0, 1, 0, 1, 2, 2, 0, 1])
    assert torch.autograd.gradcheck(lambda x: supcon_loss(F.normalize(x, dim=1), labels, 0.3), (raw.requires_grad_(),))


# ---------------------------------------------------------------------------------------------------- the module


def _ctx(d_s: int = 12, d_t: int = 20, classes: int = 5) -> LossContext:
    return LossContext(num_classes=classes, student_shapes={"logits": (classes,), "pooled": (d_s,)},
                       teacher_shapes={"logits": (classes,), "pooled": (d_t,)})


def _inputs(batch: int = 3, d_s: int = 12, d_t: int = 20, classes: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    student = {"logits": torch.randn(4 * batch, classes, generator=generator).requires_grad_(),
               "pooled": torch.randn(4 * batch, d_s, generator=generator).requires_grad_()}
    teacher = {"logits": torch.randn(4 * batch, classes, generator=generator).requires_grad_(),
               "pooled": torch.randn(4 * batch, d_t, generator=generator).requires_grad_()}
    target = torch.randint(0, classes, (batch,), generator=generator)
    return student, teacher, {"target": target, "index": torch.arange(batch)}


def test_registration_needs_and_defaults() -> None:
    assert METHODS.get("mlkd") is MLKD
    assert MLKD.needs.views == "rotations4"
    assert set(MLKD.needs.student_taps) == set(MLKD.needs.teacher_taps) == {"logits", "pooled"}
    assert MLKD.defaults == {"ce_weight": 1.0, "corr_weight": 50.0, "supcon_weight": 1.0, "align_weight": 20.0,
                             "corr_temperature": 0.5, "supcon_temperature": 0.07, "predictor_expansion": 16,
                             "feat_dim": 128}
    assert "Ding" in MLKD.paper


def test_heads_shapes_and_extra_parameters() -> None:
    loss = MLKD(_ctx(256, 256))
    dims = [(m.in_features, m.out_features) for m in loss.predictor if isinstance(m, torch.nn.Linear)]
    assert dims == [(256, 16 * 256), (16 * 256, 256)]
    assert [(m.in_features, m.out_features) for m in loss.corr_head if isinstance(m, torch.nn.Linear)] == [
        (256, 256), (256, 256)]
    assert loss.student_embed.linear.out_features == loss.teacher_embed.linear.out_features == 128
    extra = sum(p.numel() for p in loss.parameters() if p.requires_grad)
    expected = (2 * (256 * 256 + 256) + 2 * 256) + 2 * (256 * 128 + 128) + (
        256 * 4096 + 4096 + 2 * 4096 + 4096 * 256 + 256)
    assert extra == expected  # about 2.3M on resnet32x4→resnet8x4 (both pooled 256-d)
    cross = MLKD(_ctx(1024, 256))  # e.g. resnet32x4 → ShuffleV2: the predictor maps 1024 → 4096 → 256
    assert cross.predictor[0].in_features == 1024 and cross.predictor[-1].out_features == 256


def test_forward_terms_follow_the_definition() -> None:
    torch.manual_seed(0)
    loss = MLKD(_ctx())
    student, teacher, batch = _inputs()
    terms = loss(student, teacher, batch, PROGRESS)
    assert set(terms) == {"ce", "corr", "supcon", "align"}
    size, target = 3, batch["target"]
    f_s, f_t = student["pooled"], teacher["pooled"].detach()
    hp = loss.hparams
    # the heads run in train mode (BatchNorm on the batch statistics of all 4B rows), as in forward
    projected = loss.corr_head(f_s)
    expected = {
        "ce": F.cross_entropy(student["logits"][:size], target),
        "corr": hp["corr_weight"] * correlation_loss(projected[size:], projected[:size], f_t[size:], f_t[:size], 0.5),
        "supcon": supcon_loss(torch.cat([loss.student_embed(f_s), loss.teacher_embed(f_t)]),
                              torch.cat([target] * 8), 0.07),
        "align": hp["align_weight"] * (2 - 2 * F.cosine_similarity(loss.predictor(f_s), f_t, dim=1).mean()),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5), name
    # CE sees the un-rotated copies only
    changed = dict(student, logits=torch.cat([student["logits"][:size], student["logits"][size:] + 5.0]))
    assert loss(changed, teacher, batch, PROGRESS)["ce"].item() == pytest.approx(terms["ce"].item(), rel=1e-6)


def test_weights_scale_their_terms() -> None:
    student, teacher, batch = _inputs()
    torch.manual_seed(0)
    base = MLKD(_ctx())(student, teacher, batch, PROGRESS)
    torch.manual_seed(0)
    scaled = MLKD(_ctx(), ce_weight=2.0, corr_weight=5.0, supcon_weight=3.0, align_weight=1.0)(
        student, teacher, batch, PROGRESS)
    for name, factor in {"ce": 2.0, "corr": 0.1, "supcon": 3.0, "align": 0.05}.items():
        assert scaled[name].item() == pytest.approx(factor * base[name].item(), rel=1e-5), name


def test_gradients_reach_student_and_every_head_but_not_the_teacher() -> None:
    torch.manual_seed(0)
    loss = MLKD(_ctx())
    student, teacher, batch = _inputs()
    terms = loss(student, teacher, batch, PROGRESS)
    sum(terms.values()).backward()
    assert student["pooled"].grad is not None and student["pooled"].grad.abs().sum() > 0
    assert student["logits"].grad is not None and student["logits"].grad.abs().sum() > 0
    assert teacher["pooled"].grad is None and teacher["logits"].grad is None
    for name, param in loss.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    names = {name.split(".")[0] for name, _ in loss.named_parameters()}
    assert names == {"corr_head", "student_embed", "teacher_embed", "predictor"}


def test_each_term_sends_gradient_to_its_own_heads() -> None:
    torch.manual_seed(0)
    loss = MLKD(_ctx())
    student, teacher, batch = _inputs()
    terms = loss(student, teacher, batch, PROGRESS)
    owners = {"corr": {"corr_head"}, "supcon": {"student_embed", "teacher_embed"}, "align": {"predictor"}}
    for term, heads in owners.items():
        loss.zero_grad(set_to_none=True)
        terms[term].backward(retain_graph=True)
        got = {name.split(".")[0] for name, p in loss.named_parameters() if p.grad is not None and p.grad.any()}
        assert got == heads, term


def test_wrong_view_is_a_clear_error() -> None:
    loss = MLKD(_ctx())
    student, teacher, batch = _inputs(batch=3)
    batch = {"target": torch.zeros(4, dtype=torch.long)}
    with pytest.raises(ValueError, match="rotations4"):
        loss(student, teacher, batch, PROGRESS)
    with pytest.raises(ValueError, match="pooled"):
        MLKD(LossContext(num_classes=5, student_shapes={"logits": (5,)}, teacher_shapes={"logits": (5,)}))


# ---------------------------------------------------------------------------------------------------- real steps


def train_with_views(method: str, teacher_arch: str, student_arch: str, hparams: dict[str, Any] | None = None,
                     steps: int = 2, batch_size: int = 4, num_classes: int = 10, seed: int = 0) -> dict[str, Any]:
    """The engine's step (run.py/loop.py) on random uint8 images put through make_views and normalised."""
    method_cls = METHODS.get(method)
    resolved = method_cls.resolve_hparams(dict(hparams or {}))
    needs = method_cls.needs_for(resolved)
    torch.manual_seed(seed)
    teacher = build_model(teacher_arch, num_classes).eval().requires_grad_(False)
    student = build_model(student_arch, num_classes)
    ctx = LossContext(num_classes=num_classes, student_shapes=tap_shapes(student, needs.student_taps, (3, 32, 32)),
                      teacher_shapes=tap_shapes(teacher, needs.teacher_taps, (3, 32, 32)), epochs=1)
    loss = method_cls(ctx, **resolved)
    optimizer = torch.optim.SGD([*student.parameters(), *loss.parameters()], lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (steps * batch_size, 3, 32, 32), generator=generator, dtype=torch.uint8)
    targets = torch.randint(0, num_classes, (steps * batch_size,), generator=generator)
    before = {name: p.detach().clone() for name, p in [*student.named_parameters(), *loss.named_parameters()]}
    history, loss_grads = [], set()
    student.train()
    loss.train()
    with FeatureTaps(student, needs.student_taps) as student_taps, FeatureTaps(teacher, needs.teacher_taps) as taps:
        for step in range(steps):
            chunk = slice(step * batch_size, (step + 1) * batch_size)
            views = make_views(needs.views, images[chunk], "crop_flip", generator, 4)
            inputs = normalise(views, CIFAR_MEAN, CIFAR_STD)
            batch = {"input": inputs, "target": targets[chunk], "index": torch.arange(steps * batch_size)[chunk]}
            student_out = student_taps(inputs)
            with torch.no_grad():
                teacher_out = taps(inputs)
            terms = loss(student_out, teacher_out, batch, Progress(1, 1, step, steps))
            total = torch.stack([v.float() for v in terms.values()]).sum()
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            loss_grads = {name for name, p in loss.named_parameters() if p.grad is not None and p.grad.any()}
            optimizer.step()
            history.append({name: float(v.detach()) for name, v in terms.items()})
    changed = {name for name, p in [*student.named_parameters(), *loss.named_parameters()]
               if not torch.equal(p.detach(), before[name])}
    return {"terms": history, "loss": loss, "student": student, "teacher": teacher, "loss_grads": loss_grads,
            "changed": changed, "rows": inputs.shape[0]}


def _check_training(result: dict[str, Any], views: int) -> None:
    assert result["rows"] == views * 4
    for step in result["terms"]:
        assert all(math.isfinite(v) for v in step.values())
    assert all(p.grad is None for p in result["teacher"].parameters())
    loss_params = {name for name, _ in result["loss"].named_parameters()}
    assert result["loss_grads"] == loss_params
    assert loss_params <= result["changed"]
    assert any(not name.startswith(("corr_head", "student_embed", "teacher_embed", "predictor"))
               for name in result["changed"])  # the student moved too


def test_trains_two_steps_resnet20_to_resnet8() -> None:
    result = train_with_views("mlkd", "resnet20", "resnet8")
    _check_training(result, 4)
    assert set(result["terms"][0]) == {"ce", "corr", "supcon", "align"}


def test_state_survives_a_checkpoint_round_trip() -> None:
    result = train_with_views("mlkd", "resnet20", "resnet8", steps=1)
    loss = result["loss"]
    assert loss.corr_head[1].num_batches_tracked.item() == 1  # BN running stats are state
    fresh = checkpoint_round_trip(loss)
    for (name, a), (_, b) in zip(loss.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    loss.eval()
    fresh.eval()
    student, teacher, batch = _inputs(batch=2, d_s=64, d_t=64, classes=10)
    with torch.no_grad():
        a, b = loss(student, teacher, batch, PROGRESS), fresh(student, teacher, batch, PROGRESS)
    for name in a:
        assert a[name].item() == b[name].item(), name


@pytest.mark.slow
def test_trains_two_steps_cross_family_resnet32x4_to_shufflev2() -> None:
    result = train_with_views("mlkd", "resnet32x4", "ShuffleV2")
    _check_training(result, 4)
    assert result["loss"].predictor[0].in_features == 1024 and result["loss"].predictor[-1].out_features == 256
