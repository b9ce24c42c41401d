"""The student-side CE option of every method (``student_ce: plain | logit_adjusted | balanced_softmax``, ``tau``):
logit_adjusted_ce against an independent computation, its identities, every method's "ce" term through it, plain
bit-identical to F.cross_entropy, run ids unchanged, and bad values rejected at grid validation."""

import copy
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from method_harness import train_steps

import kdbench.methods  # noqa: F401  (registers the built-in methods)
from kdbench.config import ConfigError, parse_grid
from kdbench.grid import expand_grid
from kdbench.loss import METHODS, LossContext, Progress, log_class_prior, logit_adjusted_ce

COUNTS = (500, 240, 110, 50, 20, 9)


def _reference_la_ce(logits: np.ndarray, target: np.ndarray, counts, tau: float, offset: float = 0.0) -> float:
    """mean_i −log softmax(z_i + τ·log(n/N) + offset)[y_i], row by row with explicit exponentials."""
    total = sum(counts)
    shift = [tau * math.log(n / total) + offset for n in counts]
    loss = 0.0
    for row, y in zip(logits, target, strict=True):
        adjusted = [v + s for v, s in zip(row, shift, strict=True)]
        top = max(adjusted)
        log_norm = top + math.log(sum(math.exp(a - top) for a in adjusted))
        loss += log_norm - adjusted[y]
    return loss / len(logits)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjusted_ce_matches_independent_computation(tau):
    rng = np.random.default_rng(0)
    logits, target = rng.normal(size=(7, 6)) * 3, rng.integers(0, 6, size=7)
    value = logit_adjusted_ce(torch.tensor(logits), torch.tensor(target), COUNTS, tau)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(_reference_la_ce(logits, target, COUNTS, tau), rel=1e-12)
    # counts as a tensor give the same value
    as_tensor = logit_adjusted_ce(torch.tensor(logits), torch.tensor(target), torch.tensor(COUNTS), tau)
    assert as_tensor.item() == value.item()


def test_logit_adjusted_ce_hand_case():
    # two classes, counts [3, 1], zero logits, τ = 1: adjusted logits log(3/4), log(1/4) → CE = −log π_y
    logits = torch.zeros(2, 2)
    assert logit_adjusted_ce(logits, torch.tensor([0, 0]), [3, 1], 1.0).item() == pytest.approx(-math.log(0.75))
    assert logit_adjusted_ce(logits, torch.tensor([1, 1]), [3, 1], 1.0).item() == pytest.approx(-math.log(0.25))
    # τ = 2 squares the prior: softmax of [2·log ¾, 2·log ¼] = [9/10, 1/10]
    assert logit_adjusted_ce(logits, torch.tensor([1, 1]), [3, 1], 2.0).item() == pytest.approx(-math.log(0.1))


def test_balanced_training_set_or_tau_zero_is_plain_ce():
    torch.manual_seed(0)
    logits, target = torch.randn(8, 6, dtype=torch.float64) * 3, torch.randint(0, 6, (8,))
    plain = F.cross_entropy(logits, target)
    for tau in (0.5, 1.0, 3.0):
        torch.testing.assert_close(logit_adjusted_ce(logits, target, [40] * 6, tau), plain, rtol=1e-14, atol=0)
    torch.testing.assert_close(logit_adjusted_ce(logits, target, COUNTS, 0.0), plain, rtol=0, atol=0)
    # through a method: student_ce logit_adjusted on balanced counts gives the plain "ce" term
    ctx = LossContext(num_classes=6, class_counts=(40,) * 6)
    for mode in ({"student_ce": "logit_adjusted", "tau": 1.5}, {"student_ce": "balanced_softmax"}):
        terms = METHODS.get("vanilla")(ctx, **mode)({"logits": logits}, None, {"target": target}, Progress(1, 1))
        torch.testing.assert_close(terms["ce"], plain, rtol=1e-14, atol=0)


def test_balanced_softmax_is_logit_adjustment_with_tau_one():
    # Ren et al.: softmax(z + log n_c); it differs from z + log π_c = z + log n_c − log N by a per-row constant
    rng = np.random.default_rng(1)
    logits, target = rng.normal(size=(9, 6)) * 2, rng.integers(0, 6, size=9)
    balanced_softmax = _reference_la_ce(logits, target, COUNTS, 1.0, offset=math.log(sum(COUNTS)))
    la = logit_adjusted_ce(torch.tensor(logits), torch.tensor(target), COUNTS, 1.0)
    assert la.item() == pytest.approx(balanced_softmax, rel=1e-12)
    ctx = LossContext(num_classes=6, class_counts=COUNTS)
    args = ({"logits": torch.tensor(logits)}, None, {"target": torch.tensor(target)}, Progress(1, 1))
    bs_term = METHODS.get("vanilla")(ctx, student_ce="balanced_softmax")(*args)["ce"]
    la_term = METHODS.get("vanilla")(ctx, student_ce="logit_adjusted", tau=1.0)(*args)["ce"]
    assert torch.equal(bs_term, la_term)
    assert bs_term.item() == pytest.approx(balanced_softmax, rel=1e-6)  # the method's prior is stored in fp32


def test_low_precision_logits_are_adjusted_in_fp32():
    logits, target = torch.randn(4, 6).bfloat16(), torch.randint(0, 6, (4,))
    value = logit_adjusted_ce(logits, target, COUNTS, 1.0)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(logit_adjusted_ce(logits.float(), target, COUNTS, 1.0).item(), rel=1e-6)


def test_log_class_prior_needs_a_positive_count_per_class():
    torch.testing.assert_close(log_class_prior([3, 1]), torch.tensor([math.log(0.75), math.log(0.25)],
                                                                    dtype=torch.float64))
    with pytest.raises(ValueError, match=r"1 class\(es\) without \(class: count \{2: 0.0\}\)"):
        log_class_prior([5, 3, 0])


# ----------------------------------------------------------------------------------- every method's CE term

B, C, D = 4, 6, 8


def _method_case(name: str, gen: torch.Generator):
    """(ctx kwargs, hparams, student outputs, teacher outputs, batch, the rows the CE is taken over) of one method."""
    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    target = torch.randint(0, C, (B,), generator=gen)
    logits, teacher_logits = randn(B, C), randn(B, C)
    pooled = {"student_shapes": {"pooled": (D,)}, "teacher_shapes": {"pooled": (D + 2,)}}
    if name in ("vanilla", "kd", "dkd", "bkd"):
        return {}, {}, {"logits": logits}, {"logits": teacher_logits}, {"target": target}, [slice(0, B)]
    if name in ("rkd", "rrd", "rrd_kd", "crd", "crd_kd"):
        student = {"logits": logits, "pooled": randn(B, D)}
        teacher = {"logits": teacher_logits, "pooled": randn(B, D + 2)}
        batch = {"target": target}
        hparams = {"queue_size": 16} if name.startswith("rrd") else {}
        if name.startswith("crd"):
            hparams = {"nce_k": 5}
            batch.update(index=torch.arange(B), contrast_index=torch.randint(0, 20, (B, 6), generator=gen))
        return {**pooled, "num_samples": 20}, hparams, student, teacher, batch, [slice(0, B)]
    if name in ("fitnet", "at"):
        shapes = {"stage1": (3, 8, 8), "stage2": (4, 4, 4)}
        student = {"logits": logits, **{k: randn(B, *s) for k, s in shapes.items()}}
        teacher = {k: randn(B, s[0] + 1, *s[1:]) for k, s in shapes.items()}
        ctx = {"student_shapes": shapes, "teacher_shapes": {k: (s[0] + 1, *s[1:]) for k, s in shapes.items()}}
        return ctx, {}, student, teacher, {"target": target}, [slice(0, B)]
    if name == "trg":
        ctx = {"student_shapes": {"tokens": (16, D)}, "teacher_shapes": {"tokens": (16, D + 2)}}
        student = {"logits": logits, "tokens": randn(B, 16, D)}
        teacher = {"logits": teacher_logits, "tokens": randn(B, 16, D + 2)}
        return ctx, {"proj_dim": 8}, student, teacher, {"target": target}, [slice(0, B)]
    if name == "mlkd":
        student = {"logits": randn(4 * B, C), "pooled": randn(4 * B, D)}
        teacher = {"logits": randn(4 * B, C), "pooled": randn(4 * B, D + 2)}
        return pooled, {"predictor_expansion": 1, "feat_dim": 8}, student, teacher, {"target": target}, [slice(0, B)]
    if name == "mlld":
        student, teacher = {"logits": randn(2 * B, C)}, {"logits": randn(2 * B, C)}
        return {}, {}, student, teacher, {"target": target}, [slice(0, B), slice(B, 2 * B)]
    raise AssertionError(f"add a case for method '{name}' to _method_case")


BUILT_IN = sorted(name for name in METHODS.names()
                  if METHODS.get(name).__module__.startswith("kdbench.methods."))


def _terms(name: str, ctx: LossContext, hparams: dict, case_seed: int = 0) -> tuple[dict, dict]:
    """(terms, case inputs) of one fresh instance, with the same parameters and randomness for every call."""
    _, base, student, teacher, batch, rows = _method_case(name, torch.Generator().manual_seed(case_seed))
    torch.manual_seed(0)
    loss = METHODS.get(name)(ctx, **base, **hparams)
    torch.manual_seed(1)
    terms = loss(student, teacher, batch, Progress(3, 10))
    return terms, {"logits": student["logits"], "target": batch["target"], "rows": rows, "loss": loss}


def _ctx(name: str, counts) -> LossContext:
    ctx_kwargs = _method_case(name, torch.Generator().manual_seed(0))[0]
    return LossContext(num_classes=C, class_counts=tuple(counts), **ctx_kwargs)


def test_every_built_in_method_has_a_case():
    assert {"vanilla", "kd", "dkd", "bkd", "crd", "rkd", "fitnet", "at", "mlkd", "mlld", "rrd", "trg"} <= set(BUILT_IN)
    for name in BUILT_IN:
        _method_case(name, torch.Generator())


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_method_takes_its_ce_through_student_ce(name):
    ctx = _ctx(name, COUNTS)
    plain, inputs = _terms(name, ctx, {})
    explicit, _ = _terms(name, ctx, {"student_ce": "plain"})
    ce_weight = inputs["loss"].hparams.get("ce_weight", 1.0)
    logits, target, rows = inputs["logits"], inputs["target"], inputs["rows"]
    # plain is bit for bit F.cross_entropy, as before the option existed, and the same as saying "plain"
    expected_plain = sum(F.cross_entropy(logits[r], target) for r in rows)
    assert torch.equal(plain["ce"], ce_weight * expected_plain)
    assert plain.keys() == explicit.keys() and all(torch.equal(plain[k], explicit[k]) for k in plain)
    for mode, tau in ((("logit_adjusted", 2.0)), ("balanced_softmax", 1.0)):
        hparams = {"student_ce": mode, **({"tau": tau} if mode == "logit_adjusted" else {})}
        adjusted, _ = _terms(name, ctx, hparams)
        reference = sum(_reference_la_ce(logits[r].double().numpy(), target.numpy(), COUNTS, tau) for r in rows)
        assert adjusted["ce"].item() == pytest.approx(ce_weight * reference, rel=1e-5), mode
        assert adjusted["ce"].item() != pytest.approx(plain["ce"].item(), rel=1e-3)
        # only the CE term changes
        assert all(torch.equal(adjusted[k], plain[k]) for k in plain if k != "ce")


def test_source_has_no_other_student_cross_entropy():
    # a method's "ce" must come from self.student_ce_loss; the only other CE in methods/ is TRG's InfoNCE
    for path in sorted(Path(kdbench.methods.__file__).parent.glob("*.py")):
        calls = re.findall(r"F\.cross_entropy\(", path.read_text())
        assert len(calls) == (1 if path.name == "trg.py" else 0), path.name


def test_logit_adjusted_kd_trains_one_step_and_keeps_checkpoints_unchanged():
    counts = (3, 7, 3, 3)  # the harness's label counts for 4 classes, batch 8, 2 steps, seed 0
    plain = train_steps("kd", "resnet32", "resnet8", num_classes=4, batch_size=8)
    result = train_steps("kd", "resnet32", "resnet8", {"student_ce": "logit_adjusted", "tau": 1.0}, num_classes=4,
                         batch_size=8)
    assert result.ctx.class_counts == counts and result.hparams["student_ce"] == "logit_adjusted"
    assert result.terms[0]["kd"] == plain.terms[0]["kd"] and result.terms[0]["ce"] != plain.terms[0]["ce"]
    assert result.student_grads == result.student_params
    assert result.loss.state_dict() == plain.loss.state_dict() == {}  # the prior is not checkpointed state
    torch.testing.assert_close(result.loss.student_ce_shift, log_class_prior(counts).float())


# ------------------------------------------------------------------------------ hyper-parameters and grids

@pytest.mark.parametrize("name", BUILT_IN)
def test_every_method_accepts_student_ce_and_plain_keeps_run_ids(name):
    cls = METHODS.get(name)
    base = cls.resolve_hparams({})
    assert "student_ce" not in base and "tau" not in base
    assert cls.resolve_hparams({"student_ce": "plain"}) == base
    assert cls.resolve_hparams({"student_ce": "logit_adjusted"}) == {**base, "student_ce": "logit_adjusted",
                                                                     "tau": 1.0}
    assert cls.resolve_hparams({"student_ce": "logit_adjusted", "tau": 2}) == {
        **base, "student_ce": "logit_adjusted", "tau": 2.0}
    assert cls.resolve_hparams({"student_ce": "balanced_softmax"}) == {**base, "student_ce": "balanced_softmax"}


GRID = {
    "name": "t",
    "datasets": [{"name": "synthetic"}],
    "pairs": [{"teacher": "cnn_large", "student": "cnn_small"}],
    "methods": ["kd"],
    "seeds": [0],
    "recipe": {"epochs": 2, "batch_size": 16, "milestones": [1]},
}


def _grid_error(methods, overrides=None) -> str:
    raw = copy.deepcopy(GRID)
    raw["methods"] = methods
    if overrides:
        raw["overrides"] = overrides
    with pytest.raises(ConfigError) as caught:
        expand_grid(parse_grid(raw))
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"student_ce": "logit_adjustd"}, "student_ce 'logit_adjustd' is unknown (did you mean 'logit_adjusted'?); "
                                          "allowed: plain, logit_adjusted, balanced_softmax"),
        ({"student_ce": "logit_adjusted", "tau": -1.0}, "tau must be a number > 0 (the strength of student_ce: "
                                                        "logit_adjusted), got -1.0"),
        ({"student_ce": "logit_adjusted", "tau": 0}, "tau must be a number > 0"),
        ({"student_ce": "logit_adjusted", "tau": "1"}, "tau must be a number > 0"),
        ({"student_ce": "balanced_softmax", "tau": 2.0}, "tau applies to student_ce: logit_adjusted only, got "
                                                         "student_ce: balanced_softmax (balanced_softmax is tau = 1)"),
        ({"tau": 2.0}, "tau applies to student_ce: logit_adjusted only, got student_ce: plain"),
    ],
)
def test_bad_student_ce_fails_at_grid_validation(params, expected):
    with pytest.raises(ValueError, match=re.escape(f"method 'trg': {expected}")):
        METHODS.get("trg").resolve_hparams(params)
    message = _grid_error([{"name": "kd", "params": params}])
    assert f"method 'kd': {expected}" in message


def test_tau_from_an_override_is_checked_with_the_method_params():
    grid = copy.deepcopy(GRID)
    grid["methods"] = [{"name": "kd", "label": "kd_la", "params": {"student_ce": "logit_adjusted"}}, "dkd"]
    grid["overrides"] = [{"when": {"stage": "student", "method": "kd_la"}, "params": {"tau": 2.0}}]
    specs = expand_grid(parse_grid(grid))
    assert [s.params.get("tau") for s in specs if s.stage == "student"] == [2.0, None]
    message = _grid_error(["kd"], [{"when": {"stage": "student"}, "params": {"tau": 2.0}}])
    assert "method 'kd': tau applies to student_ce: logit_adjusted only, got student_ce: plain" in message


def test_missing_or_empty_class_counts_fail_when_the_loss_is_built():
    with pytest.raises(ValueError, match=r"method 'kd': student_ce: logit_adjusted needs the training counts of all "
                                         r"6 classes \(LossContext.class_counts\), got 0"):
        METHODS.get("kd")(LossContext(num_classes=6), student_ce="logit_adjusted")
    with pytest.raises(ValueError, match=r"method 'kd': student_ce: balanced_softmax: every class needs a positive"):
        METHODS.get("kd")(LossContext(num_classes=3, class_counts=(4, 0, 2)), student_ce="balanced_softmax")
    METHODS.get("kd")(LossContext(num_classes=6))  # plain needs no counts
