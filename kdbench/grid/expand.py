"""Expand a GridConfig into RunSpecs: teachers first, then every student run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kdbench.config import ConfigError, GridConfig, MethodEntry, Override, PairConfig, Recipe
from kdbench.data.spec import DatasetSpec
from kdbench.grid.tuning import Selection, sweep_configs, tuning_recipe
from kdbench.loss import METHODS
from kdbench.numfmt import param_text
from kdbench.runspec import RunSpec, TeacherRef, WeightsRef

TEACHER_METHOD = "vanilla"


def _matches(override: Override, *, stage: str, dataset: DatasetSpec, teacher: str | None, student: str,
             method: MethodEntry | None) -> bool:
    when = override.when
    checks = [
        when.stage is None or when.stage == stage,
        when.dataset is None or when.dataset in (dataset.name, dataset.variant),
        when.teacher is None or when.teacher == teacher,
        when.student is None or when.student == student,
        when.method is None or (method is not None and when.method in (method.display, method.name)),
    ]
    return all(checks)


def _resolve(grid: GridConfig, base: Recipe, method: MethodEntry | None, **where: Any) -> tuple[Recipe, dict]:
    """Apply the matching overrides in file order; return the recipe and the override params."""
    recipe, params = base, {}
    for index, override in enumerate(grid.overrides):
        if not _matches(override, method=method, **where):
            continue
        recipe = override.recipe.apply(recipe)
        if override.params:
            if method is None:
                raise ConfigError(f"overrides[{index}]: params apply to student methods; add when.stage: student")
            try:
                METHODS.get(method.name).check_hparams(override.params)
            except ValueError as error:
                raise ConfigError(f"overrides[{index}].params: {error} (add when.method to narrow it)") from None
            params.update(override.params)
    return recipe, params


def teacher_spec(grid: GridConfig, dataset: DatasetSpec, pair: PairConfig, seed: int) -> RunSpec:
    """The teacher run of ``pair`` on ``dataset``: the vanilla loss and the (teacher) recipe.

    A teacher given by ``weights`` is not trained: its run only evaluates the weights (seed 0, whatever the
    grid's teacher seed, since nothing random happens).
    """
    base = grid.teacher_recipe.apply(grid.recipe)
    recipe, _ = _resolve(grid, base, None, stage="teacher", dataset=dataset, teacher=pair.teacher.arch,
                         student=pair.teacher.arch)
    weights = (WeightsRef(source=pair.teacher.weights, sha256=pair.teacher.sha256)
               if pair.teacher.weights is not None else None)
    return RunSpec(stage="teacher", dataset=dataset, arch=pair.teacher.arch, arch_kwargs=pair.teacher.kwargs,
                   method=TEACHER_METHOD, params=METHODS.get(TEACHER_METHOD).resolve_hparams({}),
                   recipe=recipe, seed=0 if weights is not None else seed, label="teacher", weights=weights)


def expand_grid(grid: GridConfig, selected: Mapping[tuple[str, str, str], dict[str, Any]] | None = None
                ) -> list[RunSpec]:
    """All runs of the grid: teachers, tuning runs, then every student run; shared runs appear once.

    A method with a sweep contributes its tuning runs (``tuning_cells``) and, once ``selected`` holds the chosen
    configuration of its (dataset variant, pair label, method label) cell, its final runs with those values;
    without a selection its final runs are not planned yet.
    """
    teachers: dict[str, RunSpec] = {}
    students: dict[str, RunSpec] = {}
    for selection in tuning_cells(grid):
        for specs in selection.specs:
            for spec in specs:
                teacher = selection.teachers[spec.run_id]
                if teacher is not None:
                    teachers.setdefault(teacher.run_id, teacher)
                students.setdefault(spec.run_id, spec)
    for dataset in grid.datasets:
        for pair in grid.pairs:
            for seed in grid.seeds:
                for method in grid.methods:
                    values: dict[str, Any] = {}
                    if method.sweep:
                        chosen = (selected or {}).get((dataset.variant, pair.label, method.display))
                        if chosen is None:
                            continue  # its final runs wait for the selection
                        values = chosen
                    spec, teacher = _student_spec(grid, dataset, pair, method, seed, values, grid.recipe, False)
                    if teacher is not None:
                        teachers.setdefault(teacher.run_id, teacher)
                    students.setdefault(spec.run_id, spec)
    return [*teachers.values(), *students.values()]


def _student_spec(grid: GridConfig, dataset: DatasetSpec, pair: PairConfig, method: MethodEntry, seed: int,
                  values: dict[str, Any], base: Recipe, tuning: bool) -> tuple[RunSpec, RunSpec | None]:
    """A student run of ``method`` (with ``values`` over its params) and, when it distils, its teacher run."""
    t_seed = seed if grid.teacher_seed == "same" else grid.teacher_seed
    method_cls = METHODS.get(method.name)
    uses_teacher = method_cls.needs.teacher
    teacher = teacher_spec(grid, dataset, pair, t_seed) if uses_teacher else None
    recipe, override_params = _resolve(grid, base, method, stage="student", dataset=dataset,
                                       teacher=pair.teacher.arch if uses_teacher else None, student=pair.student.arch)
    if tuning and grid.tuning is not None:
        recipe = tuning_recipe(recipe, grid.tuning)
        if dataset.long_tail is None and dataset.val_fraction == 0 and dataset.name != "imagenet_lt":
            dataset = dataset.model_copy(update={"val_fraction": grid.tuning.val_fraction})  # tuning runs only
    try:
        params = method_cls.resolve_hparams({**method.params, **override_params, **values})
    except ValueError as error:
        raise ConfigError(f"{error} (params of method '{method.display}' with the matching overrides)") from None
    ref = TeacherRef(arch=pair.teacher.arch, arch_kwargs=pair.teacher.kwargs,
                     run_id=teacher.run_id) if teacher is not None else None
    label = method.display
    if tuning:
        label += "[" + ",".join(f"{key}={param_text(value)}" for key, value in sorted(values.items())) + "]"
    spec = RunSpec(stage="student", dataset=dataset, arch=pair.student.arch, arch_kwargs=pair.student.kwargs,
                   teacher=ref, method=method.name, params=params, recipe=recipe, seed=seed, label=label,
                   tuning=tuning)
    return spec, teacher


def awaiting_final_specs(grid: GridConfig, waiting: set[tuple[str, str, str]]) -> list[RunSpec]:
    """The final runs of the tuning cells ``waiting`` for their selection ((dataset variant, pair, method) keys),
    built with each cell's first configuration: what stage 2 will train, for counts and cost estimates only (the
    selected values, and so the run ids, are not known yet)."""
    specs = []
    if grid.tuning is None:
        return specs
    for dataset in grid.datasets:
        for pair in grid.pairs:
            for method in grid.methods:
                if (dataset.variant, pair.label, method.display) not in waiting:
                    continue
                config = sweep_configs(method, grid.tuning)[0]
                specs += [_student_spec(grid, dataset, pair, method, seed, config, grid.recipe, False)[0]
                          for seed in grid.seeds]
    return specs


@dataclass
class TuningCell(Selection):
    """A Selection with the specs of its tuning runs (per configuration) and each run's teacher run."""

    specs: list[list[RunSpec]] = field(default_factory=list)
    teachers: dict[str, RunSpec | None] = field(default_factory=dict)


def tuning_cells(grid: GridConfig) -> list[TuningCell]:
    """Every (dataset, pair, method with a sweep) cell with its configurations and tuning runs, in grid order."""
    if grid.tuning is None:
        return []
    cells = []
    for dataset in grid.datasets:
        for pair in grid.pairs:
            for method in grid.methods:
                configs = sweep_configs(method, grid.tuning)
                if not configs:
                    continue
                cell = TuningCell(dataset=dataset.variant, pair=pair.label, method=method.display,
                                  select_on=grid.tuning.select_on, budget=grid.tuning.budget, configs=configs)
                for config in configs:
                    specs = []
                    for seed in grid.tuning.seeds:
                        spec, teacher = _student_spec(grid, dataset, pair, method, seed, config, grid.recipe, True)
                        cell.teachers[spec.run_id] = teacher
                        specs.append(spec)
                    cell.specs.append(specs)
                    cell.run_ids.append([spec.run_id for spec in specs])
                cells.append(cell)
    return cells
