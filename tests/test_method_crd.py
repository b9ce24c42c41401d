"""CRD and CRD+KD: pure functions against independent computations, state (banks, Z), gradients, real steps."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdbench.data import sample_contrast_indices
from kdbench.loss import METHODS, LossContext, Progress
from kdbench.methods.crd import CRD, CRDKD, crd_logits, momentum_update, nce_loss, nce_loss_from_log, nce_normalizer
from kdbench.methods.kd import kd_loss
from kdbench.models import FeatureTaps, build_model, tap_shapes

NUM_CLASSES = 10
K = 16
PROGRESS = Progress(epoch=1, epochs=1)


# ---------------------------------------------------------------------------------------------------- references


def _reference_h(x: np.ndarray, num_samples: int) -> float:
    """METHODS.md's h(x), term by term with math.log."""
    k = x.shape[1] - 1
    c = k / num_samples
    total = 0.0
    for row in x:
        total += math.log(row[0] / (row[0] + c))
        for value in row[1:]:
            total += math.log(c / (value + c))
    return -total / len(x)


def _normalize_rows(a: np.ndarray) -> np.ndarray:
    return a / np.sqrt((a**2).sum(axis=1, keepdims=True))


def _reference_dots(embedding: np.ndarray, bank: np.ndarray, contrast: np.ndarray, tau: float) -> np.ndarray:
    out = np.zeros(contrast.shape)
    for i in range(contrast.shape[0]):
        for j in range(contrast.shape[1]):
            out[i, j] = sum(float(a) * float(b) for a, b in zip(bank[contrast[i, j]], embedding[i], strict=True)) / tau
    return out


def _embed(linear: torch.nn.Linear, features: torch.Tensor) -> np.ndarray:
    w, b = linear.weight.detach().double().numpy(), linear.bias.detach().double().numpy()
    return _normalize_rows(features.detach().double().numpy() @ w.T + b)


# ---------------------------------------------------------------------------------------------------- helpers


def _ctx(d_s: int = 12, d_t: int = 20, num_samples: int = 40) -> LossContext:
    return LossContext(num_classes=NUM_CLASSES, student_shapes={"logits": (NUM_CLASSES,), "pooled": (d_s,)},
                       teacher_shapes={"logits": (NUM_CLASSES,), "pooled": (d_t,)}, num_samples=num_samples)


def _feature_batch(batch_size: int = 4, d_s: int = 12, d_t: int = 20, num_samples: int = 40, seed: int = 0):
    """Random pooled features and logits plus a batch with index and contrast_index, as the data layer gives."""
    generator = torch.Generator().manual_seed(seed)
    targets_all = torch.arange(num_samples) % NUM_CLASSES
    index = torch.randperm(num_samples, generator=generator)[:batch_size]
    student = {"logits": torch.randn(batch_size, NUM_CLASSES, generator=generator).requires_grad_(),
               "pooled": torch.randn(batch_size, d_s, generator=generator).requires_grad_()}
    teacher = {"logits": torch.randn(batch_size, NUM_CLASSES, generator=generator),
               "pooled": torch.randn(batch_size, d_t, generator=generator)}
    batch = {"target": targets_all[index], "index": index,
             "contrast_index": sample_contrast_indices(index, targets_all, K, generator)}
    return student, teacher, batch


def _build_pair(method: str, teacher_arch: str, student_arch: str, num_samples: int, **hparams):
    torch.manual_seed(0)
    teacher = build_model(teacher_arch, NUM_CLASSES).eval()  # parameters left trainable: leaks would show
    student = build_model(student_arch, NUM_CLASSES)
    cls = METHODS.get(method)
    ctx = LossContext(num_classes=NUM_CLASSES, num_samples=num_samples,
                      student_shapes=tap_shapes(student, cls.needs.student_taps, (3, 32, 32)),
                      teacher_shapes=tap_shapes(teacher, cls.needs.teacher_taps, (3, 32, 32)))
    return teacher, student, cls(ctx, nce_k=K, **hparams)


def _train(method: str, teacher_arch: str, student_arch: str, steps: int = 2, batch_size: int = 4,
           num_samples: int = 40, **hparams):
    """``steps`` SGD steps as the engine runs them (teacher under no_grad); returns models, loss and records."""
    teacher, student, loss = _build_pair(method, teacher_arch, student_arch, num_samples, **hparams)
    optimizer = torch.optim.SGD([*student.parameters(), *loss.parameters()], lr=0.05, momentum=0.9,
                                weight_decay=5e-4)
    student_taps = FeatureTaps(student, loss.needs.student_taps)
    teacher_taps = FeatureTaps(teacher, loss.needs.teacher_taps)
    generator = torch.Generator().manual_seed(1)
    targets_all = torch.arange(num_samples) % NUM_CLASSES
    heads_before = copy.deepcopy([loss.embed_s.state_dict(), loss.embed_t.state_dict()])
    records = []
    for step in range(steps):
        index = torch.randperm(num_samples, generator=generator)[:batch_size]
        batch = {"input": torch.randn(batch_size, 3, 32, 32, generator=generator), "target": targets_all[index],
                 "index": index, "contrast_index": sample_contrast_indices(index, targets_all, K, generator)}
        student_out = student_taps(batch["input"])
        with torch.no_grad():
            teacher_out = teacher_taps(batch["input"])
        banks_before = (loss.memory_s.clone(), loss.memory_t.clone())
        terms = loss(student_out, teacher_out, batch, Progress(1, 1, step, steps))
        optimizer.zero_grad(set_to_none=True)
        torch.stack(list(terms.values())).sum().backward()
        grads = {name: p.grad for name, p in [*student.named_parameters(), *loss.named_parameters()]}
        optimizer.step()
        records.append({"terms": {k: float(v.detach()) for k, v in terms.items()}, "index": index,
                        "banks": banks_before, "grads": grads, "z": (float(loss.z_s), float(loss.z_t))})
    return teacher, student, loss, records, heads_before


# ---------------------------------------------------------------------------------------------------- pure functions


def test_nce_loss_hand_case():
    # K=2 negatives, N=4: c = K·P_n = 0.5. Positive 1.5 → 1.5/2 = 3/4; negatives 0.5, 0.25 → 0.5/1 and 0.5/0.75.
    # h = −log(3/4 · 1/2 · 2/3) = −log(1/4) = log 4.
    x = torch.tensor([[1.5, 0.5, 0.25]])
    assert nce_loss(x, 4).item() == pytest.approx(math.log(4.0), rel=1e-6)


def test_nce_loss_matches_independent_computation_and_log_form():
    rng = np.random.default_rng(0)
    x = np.exp(rng.normal(size=(3, 6)) * 2) * 0.05
    expected = _reference_h(x, 50)
    assert nce_loss(torch.tensor(x), 50).item() == pytest.approx(expected, rel=1e-10)
    assert nce_loss_from_log(torch.tensor(np.log(x)), 50).item() == pytest.approx(expected, rel=1e-10)
    # batch-averaged, not summed
    doubled = nce_loss(torch.tensor(np.concatenate([x, x])), 50).item()
    assert doubled == pytest.approx(expected, rel=1e-10)
    # the log form stays finite where x itself underflows to 0 in fp32
    extreme = torch.tensor([[-200.0, -200.0, 90.0]])
    assert torch.isfinite(nce_loss_from_log(extreme, 10))


def test_crd_logits_and_normalizer_match_loops():
    rng = np.random.default_rng(1)
    embedding, bank = rng.normal(size=(3, 5)), rng.normal(size=(9, 5))
    contrast = rng.integers(0, 9, size=(3, 4))
    logits = crd_logits(torch.tensor(embedding), torch.tensor(bank), torch.tensor(contrast), 0.07)
    expected = _reference_dots(embedding, bank, contrast, 0.07)
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-10)
    z = nce_normalizer(logits, 1000)
    assert z.item() == pytest.approx(np.mean(np.exp(expected)) * 1000, rel=1e-10)


def test_momentum_update_matches_formula_and_touches_only_the_batch_rows():
    rng = np.random.default_rng(2)
    bank = torch.tensor(rng.normal(size=(8, 4)))
    before = bank.clone().numpy()
    index = torch.tensor([5, 1, 6])
    embedding = torch.tensor(_normalize_rows(rng.normal(size=(3, 4))))
    momentum_update(bank, index, embedding, 0.5)
    expected = before.copy()
    for row, n in enumerate(index.tolist()):
        mixed = 0.5 * before[n] + 0.5 * embedding[row].numpy()
        expected[n] = mixed / np.sqrt((mixed**2).sum())
    np.testing.assert_allclose(bank.numpy(), expected, rtol=1e-12)


def test_gradcheck_embedding_to_nce_loss_float64():
    torch.manual_seed(0)
    features = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    bank = F.normalize(torch.randn(20, 5, dtype=torch.float64), dim=1)
    contrast = torch.randint(0, 20, (3, 5))
    log_z = torch.tensor(3.0, dtype=torch.float64)

    def loss(f, w):
        embedding = F.normalize(f @ w.T, dim=1)
        return nce_loss_from_log(crd_logits(embedding, bank, contrast, 0.07) - log_z, 20)

    assert torch.autograd.gradcheck(loss, (features, weight))
    x = (torch.rand(2, 4, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: nce_loss(v, 30), (x,))


# ---------------------------------------------------------------------------------------------------- the method


def test_defaults_needs_and_shapes_come_from_ctx():
    assert CRD.defaults == {"ce_weight": 1.0, "crd_weight": 0.8, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07,
                            "nce_momentum": 0.5}
    assert CRDKD.defaults == {**CRD.defaults, "kd_weight": 1.0, "temperature": 4.0}
    assert METHODS.get("crd") is CRD and METHODS.get("crd_kd") is CRDKD
    assert CRD.needs.batch_extras == ("index", "contrast_index") and "pooled" in CRD.needs.teacher_taps
    assert set(CRDKD.needs.teacher_taps) == {"logits", "pooled"}
    torch.manual_seed(0)
    loss = CRD(_ctx(d_s=12, d_t=20, num_samples=40))
    assert loss.contrast_k == 16384
    assert CRD(_ctx(), nce_k=7).contrast_k == 7
    assert (loss.embed_s.in_features, loss.embed_t.in_features, loss.embed_s.out_features) == (12, 20, 128)
    assert loss.memory_s.shape == loss.memory_t.shape == (40, 128)
    bound = 1 / math.sqrt(128 / 3)
    for bank in (loss.memory_s, loss.memory_t):
        assert bank.abs().max() <= bound and bank.min() < -0.9 * bound and bank.max() > 0.9 * bound
    assert not torch.equal(loss.memory_s, loss.memory_t)
    assert loss.z_s.item() < 0 and loss.z_t.item() < 0  # "not set yet"
    assert {"memory_s", "memory_t", "z_s", "z_t"} <= set(loss.state_dict())
    with pytest.raises(ValueError, match="num_samples"):
        CRD(LossContext(num_classes=10, student_shapes={"pooled": (4,)}, teacher_shapes={"pooled": (4,)}))
    with pytest.raises(ValueError, match="pooled"):
        CRD(LossContext(num_classes=10, student_shapes={"logits": (10,)}, teacher_shapes={"pooled": (4,)},
                        num_samples=8))


def test_forward_matches_independent_computation_then_z_frozen_and_banks_updated():
    torch.manual_seed(0)
    loss = CRD(_ctx(), nce_k=K)
    student, teacher, batch = _feature_batch(seed=0)
    bank_s, bank_t = loss.memory_s.double().numpy().copy(), loss.memory_t.double().numpy().copy()
    e_s, e_t = _embed(loss.embed_s, student["pooled"]), _embed(loss.embed_t, teacher["pooled"])
    contrast, n, tau = batch["contrast_index"].numpy(), 40, 0.07
    exp_u = np.exp(_reference_dots(e_s, bank_t, contrast, tau))  # student embedding vs teacher bank
    exp_v = np.exp(_reference_dots(e_t, bank_s, contrast, tau))  # teacher embedding vs student bank
    z_s, z_t = exp_u.mean() * n, exp_v.mean() * n
    expected_crd = 0.8 * (_reference_h(exp_u / z_s, n) + _reference_h(exp_v / z_t, n))

    terms = loss(student, teacher, batch, PROGRESS)
    assert set(terms) == {"ce", "crd"}
    assert terms["crd"].item() == pytest.approx(expected_crd, rel=1e-4)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(student["logits"], batch["target"]).item(), rel=1e-6)
    assert loss.z_s.item() == pytest.approx(z_s, rel=1e-4) and loss.z_t.item() == pytest.approx(z_t, rel=1e-4)

    # banks: changed at the batch's indices only, to normalize(0.5·old + 0.5·e), unit norm there
    rows = batch["index"].numpy()
    others = np.setdiff1d(np.arange(n), rows)
    np.testing.assert_array_equal(loss.memory_s.numpy()[others], bank_s[others].astype(np.float32))
    np.testing.assert_array_equal(loss.memory_t.numpy()[others], bank_t[others].astype(np.float32))
    np.testing.assert_allclose(loss.memory_s.numpy()[rows], _normalize_rows(0.5 * bank_s[rows] + 0.5 * e_s), atol=1e-6)
    np.testing.assert_allclose(loss.memory_t.numpy()[rows], _normalize_rows(0.5 * bank_t[rows] + 0.5 * e_t), atol=1e-6)

    # Z is frozen afterwards, whatever the next batch's scores
    z_after_first = (loss.z_s.clone(), loss.z_t.clone())
    for seed in (1, 2):
        loss(*_feature_batch(seed=seed), PROGRESS)
        assert torch.equal(loss.z_s, z_after_first[0]) and torch.equal(loss.z_t, z_after_first[1])


def test_eval_mode_leaves_state_alone():
    torch.manual_seed(0)
    loss = CRD(_ctx(), nce_k=K).eval()
    state = copy.deepcopy(loss.state_dict())
    terms = loss(*_feature_batch(), PROGRESS)
    assert torch.isfinite(terms["crd"])
    for name, value in loss.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_forward_never_syncs_with_the_host(monkeypatch):
    torch.manual_seed(0)
    loss = CRDKD(_ctx(), nce_k=K)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync in forward")

    inputs = [_feature_batch(seed=seed) for seed in (0, 1)]
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for student, teacher, batch in inputs:  # the first forward (Z initialisation) included
        loss(student, teacher, batch, PROGRESS)
    monkeypatch.undo()
    assert loss.z_s.item() > 0 and loss.z_t.item() > 0


def test_autocast_bf16_keeps_the_contrast_in_fp32():
    torch.manual_seed(0)
    loss = CRD(_ctx(), nce_k=K)
    twin = copy.deepcopy(loss)
    student, teacher, batch = _feature_batch()
    reference = loss(student, teacher, batch, PROGRESS)["crd"]
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = twin(student, teacher, batch, PROGRESS)["crd"]
    assert mixed.dtype == torch.float32 and twin.memory_s.dtype == torch.float32
    assert mixed.item() == pytest.approx(reference.item(), rel=1e-5)


def test_crd_kd_adds_exactly_the_weighted_kd_term():
    torch.manual_seed(0)
    with_kd = CRDKD(_ctx(), nce_k=K, kd_weight=0.7, temperature=3.0)
    plain = CRD(_ctx(), nce_k=K)
    plain.load_state_dict(with_kd.state_dict())
    student, teacher, batch = _feature_batch()
    terms_kd, terms = with_kd(student, teacher, batch, PROGRESS), plain(student, teacher, batch, PROGRESS)
    assert set(terms_kd) == {"ce", "crd", "kd"}
    torch.testing.assert_close(terms_kd["ce"], terms["ce"], rtol=0, atol=0)
    torch.testing.assert_close(terms_kd["crd"], terms["crd"], rtol=0, atol=0)
    torch.testing.assert_close(terms_kd["kd"], 0.7 * kd_loss(student["logits"], teacher["logits"], 3.0))


def test_state_survives_a_checkpoint_round_trip():
    torch.manual_seed(0)
    loss = CRDKD(_ctx(), nce_k=K)
    for seed in (0, 1):
        loss(*_feature_batch(seed=seed), PROGRESS)
    payload = io.BytesIO()
    torch.save(loss.state_dict(), payload)
    payload.seek(0)
    torch.manual_seed(123)  # a fresh instance with different random heads and banks, Z unset
    fresh = CRDKD(_ctx(), nce_k=K)
    assert not torch.equal(fresh.memory_s, loss.memory_s) and fresh.z_s.item() < 0
    fresh.load_state_dict(torch.load(payload, weights_only=True))
    for seed in (2, 3):
        student, teacher, batch = _feature_batch(seed=seed)
        a, b = loss(student, teacher, batch, PROGRESS), fresh(student, teacher, batch, PROGRESS)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    for name, value in loss.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[name]), name


def test_gradient_reaches_student_and_both_heads_never_the_teacher():
    torch.manual_seed(0)
    teacher, student, loss = _build_pair("crd", "resnet20", "resnet8", num_samples=40)
    student_taps, teacher_taps = FeatureTaps(student, loss.needs.student_taps), FeatureTaps(teacher, ("pooled",))
    _, _, batch = _feature_batch()
    x = torch.randn(4, 3, 32, 32)
    student_out = student_taps(x)
    teacher_out = teacher_taps(x)  # with autograd on: the loss itself must keep gradient out of the teacher
    assert teacher_out["pooled"].requires_grad
    loss(student_out, teacher_out, batch, PROGRESS)["crd"].backward()  # the CRD term alone
    for name, p in loss.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert student.conv1.weight.grad is not None and student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize("method", ["crd", "crd_kd"])
def test_two_sgd_steps_same_family(method):
    teacher, student, loss, records, heads_before = _train(method, "resnet20", "resnet8")
    expected_terms = {"ce", "crd"} | ({"kd"} if method == "crd_kd" else set())
    for record in records:
        assert set(record["terms"]) == expected_terms
        assert all(math.isfinite(v) for v in record["terms"].values())
        assert all(record["grads"][f"embed_{side}.weight"].abs().sum() > 0 for side in "st")
    assert all(p.grad is None for p in teacher.parameters())
    # both heads were trained
    for head, before in zip((loss.embed_s, loss.embed_t), heads_before, strict=True):
        assert not torch.equal(head.weight, before["weight"])
    # Z set by the first forward and unchanged by the second
    assert records[0]["z"][0] > 0 and records[0]["z"] == records[1]["z"]
    # the second step's bank update touched only its own rows; all touched rows are unit-norm
    second = records[1]["index"]
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[second] = False
    for bank, before in zip((loss.memory_s, loss.memory_t), records[1]["banks"], strict=True):
        assert torch.equal(bank[untouched], before[untouched])
        assert not torch.equal(bank[second], before[second])
        touched = torch.cat([records[0]["index"], second])
        torch.testing.assert_close(bank[touched].norm(dim=1), torch.ones(len(touched)))


@pytest.mark.slow
def test_two_sgd_steps_cross_family_vgg13_to_mobilenetv2():
    teacher, student, loss, records, heads_before = _train("crd", "vgg13", "MobileNetV2")
    assert (loss.embed_s.in_features, loss.embed_t.in_features) == (1280, 512)
    for record in records:
        assert all(math.isfinite(v) for v in record["terms"].values())
    assert all(p.grad is None for p in teacher.parameters())
    for head, before in zip((loss.embed_s, loss.embed_t), heads_before, strict=True):
        assert not torch.equal(head.weight, before["weight"])
    assert records[0]["z"] == records[1]["z"]
