"""Plan-time check that every method's needs can be met by the data layer and by each pair's taps."""

from __future__ import annotations

import torch

from kdbench.config import ConfigError, GridConfig
from kdbench.data import SUPPORTED_BATCH_EXTRAS, SUPPORTED_VIEWS
from kdbench.loss import METHODS
from kdbench.models import available_taps, build_model


def _taps_of(arch: str, kwargs: dict, num_classes: int, cache: dict) -> set[str]:
    key = (arch, tuple(sorted(kwargs.items())))
    if key not in cache:
        with torch.device("meta"):  # no memory, no init cost: only the module structure is needed
            cache[key] = set(available_taps(build_model(arch, num_classes, **kwargs)))
    return cache[key]


def check_method_needs(grid: GridConfig) -> None:
    """Raise ConfigError naming the method, the pair or dataset, and the unmet need."""
    cache: dict = {}
    for m_index, entry in enumerate(grid.methods):
        needs = METHODS.get(entry.name).needs
        for d_index, dataset in enumerate(grid.datasets):
            if needs.views not in SUPPORTED_VIEWS:
                raise ConfigError(f"methods[{m_index}] '{entry.display}' needs views '{needs.views}', which the data "
                                  f"layer cannot give for datasets[{d_index}] ({dataset.variant}); "
                                  f"available: {', '.join(SUPPORTED_VIEWS)}")
            missing = [extra for extra in needs.batch_extras if extra not in SUPPORTED_BATCH_EXTRAS]
            if missing:
                raise ConfigError(f"methods[{m_index}] '{entry.display}' needs batch extras {missing}, which the data "
                                  f"layer cannot give for datasets[{d_index}] ({dataset.variant}); "
                                  f"available: {', '.join(SUPPORTED_BATCH_EXTRAS)}")
        for p_index, pair in enumerate(grid.pairs):
            sides = [("student", pair.student, needs.student_taps)]
            if needs.teacher:
                sides.append(("teacher", pair.teacher, needs.teacher_taps))
            for side, choice, wanted in sides:
                have = _taps_of(choice.arch, choice.kwargs, 10, cache)
                for tap in wanted:
                    if tap not in have:
                        raise ConfigError(f"methods[{m_index}] '{entry.display}' needs the {side} tap '{tap}', which "
                                          f"pairs[{p_index}] {side} {choice.arch} does not have; "
                                          f"it has: {', '.join(sorted(have))}")
