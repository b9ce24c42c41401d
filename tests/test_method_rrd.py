"""RRD and RRD+KD: rrd_loss against independent computations, the queue, the fixed teacher head, real steps."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench.loss import METHODS, LossContext, Progress
from kdbench.methods.kd import kd_loss
from kdbench.methods.rrd import RRD, RRDKD, enqueue, rrd_loss
from kdbench.models import FeatureTaps, build_model, tap_shapes

NUM_CLASSES = 10
PROGRESS = Progress(epoch=1, epochs=1)


def _reference_rrd(student: np.ndarray, teacher: np.ndarray, tau_s: float, tau_t: float) -> float:
    """−mean_i Σ_k p_t log p_s with explicit exponentials."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        s_exp = [math.exp(v / tau_s) for v in s_row]
        t_exp = [math.exp(v / tau_t) for v in t_row]
        total -= sum(te / sum(t_exp) * math.log(se / sum(s_exp)) for se, te in zip(s_exp, t_exp, strict=True))
    return total / len(student)


def _normalize_rows(a: np.ndarray) -> np.ndarray:
    return a / np.sqrt((a**2).sum(axis=1, keepdims=True))


def _embed(linear: torch.nn.Linear, features: torch.Tensor) -> np.ndarray:
    w, b = linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()
    return _normalize_rows(features.detach().double().numpy() @ w.T + b)


def _ctx(d_s: int = 12, d_t: int = 20) -> LossContext:
    return LossContext(num_classes=NUM_CLASSES, student_shapes={"logits": (NUM_CLASSES,), "pooled": (d_s,)},
                       teacher_shapes={"logits": (NUM_CLASSES,), "pooled": (d_t,)}, num_samples=40)


def _feature_batch(batch_size: int = 4, d_s: int = 12, d_t: int = 20, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    student = {"logits": torch.randn(batch_size, NUM_CLASSES, generator=generator).requires_grad_(),
               "pooled": torch.randn(batch_size, d_s, generator=generator).requires_grad_()}
    teacher = {"logits": torch.randn(batch_size, NUM_CLASSES, generator=generator),
               "pooled": torch.randn(batch_size, d_t, generator=generator)}
    batch = {"target": torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator),
             "index": torch.arange(batch_size)}
    return student, teacher, batch


def _train(method: str, teacher_arch: str, student_arch: str, steps: int = 2, batch_size: int = 4, **hparams):
    """``steps`` SGD steps (momentum, weight decay) as the engine runs them, the teacher under no_grad."""
    torch.manual_seed(0)
    teacher = build_model(teacher_arch, NUM_CLASSES).eval()  # parameters left trainable: leaks would show
    student = build_model(student_arch, NUM_CLASSES)
    cls = METHODS.get(method)
    ctx = LossContext(num_classes=NUM_CLASSES, num_samples=40,
                      student_shapes=tap_shapes(student, cls.needs.student_taps, (3, 32, 32)),
                      teacher_shapes=tap_shapes(teacher, cls.needs.teacher_taps, (3, 32, 32)))
    loss = cls(ctx, **{"queue_size": 16, **hparams})
    heads_before = copy.deepcopy([loss.embed_s.state_dict(), loss.embed_t.state_dict()])
    optimizer = torch.optim.SGD([*student.parameters(), *loss.parameters()], lr=0.05, momentum=0.9,
                                weight_decay=5e-4)
    student_taps = FeatureTaps(student, cls.needs.student_taps)
    teacher_taps = FeatureTaps(teacher, cls.needs.teacher_taps)
    generator = torch.Generator().manual_seed(1)
    records = []
    for step in range(steps):
        x = torch.randn(batch_size, 3, 32, 32, generator=generator)
        batch = {"input": x, "target": torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator),
                 "index": torch.arange(batch_size)}
        student_out = student_taps(x)
        with torch.no_grad():
            teacher_out = teacher_taps(x)
        terms = loss(student_out, teacher_out, batch, Progress(1, 1, step, steps))
        optimizer.zero_grad(set_to_none=True)
        torch.stack(list(terms.values())).sum().backward()
        grads = {name: p.grad for name, p in [*student.named_parameters(), *loss.named_parameters()]}
        optimizer.step()
        records.append({"terms": {k: float(v.detach()) for k, v in terms.items()}, "grads": grads,
                        "pointer": int(loss.queue_ptr)})
    return teacher, student, loss, records, heads_before


# ---------------------------------------------------------------------------------------------------- pure functions


def test_rrd_loss_hand_cases():
    # uniform student distribution over 2 entries: −Σ p_t log(1/2) = log 2 whatever the teacher
    assert rrd_loss(torch.zeros(1, 2), torch.tensor([[5.0, -1.0]]), 0.04, 0.1).item() == pytest.approx(math.log(2))
    # s_s/τ_s = [log 3, 0] → p_s = [3/4, 1/4]; s_t = [0, 0] → p_t = [1/2, 1/2]; −(log 3/4 + log 1/4)/2
    student = torch.tensor([[math.log(3.0) * 0.04, 0.0]])
    expected = -0.5 * (math.log(0.75) + math.log(0.25))
    assert rrd_loss(student, torch.zeros(1, 2), 0.04, 0.1).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("tau_s", "tau_t"), [(0.04, 0.1), (0.5, 0.2)])
def test_rrd_loss_matches_independent_computation(tau_s, tau_t):
    rng = np.random.default_rng(0)
    student, teacher = np.tanh(rng.normal(size=(3, 7))), np.tanh(rng.normal(size=(3, 7)))
    value = rrd_loss(torch.tensor(student), torch.tensor(teacher), tau_s, tau_t).item()
    assert value == pytest.approx(_reference_rrd(student, teacher, tau_s, tau_t), rel=1e-9)
    doubled = rrd_loss(torch.tensor(np.concatenate([student] * 2)), torch.tensor(np.concatenate([teacher] * 2)),
                       tau_s, tau_t).item()
    assert doubled == pytest.approx(value, rel=1e-9)  # batch mean


def test_rrd_loss_gradcheck_and_teacher_detached():
    torch.manual_seed(0)
    student = torch.randn(3, 6, dtype=torch.float64).mul(0.3).requires_grad_()
    teacher = torch.randn(3, 6, dtype=torch.float64).mul(0.3).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: rrd_loss(s, teacher, 0.04, 0.1), (student,))
    rrd_loss(student, teacher, 0.04, 0.1).backward()
    assert student.grad is not None and teacher.grad is None
    # through the student head and the L2 normalisation, against a fixed queue
    features = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    queue = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    teacher_scores = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1) @ queue.T

    def loss(f, w):
        return rrd_loss(F.normalize(f @ w.T, dim=1) @ queue.T, teacher_scores, 0.04, 0.1)

    assert torch.autograd.gradcheck(loss, (features, weight))


def test_enqueue_wraps_and_advances_by_batch_size():
    queue, pointer = torch.zeros(10, 2), torch.zeros((), dtype=torch.long)
    for step in range(3):
        enqueue(queue, pointer, torch.full((4, 2), float(step + 1)))
    assert pointer.item() == 2  # 0 → 4 → 8 → 12 mod 10
    expected = [3, 3, 1, 1, 2, 2, 2, 2, 3, 3]  # step 3 filled 8, 9 then wrapped to 0, 1
    assert queue[:, 0].tolist() == expected
    enqueue(queue, pointer, torch.arange(24.0).view(12, 2))  # a batch longer than the queue keeps its last 10
    assert pointer.item() == (2 + 12) % 10
    assert sorted(queue[:, 0].tolist()) == [float(2 * i) for i in range(2, 12)]
    assert queue[(2 + 11) % 10, 0].item() == 22.0  # the newest row sits just before the pointer


# ---------------------------------------------------------------------------------------------------- the method


def test_defaults_needs_state_and_fixed_teacher_head():
    assert RRD.defaults == {"ce_weight": 1.0, "rrd_weight": 1.0, "feat_dim": 128, "queue_size": 16384, "tau_s": 0.04,
                            "tau_t": 0.10}
    assert RRDKD.defaults == {**RRD.defaults, "kd_weight": 1.0, "temperature": 4.0}
    assert METHODS.get("rrd") is RRD and METHODS.get("rrd_kd") is RRDKD
    assert "pooled" in RRD.needs.teacher_taps and set(RRDKD.needs.teacher_taps) == {"logits", "pooled"}
    torch.manual_seed(0)
    loss = RRD(_ctx(d_s=12, d_t=20))
    assert (loss.embed_s.in_features, loss.embed_t.in_features, loss.embed_s.out_features) == (12, 20, 128)
    assert loss.queue.shape == (16384, 128) and loss.queue_ptr.item() == 0 and loss.queue_ptr.dtype == torch.long
    torch.testing.assert_close(loss.queue.norm(dim=1), torch.ones(16384))
    assert all(p.requires_grad for p in loss.embed_s.parameters())
    assert not any(p.requires_grad for p in loss.embed_t.parameters())
    assert {"queue", "queue_ptr", "embed_t.weight", "embed_s.weight"} <= set(loss.state_dict())
    with pytest.raises(ValueError, match="pooled"):
        RRD(LossContext(num_classes=10, student_shapes={"logits": (10,)}, teacher_shapes={"pooled": (4,)}))


def test_forward_matches_independent_computation_and_enqueues_afterwards():
    torch.manual_seed(0)
    loss = RRD(_ctx(), queue_size=10)
    loss.queue_ptr.fill_(8)
    student, teacher, batch = _feature_batch()
    queue = loss.queue.double().numpy().copy()
    e_s, e_t = _embed(loss.embed_s, student["pooled"]), _embed(loss.embed_t, teacher["pooled"])
    expected = _reference_rrd(e_s @ queue.T, e_t @ queue.T, 0.04, 0.10)  # the queue before this batch
    terms = loss(student, teacher, batch, PROGRESS)
    assert set(terms) == {"ce", "rrd"}
    assert terms["rrd"].item() == pytest.approx(expected, rel=1e-4)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(student["logits"], batch["target"]).item(), rel=1e-6)
    assert loss.queue_ptr.item() == 2  # 8 + 4 wraps past 10
    after = loss.queue.double().numpy()
    np.testing.assert_allclose(after[[8, 9, 0, 1]], e_t, atol=1e-6)
    np.testing.assert_array_equal(after[2:8], queue[2:8])
    # weights: rrd_weight scales the term
    torch.manual_seed(0)
    weighted = RRD(_ctx(), queue_size=10, rrd_weight=0.3, ce_weight=0.5)
    weighted.queue_ptr.fill_(8)
    terms_w = weighted(student, teacher, batch, PROGRESS)
    torch.testing.assert_close(terms_w["rrd"], 0.3 * terms["rrd"])
    torch.testing.assert_close(terms_w["ce"], 0.5 * terms["ce"])


def test_eval_mode_leaves_state_alone_and_forward_never_syncs(monkeypatch):
    torch.manual_seed(0)
    loss = RRDKD(_ctx(), queue_size=10).eval()
    state = copy.deepcopy(loss.state_dict())
    inputs = [_feature_batch(seed=seed) for seed in (0, 1)]
    loss(*inputs[0], PROGRESS)
    for name, value in loss.state_dict().items():
        assert torch.equal(value, state[name]), name
    loss.train()

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in forward")

    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    loss(*inputs[1], PROGRESS)
    monkeypatch.undo()
    assert loss.queue_ptr.item() == 4


def test_autocast_bf16_keeps_the_relation_in_fp32():
    torch.manual_seed(0)
    loss = RRD(_ctx(), queue_size=32)
    twin = copy.deepcopy(loss)
    student, teacher, batch = _feature_batch()
    reference = loss(student, teacher, batch, PROGRESS)["rrd"]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = twin(student, teacher, batch, PROGRESS)["rrd"]
    assert mixed.dtype == torch.float32 and twin.queue.dtype == torch.float32
    assert mixed.item() == pytest.approx(reference.item(), rel=1e-5)


def test_rrd_kd_adds_exactly_the_weighted_kd_term():
    torch.manual_seed(0)
    with_kd = RRDKD(_ctx(), queue_size=32, kd_weight=0.7, temperature=3.0)
    plain = RRD(_ctx(), queue_size=32)
    plain.load_state_dict(with_kd.state_dict())
    student, teacher, batch = _feature_batch()
    terms_kd, terms = with_kd(student, teacher, batch, PROGRESS), plain(student, teacher, batch, PROGRESS)
    assert set(terms_kd) == {"ce", "rrd", "kd"}
    torch.testing.assert_close(terms_kd["ce"], terms["ce"], rtol=0, atol=0)
    torch.testing.assert_close(terms_kd["rrd"], terms["rrd"], rtol=0, atol=0)
    torch.testing.assert_close(terms_kd["kd"], 0.7 * kd_loss(student["logits"], teacher["logits"], 3.0))


def test_state_survives_a_checkpoint_round_trip():
    torch.manual_seed(0)
    loss = RRDKD(_ctx(), queue_size=10)
    for seed in (0, 1, 2):
        loss(*_feature_batch(seed=seed), PROGRESS)
    assert loss.queue_ptr.item() == 2
    payload = io.BytesIO()
    torch.save(loss.state_dict(), payload)
    payload.seek(0)
    torch.manual_seed(123)  # different random heads and queue
    fresh = RRDKD(_ctx(), queue_size=10)
    assert not torch.equal(fresh.embed_t.weight, loss.embed_t.weight)
    fresh.load_state_dict(torch.load(payload, weights_only=True))
    for seed in (3, 4):
        student, teacher, batch = _feature_batch(seed=seed)
        a, b = loss(student, teacher, batch, PROGRESS), fresh(student, teacher, batch, PROGRESS)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    for name, value in loss.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name
    assert not any(p.requires_grad for p in fresh.embed_t.parameters())


def test_gradient_reaches_student_and_its_head_never_the_teacher_side():
    torch.manual_seed(0)
    teacher, student = build_model("resnet20", NUM_CLASSES).eval(), build_model("resnet8", NUM_CLASSES)
    loss = RRD(LossContext(num_classes=NUM_CLASSES, student_shapes={"pooled": (64,)}, teacher_shapes={"pooled": (64,)}),
               queue_size=16)
    x = torch.randn(4, 3, 32, 32)
    student_out = FeatureTaps(student, RRD.needs.student_taps)(x)
    teacher_out = FeatureTaps(teacher, RRD.needs.teacher_taps)(x)  # autograd on: the loss must keep it out
    assert teacher_out["pooled"].requires_grad
    loss(student_out, teacher_out, {"target": torch.zeros(4, dtype=torch.long)}, PROGRESS)["rrd"].backward()
    for p in loss.embed_s.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.embed_t.parameters())
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("method", ["rrd", "rrd_kd"])
def test_two_sgd_steps_same_family(method):
    teacher, student, loss, records, heads_before = _train(method, "resnet20", "resnet8", queue_size=6)
    expected_terms = {"ce", "rrd"} | ({"kd"} if method == "rrd_kd" else set())
    for record in records:
        assert set(record["terms"]) == expected_terms
        assert all(math.isfinite(v) for v in record["terms"].values())
        assert record["grads"]["embed_s.weight"].abs().sum() > 0
        assert record["grads"]["embed_t.weight"] is None
    assert [r["pointer"] for r in records] == [4, 2]  # advances by B=4 and wraps at 6
    assert all(p.grad is None for p in teacher.parameters())
    assert not torch.equal(loss.embed_s.weight, heads_before[0]["weight"])  # the student head learns
    for name, value in loss.embed_t.state_dict().items():  # the teacher head stays the same random projection
        assert torch.equal(value, heads_before[1][name]), name
    torch.testing.assert_close(loss.queue.norm(dim=1), torch.ones(6))


@pytest.mark.slow
def test_two_sgd_steps_cross_family_resnet32x4_to_shufflev2():
    teacher, student, loss, records, heads_before = _train("rrd", "resnet32x4", "ShuffleV2")
    assert (loss.embed_s.in_features, loss.embed_t.in_features) == (1024, 256)
    for record in records:
        assert all(math.isfinite(v) for v in record["terms"].values())
    assert all(p.grad is None for p in teacher.parameters())
    assert not torch.equal(loss.embed_s.weight, heads_before[0]["weight"])
    assert torch.equal(loss.embed_t.weight, heads_before[1]["weight"])
    assert [r["pointer"] for r in records] == [4, 8]


def test_shared_harness_contract_with_a_trainable_teacher():
    """The shared harness (engine-like steps); teacher run with autograd on: nothing may reach it."""
    harness = pytest.importorskip("method_harness")
    result = harness.train_steps("rrd", "resnet20", "resnet8", {"queue_size": 8}, teacher_grad=True)
    assert not result.teacher_grads
    assert result.loss_grads == {"embed_s.weight", "embed_s.bias"}
    assert result.loss_params == {"embed_s.weight", "embed_s.bias"}
    assert "conv1.weight" in result.student_grads
    fresh = harness.checkpoint_round_trip(result.loss)
    for name, value in result.loss.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name
