"""Every pure loss function of every method keeps float64 (gradcheck in double precision) and computes fp16/bf16
inputs in fp32."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from kdbench.loss import logit_adjusted_ce
from kdbench.methods.at import at_loss
from kdbench.methods.bkd import bkd_loss
from kdbench.methods.crd import crd_logits, nce_loss, nce_loss_from_log
from kdbench.methods.dkd import dkd_loss
from kdbench.methods.fitnet import hint_loss
from kdbench.methods.kd import kd_loss
from kdbench.methods.mlkd import correlation_loss, supcon_loss
from kdbench.methods.mlld import batch_correlation_loss, class_correlation_loss, masked_kd_loss
from kdbench.methods.rkd import rkd_loss
from kdbench.methods.rrd import rrd_loss
from kdbench.methods.trg import contextual_loss, global_contrastive_loss, local_preserving_loss

COUNTS = [50, 20, 9, 4, 2]


@dataclass(frozen=True)
class Case:
    """A pure function, its inputs (the first ``grads`` of them differentiable) and whether it upcasts bf16."""

    fn: Callable[..., torch.Tensor]
    make: Callable[[Callable[..., torch.Tensor]], tuple]
    grads: int = 1
    upcasts: bool = True


def _labels(n: int, classes: int) -> torch.Tensor:
    return torch.arange(n) % classes


CASES = {
    "kd_loss": Case(lambda s, t: kd_loss(s, t, 4.0), lambda r: (r(3, 5), r(3, 5)), grads=2),
    "dkd_loss": Case(lambda s, t: dkd_loss(s, t, _labels(3, 5), 1.0, 8.0, 2.0), lambda r: (r(3, 5), r(3, 5))),
    "bkd_loss": Case(lambda s, t: bkd_loss(s, t, COUNTS, 2.0, 0.99), lambda r: (r(3, 5), r(3, 5))),
    "logit_adjusted_ce": Case(lambda z: logit_adjusted_ce(z, _labels(4, 5), COUNTS, 1.5), lambda r: (r(4, 5),)),
    "crd_logits": Case(lambda e, bank: crd_logits(e, bank, torch.tensor([[0, 3, 5], [1, 2, 4]]), 0.5),
                       lambda r: (r(2, 4), r(6, 4)), upcasts=False),  # scores, not a loss
    "nce_loss_from_log": Case(lambda log_x: nce_loss_from_log(log_x, 100), lambda r: (r(3, 4),)),
    "nce_loss": Case(lambda x: nce_loss(x, 100), lambda r: (r(3, 4).abs() + 0.1,)),
    "rkd_loss": Case(lambda s, t: rkd_loss(s, t, 25.0, 50.0), lambda r: (r(4, 3), r(4, 5))),
    "at_loss": Case(lambda s, t: at_loss(s, t, 2.0), lambda r: (r(2, 3, 4, 4), r(2, 2, 2, 2))),
    "hint_loss": Case(hint_loss, lambda r: (r(2, 3, 2, 2), r(2, 3, 2, 2))),
    "correlation_loss": Case(lambda s_rot, s_plain, t_rot, t_plain: correlation_loss(s_rot, s_plain, t_rot, t_plain,
                                                                                     0.5),
                             lambda r: (r(6, 4), r(2, 4), r(6, 3), r(2, 3)), grads=2),
    "supcon_loss": Case(lambda e: supcon_loss(e, _labels(6, 3), 0.5), lambda r: (F.normalize(r(6, 4), dim=1),)),
    "batch_correlation_loss": Case(lambda s, t: batch_correlation_loss(s, t, 2.0), lambda r: (r(4, 5), r(4, 5))),
    "class_correlation_loss": Case(lambda s, t: class_correlation_loss(s, t, 2.0), lambda r: (r(4, 5), r(4, 5))),
    "masked_kd_loss": Case(lambda s, t: masked_kd_loss(s, t, 3.0, torch.tensor([True, False, True])),
                           lambda r: (r(3, 5), r(3, 5))),
    "rrd_loss": Case(lambda s, t: rrd_loss(s, t, 0.5, 0.2), lambda r: (r(3, 6), r(3, 6))),
    "local_preserving_loss": Case(lambda s, t: local_preserving_loss(s, t, 3, 1.0, 0.5),
                                  lambda r: (r(8, 4), r(8, 6))),
    "global_contrastive_loss": Case(lambda s, t: global_contrastive_loss(s, t, 0.5), lambda r: (r(5, 4), r(5, 4)),
                                    grads=2),
    "contextual_loss": Case(contextual_loss, lambda r: (r(2, 4, 3), r(2, 4, 5))),
}


def _inputs(case: Case, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    made = case.make(randn)
    return tuple(x.to(dtype).requires_grad_(i < case.grads) for i, x in enumerate(made))


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_is_kept_and_gradients_check(name):
    case = CASES[name]
    inputs = _inputs(case, torch.float64)
    value = case.fn(*inputs)
    assert value.dtype == torch.float64
    assert torch.autograd.gradcheck(case.fn, inputs)


@pytest.mark.parametrize("name", sorted(name for name, case in CASES.items() if case.upcasts))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_computed_in_fp32(name, dtype):
    case = CASES[name]
    value = case.fn(*_inputs(case, dtype))
    assert value.dtype == torch.float32 and torch.isfinite(value)
