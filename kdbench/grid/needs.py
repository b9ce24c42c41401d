"""Plan-time check that every run's method needs can be met by the data layer and by its models' taps."""

from __future__ import annotations

import torch

from kdbench.config import ConfigError
from kdbench.data import SUPPORTED_BATCH_EXTRAS, VIEWS
from kdbench.loss import METHODS
from kdbench.models import available_taps, build_model, expand_tap_names
from kdbench.runspec import RunSpec


class _TapCatalog:
    """Taps per (arch, kwargs), from models built on the meta device (no memory, no init cost)."""

    def __init__(self) -> None:
        self._models: dict[str, torch.nn.Module] = {}

    def model(self, arch: str, kwargs: dict) -> torch.nn.Module:
        key = f"{arch}:{sorted(kwargs.items())}"
        if key not in self._models:
            with torch.device("meta"):
                self._models[key] = build_model(arch, 10, **kwargs)
        return self._models[key]


def check_method_needs(specs: list[RunSpec]) -> None:
    """Raise ConfigError naming the method, the pair or dataset, and the unmet need, before anything runs."""
    catalog = _TapCatalog()
    checked: set[str] = set()
    for spec in specs:
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
