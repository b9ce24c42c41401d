"""Shared harness for method tests: a few real optimisation steps of a teacher→student pair, as the engine runs them.

``train_steps`` mirrors kdbench/engine (run.py, loop.py): tap shapes from a dummy forward give the LossContext,
the loss is built from it, one SGD optimiser holds the student's and the loss's parameters, the frozen teacher
runs in eval mode under ``torch.no_grad()``, and the engine's call ``loss(student_out, teacher_out, batch,
progress)`` is made on random (seeded) inputs and labels. ``checkpoint_round_trip`` saves and reloads a loss's
state as a checkpoint would.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import kdbench.methods  # noqa: F401  (registers the built-in methods)
from kdbench.loss import METHODS, DistillLoss, LossContext, Progress
from kdbench.models import FeatureTaps, build_model, get_classifier, tap_shapes

HARNESS_BATCH_KEYS = ("input", "target", "index")


@dataclass
class HarnessResult:
    """What ``train_steps`` ran and observed."""

    terms: list[dict[str, float]]  # per step, the (weighted) terms the loss returned, as floats
    loss: DistillLoss
    student: nn.Module
    teacher: nn.Module
    ctx: LossContext
    hparams: dict[str, Any]  # the resolved hyper-parameters the loss was built with
    student_grads: frozenset[str]  # names of student parameters with a non-zero gradient in the last step
    loss_grads: frozenset[str]  # the same for the loss module's own (extra) parameters
    teacher_grads: frozenset[str]  # the same for the teacher (must stay empty)
    student_params: frozenset[str] = field(default_factory=frozenset)
    loss_params: frozenset[str] = field(default_factory=frozenset)  # trainable extras (heads, regressors)

    @property
    def extra_parameters(self) -> int:
        """Trainable parameters the method adds, counted as the engine reports them."""
        return sum(p.numel() for p in self.loss.parameters() if p.requires_grad)

    def totals(self) -> list[float]:
        """The summed loss of each step."""
        return [sum(step.values()) for step in self.terms]


def classifier_params(model: nn.Module) -> frozenset[str]:
    """Names (as in ``model.named_parameters()``) of the parameters of the layer mapping ``pooled`` to logits."""
    owned = {id(p) for p in get_classifier(model).parameters()}
    return frozenset(name for name, p in model.named_parameters() if id(p) in owned)


def _nonzero_grads(module: nn.Module) -> frozenset[str]:
    return frozenset(
        name for name, p in module.named_parameters() if p.grad is not None and bool(p.grad.detach().ne(0).any())
    )


def _check_terms(method: str, terms: Any) -> None:
    """The DistillLoss contract: a dict of finite scalar tensors that includes "ce"."""
    assert isinstance(terms, dict), f"{method}: forward must return a dict of terms, got {type(terms).__name__}"
    assert "ce" in terms, f"{method}: the terms must include 'ce', got {sorted(terms)}"
    for name, value in terms.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{method}: term '{name}' is not a scalar tensor"
        number = float(value.detach())
        assert math.isfinite(number), f"{method}: term '{name}' is {number}"


def train_steps(
    method: str,
    teacher_arch: str,
    student_arch: str,
    hparams: dict[str, Any] | None = None,
    steps: int = 2,
    batch_size: int = 4,
    num_classes: int = 10,
    input_shape: tuple[int, ...] = (3, 32, 32),
    *,
    seed: int = 0,
    epoch: int = 1,
    epochs: int = 1,
    lr: float = 0.01,
    device: str = "cpu",
    teacher_grad: bool = False,
    teacher_kwargs: dict[str, Any] | None = None,
    student_kwargs: dict[str, Any] | None = None,
) -> HarnessResult:
    """Build teacher and student, the method's loss, and run ``steps`` SGD steps on random data.

    ``teacher_grad=True`` runs the teacher with autograd on and its parameters flagged trainable (but not in the
    optimiser), so ``teacher_grads`` shows whether the loss itself lets gradient into the teacher; by default the
    teacher is frozen and run under ``torch.no_grad()`` exactly as the engine does. Every step's progress is
    ``Progress(epoch, epochs, step, steps)``. ``teacher_kwargs``/``student_kwargs`` go to ``build_model``.
    """
    if steps < 1:
        raise ValueError(f"train_steps needs at least one step, got {steps}")
    method_cls = METHODS.get(method)
    resolved = method_cls.resolve_hparams(dict(hparams or {}))
    needs = method_cls.needs_for(resolved)
    if needs.views != "single" or needs.batch_extras:
        raise NotImplementedError(
            f"{method}: the harness gives single views and {HARNESS_BATCH_KEYS} only; it needs views "
            f"'{needs.views}' and batch extras {needs.batch_extras}"
        )
    torch.manual_seed(seed)
    target_device = torch.device(device)
    teacher = build_model(teacher_arch, num_classes, **(teacher_kwargs or {}))
    teacher = teacher.to(target_device).eval().requires_grad_(teacher_grad)
    student = build_model(student_arch, num_classes, **(student_kwargs or {})).to(target_device)

    generator = torch.Generator().manual_seed(seed)
    num_samples = steps * batch_size
    inputs = torch.randn((num_samples, *input_shape), generator=generator)
    targets = torch.randint(0, num_classes, (num_samples,), generator=generator)
    ctx = LossContext(
        num_classes=num_classes,
        student_shapes=tap_shapes(student, needs.student_taps, input_shape),
        teacher_shapes=tap_shapes(teacher, needs.teacher_taps, input_shape) if needs.teacher else {},
        num_samples=num_samples,
        class_counts=tuple(torch.bincount(targets, minlength=num_classes).tolist()),
        epochs=epochs,
    )
    loss = method_cls(ctx, **resolved).to(target_device)
    optimizer = torch.optim.SGD([*student.parameters(), *loss.parameters()], lr=lr, momentum=0.9)
    student_taps = FeatureTaps(student, needs.student_taps)
    teacher_taps = FeatureTaps(teacher, needs.teacher_taps) if needs.teacher else None

    student.train()
    loss.train()
    history: list[dict[str, float]] = []
    try:
        for step in range(steps):
            chunk = slice(step * batch_size, (step + 1) * batch_size)
            batch = {
                "input": inputs[chunk].to(target_device),
                "target": targets[chunk].to(target_device),
                "index": torch.arange(num_samples)[chunk].to(target_device),
            }
            progress = Progress(epoch=epoch, epochs=epochs, step=step, steps_per_epoch=steps)
            student_out = student_taps(batch["input"])
            teacher_out = None
            if teacher_taps is not None:
                with torch.set_grad_enabled(teacher_grad):
                    teacher_out = teacher_taps(batch["input"])
            terms = loss(student_out, teacher_out, batch, progress)
            _check_terms(method, terms)
            total = torch.stack([value.float() for value in terms.values()]).sum()
            optimizer.zero_grad(set_to_none=True)
            teacher.zero_grad(set_to_none=True)
            total.backward()
            if step == steps - 1:
                grads = (_nonzero_grads(student), _nonzero_grads(loss), _nonzero_grads(teacher))
            optimizer.step()
            history.append({name: float(value.detach()) for name, value in terms.items()})
    finally:
        student_taps.remove()
        if teacher_taps is not None:
            teacher_taps.remove()

    return HarnessResult(
        terms=history,
        loss=loss,
        student=student,
        teacher=teacher,
        ctx=ctx,
        hparams=resolved,
        student_grads=grads[0],
        loss_grads=grads[1],
        teacher_grads=grads[2],
        student_params=frozenset(name for name, p in student.named_parameters() if p.requires_grad),
        loss_params=frozenset(name for name, p in loss.named_parameters() if p.requires_grad),
    )


def checkpoint_round_trip(loss: DistillLoss) -> DistillLoss:
    """Save ``loss.state_dict()`` as bytes, build a fresh instance with the same ctx and hparams, load it strictly.

    The fresh instance is put on the device of ``loss`` and in the same train/eval mode.
    """
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, map_location="cpu", weights_only=True)
    fresh = type(loss)(loss.ctx, **loss.hparams)
    tensors = [*loss.parameters(), *loss.buffers()]
    if tensors:
        fresh.to(tensors[0].device)
    fresh.load_state_dict(state, strict=True)
    fresh.train(loss.training)
    return fresh


def central_difference_grad(function: Any, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """d function(x) / dx by central differences, element by element (``function`` returns a scalar tensor)."""
    x = x.detach()
    grad = torch.zeros_like(x)
    flat, flat_grad = x.reshape(-1), grad.reshape(-1)
    with torch.no_grad():
        for i in range(flat.numel()):
            plus, minus = flat.clone(), flat.clone()
            plus[i] += eps
            minus[i] -= eps
            flat_grad[i] = (function(plus.view_as(x)) - function(minus.view_as(x))) / (2 * eps)
    return grad
