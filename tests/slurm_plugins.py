"""Test-only methods for the Slurm tests: one whose loss is NaN (a run that fails), one that can be made slow.

slow_ce sleeps only in a job's first attempt (SLURM_RESTART_COUNT unset or 0): the first attempt is sure to meet the
time-limit signal, the requeued attempt finishes quickly, and the metrics do not depend on the sleeping.
"""

import os
import time

import torch.nn.functional as F

from kdbench.loss import DistillLoss, Needs, register_method

SLEEP_ENV = "KDBENCH_TEST_SLEEP_PER_STEP"


@register_method("explodes")
class Explodes(DistillLoss):
    """A method whose loss is NaN: its run fails with NonFiniteLossError."""

    needs = Needs(teacher_taps=())

    def forward(self, student, teacher, batch, progress):
        return {"ce": student["logits"].sum() * float("nan")}


@register_method("slow_ce")
class SlowCE(DistillLoss):
    """Cross-entropy that sleeps ``sleep_s`` (else $KDBENCH_TEST_SLEEP_PER_STEP) seconds per step in a job's first
    attempt: wall time without changing results."""

    needs = Needs(teacher_taps=())
    defaults = {"sleep_s": 0.0}

    def forward(self, student, teacher, batch, progress):
        if os.environ.get("SLURM_RESTART_COUNT", "0") == "0" and os.environ.get(SLEEP_ENV):
            time.sleep(self.hparams["sleep_s"] or float(os.environ[SLEEP_ENV]))
        return {"ce": F.cross_entropy(student["logits"], batch["target"])}
