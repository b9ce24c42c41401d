"""Plan-time check that every run's method needs can be met by the data layer and by its models' taps."""

from __future__ import annotations

import hashlib
import json

import torch

from kdbench.config import ConfigError
from kdbench.data import SUPPORTED_BATCH_EXTRAS, VIEWS
from kdbench.loss import METHODS, Needs, PlanFacts
from kdbench.models import available_taps, build_model, expand_tap_names, model_info, tap_shapes
from kdbench.runspec import RunSpec


class _TapCatalog:
    """Taps per (arch, kwargs), from models built on the meta device (no memory, no init cost)."""

    def __init__(self) -> None:
        self._models: dict[str, torch.nn.Module] = {}
        self._shapes: dict[str, dict[str, tuple[int, ...]]] = {}

    def model(self, arch: str, kwargs: dict) -> torch.nn.Module:
        key = f"{arch}:{sorted(kwargs.items())}"
        if key not in self._models:
            with torch.device("meta"):
                self._models[key] = build_model(arch, 10, **kwargs)
        return self._models[key]

    def shapes(self, arch: str, kwargs: dict, taps: tuple[str, ...],
               input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Per-sample shapes of ``taps`` for this model on ``input_shape`` inputs (one meta-device forward)."""
        key = f"{arch}:{sorted(kwargs.items())}:{taps}:{input_shape}"
        if key not in self._shapes:
            self._shapes[key] = tap_shapes(self.model(arch, kwargs), taps, input_shape)
        return self._shapes[key]


def check_method_needs(specs: list[RunSpec]) -> None:
    """Raise ConfigError naming the method, the pair or dataset, and the unmet need, before anything runs.

    The checks depend on a run's method, params, architectures, batch size and epochs alone, so each such cell is
    checked once (thousands of runs are a few hundred cells), and cells of kdbench's own methods and models that
    passed are remembered per code fingerprint (kdbench.diskcache): checking builds the models on the meta device
    and runs one forward, whose first use imports torch._dynamo (seconds).
    """
    from kdbench import diskcache

    fingerprint = diskcache.code_fingerprint()
    passed: set[str] = set(diskcache.read("needs-checked", fingerprint) or [])
    newly: list[str] = []
    catalog = _TapCatalog()
    checked: set[str] = set()
    seen: set[str] = set()
    for spec in specs:
        key = json.dumps([spec.method, spec.params, spec.arch, spec.arch_kwargs, spec.recipe.batch_size,
                          spec.recipe.epochs, spec.teacher.arch if spec.teacher else None,
                          spec.teacher.arch_kwargs if spec.teacher else None], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        if digest in passed:
            continue
        _check_spec(spec, catalog, checked)
        if _kdbench_code(spec):
            newly.append(digest)
    if newly:
        diskcache.write("needs-checked", fingerprint, sorted(passed.union(newly)))


def _kdbench_code(spec: RunSpec) -> bool:
    """Whether the spec's method and models are kdbench's own (or timm's): code the fingerprint covers."""
    from kdbench.models import MODELS

    archs = [spec.arch, *([spec.teacher.arch] if spec.teacher is not None else [])]
    return (METHODS.get(spec.method).__module__.startswith("kdbench.methods.")
            and all(MODELS.get(arch).factory.__module__.startswith("kdbench.") for arch in archs))


def _check_spec(spec: RunSpec, catalog: _TapCatalog, checked: set[str]) -> None:
    """The checks of one run (``checked``: the (side, model, taps) already found in order)."""
    needs = METHODS.get(spec.method).needs_for(spec.params)
    where = f"method '{spec.display_method}' on pair {spec.pair}, dataset {spec.dataset.variant}"
    if needs.views not in VIEWS:
        raise ConfigError(f"{where}: needs views '{needs.views}', which the data layer cannot give; "
                          f"available: {', '.join(sorted(VIEWS))}")
    missing = [extra for extra in needs.batch_extras if extra not in SUPPORTED_BATCH_EXTRAS]
    if missing:
        raise ConfigError(f"{where}: needs batch extras {missing}, which the data layer cannot give; "
                          f"available: {', '.join(SUPPORTED_BATCH_EXTRAS)}")
    sides = [("student", spec.arch, spec.arch_kwargs, needs.student_taps)]
    if spec.teacher is not None:
        sides.append(("teacher", spec.teacher.arch, spec.teacher.arch_kwargs, needs.teacher_taps))
    for side, arch, kwargs, wanted in sides:
        key = f"{side}:{arch}:{sorted(kwargs.items())}:{wanted}"
        if key in checked:
            continue
        checked.add(key)
        model = catalog.model(arch, kwargs)
        have = available_taps(model)
        resolved = expand_tap_names(model, wanted)
        if not resolved and wanted:
            raise ConfigError(f"{where}: needs the {side}'s stage taps, but {arch} has none; it has: "
                              f"{', '.join(have)}")
        for tap in resolved:
            if tap not in have:
                raise ConfigError(f"{where}: needs the {side} tap '{tap}', which {side} {arch} does not have; "
                                  f"it has: {', '.join(have)}")
    _check_plan(spec, needs, catalog, where)


def _check_plan(spec: RunSpec, needs: Needs, catalog: _TapCatalog, where: str) -> None:
    """Let the method check its hyper-parameters against batch size, epochs and tap shapes (e.g. TRG's m and k)."""
    info = model_info(spec.arch, **spec.arch_kwargs)
    input_shape = (info.in_channels, info.input_size, info.input_size)  # the data is built for the student
    teacher_shapes = {}
    if spec.teacher is not None and needs.teacher_taps:
        teacher_shapes = catalog.shapes(spec.teacher.arch, spec.teacher.arch_kwargs, needs.teacher_taps, input_shape)
    facts = PlanFacts(batch_size=spec.recipe.batch_size, epochs=spec.recipe.epochs,
                      student_shapes=catalog.shapes(spec.arch, spec.arch_kwargs, needs.student_taps, input_shape),
                      teacher_shapes=teacher_shapes)
    try:
        METHODS.get(spec.method).check_plan(spec.params, facts)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
