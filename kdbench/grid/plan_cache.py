"""Cached grid loads and expansions: `kdbench status` and `report` read a grid without importing torch.

Validating a grid and expanding it into runs need the method, model and dataset registries, and those import
torch (seconds). Both are pure functions of the grid file (with its folder, the working directory, ``--data-root``
and the environment variables it names) and of kdbench's code, so their results are kept in
kdbench.diskcache under a key made of exactly those inputs and the code fingerprint. Every full load or plan
(``kdbench run``, ``--dry-run``, a first ``status``) stores them; inside :func:`reading` (status, report) they
are used instead of recomputing. Grids with ``plugins:`` or methods from other packages (entry points) are never
cached: their code is imported every time, as it must be.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench import diskcache

if TYPE_CHECKING:
    from kdbench.config import GridConfig
    from kdbench.grid.expand import TuningCell
    from kdbench.runspec import RunSpec

_READING: contextvars.ContextVar[bool] = contextvars.ContextVar("kdbench_plan_cache", default=False)
_ENV_REFERENCE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_SHARED = ("dataset", "recipe", "teacher", "weights")  # nested models many specs share: stored once


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """Within the block, grids and plans may come from the cache (commands that only read results).

    Also defers kdbench.data's ``__init__`` (kdbench.lightimport), so that the grid schema imports without torch.
    """
    _light_imports()
    token = _READING.set(True)
    try:
        yield
    finally:
        _READING.reset(token)


def _light_imports() -> None:
    """Import kdbench.config and kdbench.runspec without kdbench.data's __init__ (which imports torch)."""
    from kdbench.lightimport import defer_package_init

    defer_package_init("kdbench.data", ("kdbench.data.spec",))


def cacheable(grid: GridConfig) -> bool:
    """No plugins, and every method is one of kdbench's own (the code fingerprint covers exactly those)."""
    if grid.plugins:
        return False
    from kdbench.loss import METHODS

    names = {"vanilla", *(entry.name for entry in grid.methods)}
    return all(METHODS.get(name).__module__.startswith("kdbench.methods.") for name in names)


# --- grids -----------------------------------------------------------------------------------------------------

def _grid_key(path: Path, data_root: str | None) -> str | None:
    try:
        text = path.read_bytes()
    except OSError:
        return None  # the full load reports it
    names = sorted({"HOME", *_ENV_REFERENCE.findall(text.decode(errors="replace"))})
    return diskcache.key_of("grid", str(path.resolve()), hashlib.sha256(text).hexdigest(), os.getcwd(), data_root,
                            {name: os.environ.get(name) for name in names}, diskcache.code_fingerprint())


def load_grid(path: str | Path, data_root: str | None = None) -> GridConfig:
    """kdbench.config.load_grid; inside :func:`reading`, the grid as validated before when nothing changed since."""
    path = Path(path)
    key = _grid_key(path, data_root)
    if key is not None and _READING.get():
        cached = diskcache.read("grids", key)
        if cached is not None:
            _light_imports()
            from pydantic import ValidationError

            from kdbench.config import TRUSTED, GridConfig

            with contextlib.suppress(ValidationError):
                return GridConfig.model_validate(cached, context=TRUSTED)
    from kdbench.config import load_grid as load

    grid = load(path, data_root=data_root)
    if key is not None and cacheable(grid) and not diskcache.exists("grids", key):
        diskcache.write("grids", key, grid.model_dump(mode="json"))
    return grid


# --- expansions ------------------------------------------------------------------------------------------------

def _plan_key(kind: str, grid: GridConfig, *parts: Any) -> str:
    return diskcache.key_of(kind, grid.model_dump(mode="json"), *parts, diskcache.code_fingerprint())


def planned_specs(grid: GridConfig, selected: Mapping[tuple[str, str, str], dict[str, Any]] | None = None
                  ) -> tuple[list[RunSpec], list[str]]:
    """``expand_grid(grid, selected)`` with every run's method needs checked (ConfigError if not), and the run ids."""
    chosen = sorted([list(key), value] for key, value in (selected or {}).items())
    key = _plan_key("plan", grid, chosen)
    if key in _planned:  # this process planned the same grid already (`kdbench run` plans before and after)
        specs, run_ids = _planned[key]
        return list(specs), list(run_ids)
    specs, run_ids = _planned_specs(grid, selected, key if not grid.plugins else None)
    _planned.clear()  # one plan kept: a grid of 100,000 runs is a lot of objects
    _planned[key] = (specs, run_ids)
    return list(specs), list(run_ids)


_planned: dict[str, tuple[list[RunSpec], list[str]]] = {}


def _planned_specs(grid: GridConfig, selected: Mapping[tuple[str, str, str], dict[str, Any]] | None,
                   key: str | None) -> tuple[list[RunSpec], list[str]]:
    """planned_specs from the disk cache (inside reading(), ``key`` given), else expanded, checked and stored."""
    if key is not None and _READING.get():
        cached = diskcache.read("plans", key)
        with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
            if cached is not None:
                return specs_from_json(cached), cached["run_ids"]
    from kdbench.grid.expand import expand_with_ids
    from kdbench.grid.needs import check_method_needs

    expanded = expand_with_ids(grid, selected)
    specs, run_ids = list(expanded.values()), list(expanded)
    check_method_needs(specs)
    if key is not None and cacheable(grid) and not diskcache.exists("plans", key):
        diskcache.write("plans", key, {**specs_to_json(specs), "run_ids": run_ids})
    return specs, run_ids


def tuning_cells(grid: GridConfig) -> list[TuningCell]:
    """``kdbench.grid.expand.tuning_cells(grid)`` (fresh objects: callers fill in their scores)."""
    if grid.tuning is None:
        return []
    key = _plan_key("cells", grid) if not grid.plugins else None
    if key is not None and _READING.get():
        cached = diskcache.read("tuning-cells", key)
        with contextlib.suppress(ValueError, KeyError, TypeError, IndexError):
            if cached is not None:
                return cells_from_json(cached)
    from kdbench.grid.expand import tuning_cells as expand_cells

    cells = expand_cells(grid)
    if key is not None and cacheable(grid) and not diskcache.exists("tuning-cells", key):
        diskcache.write("tuning-cells", key, cells_to_json(cells))
    return cells


# --- RunSpecs as JSON ------------------------------------------------------------------------------------------

_INTERNED = ("arch_kwargs", "params", "label")  # plain values many specs share: stored once too


def specs_to_json(specs: list[RunSpec]) -> dict[str, Any]:
    """Specs as JSON: one row (a list of RunSpec's fields) per spec; nested models and the values many specs share
    (dataset, recipe, teacher, weights, params...) stored once and named by their position."""
    from kdbench.runspec import RunSpec

    names = tuple(RunSpec.model_fields)
    tables: dict[str, list[Any]] = {name: [] for name in (*_SHARED, "values")}
    seen: dict[str, int] = {}
    by_object: dict[int, int] = {}

    def intern(kind: str, value: Any) -> int:
        index = by_object.get(id(value))  # specs of a cell share their nested models: dump each once
        if index is None:
            dumped = value.model_dump(mode="json") if kind in _SHARED else value
            text = kind + json.dumps(dumped, sort_keys=True)
            index = seen.get(text)
            if index is None:
                index = seen[text] = len(tables[kind])
                tables[kind].append(dumped)
            if kind in _SHARED:
                by_object[id(value)] = index
        return index

    rows = []
    for spec in specs:
        row = []
        for name in names:
            value = getattr(spec, name)
            if name in _SHARED:
                value = intern(name, value) if value is not None else None
            elif name in _INTERNED:
                value = intern("values", value)
            row.append(value)
        rows.append(row)
    return {"fields": names, "tables": tables, "specs": rows}


def specs_from_json(data: dict[str, Any]) -> list[RunSpec]:
    """The specs ``specs_to_json`` stored (validated once per shared model, constructed for each spec); ValueError
    when RunSpec's fields are not those they were stored with."""
    _light_imports()
    from kdbench.data.spec import DatasetSpec
    from kdbench.recipe import Recipe
    from kdbench.runspec import RunSpec, TeacherRef, WeightsRef

    names = tuple(RunSpec.model_fields)
    if tuple(data["fields"]) != names:
        raise ValueError(f"cached specs have fields {data['fields']}, RunSpec has {names}")
    kinds = {"dataset": DatasetSpec, "recipe": Recipe, "teacher": TeacherRef, "weights": WeightsRef}
    shared = {name: [kinds[name].model_validate(value) for value in data["tables"][name]] for name in _SHARED}
    values = data["tables"]["values"]
    specs = []
    construct = RunSpec.model_construct
    for row in data["specs"]:
        fields = dict(zip(names, row, strict=True))
        for name in _SHARED:
            fields[name] = shared[name][fields[name]] if fields[name] is not None else None
        for name in _INTERNED:
            value = values[fields[name]]
            fields[name] = dict(value) if isinstance(value, dict) else value  # each spec its own dict, as validated
        specs.append(construct(**fields))
    return specs


def cells_to_json(cells: list[TuningCell]) -> dict[str, Any]:
    """Tuning cells as JSON (their specs and teacher specs through specs_to_json)."""
    specs: list[RunSpec] = []
    position: dict[str, int] = {}

    def ref(spec: RunSpec | None) -> int | None:
        if spec is None:
            return None
        if spec.run_id not in position:
            position[spec.run_id] = len(specs)
            specs.append(spec)
        return position[spec.run_id]

    rows = [{"dataset": cell.dataset, "pair": cell.pair, "method": cell.method, "select_on": cell.select_on,
             "budget": cell.budget, "configs": cell.configs, "run_ids": cell.run_ids,
             "specs": [[ref(spec) for spec in group] for group in cell.specs],
             "teachers": {run_id: ref(teacher) for run_id, teacher in cell.teachers.items()}} for cell in cells]
    return {"specs": specs_to_json(specs), "cells": rows}


def cells_from_json(data: dict[str, Any]) -> list[TuningCell]:
    """The tuning cells ``cells_to_json`` stored."""
    from kdbench.grid.expand import TuningCell

    specs = specs_from_json(data["specs"])
    return [TuningCell(dataset=row["dataset"], pair=row["pair"], method=row["method"], select_on=row["select_on"],
                       budget=row["budget"], configs=row["configs"], run_ids=row["run_ids"],
                       specs=[[specs[i] for i in group] for group in row["specs"]],
                       teachers={run_id: specs[i] if i is not None else None for run_id, i in row["teachers"].items()})
            for row in data["cells"]]
