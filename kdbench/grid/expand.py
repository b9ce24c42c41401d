"""Expand a GridConfig into RunSpecs: teachers first, then every student run."""

from __future__ import annotations

from typing import Any

from kdbench.config import ConfigError, GridConfig, MethodEntry, Override, PairConfig, Recipe
from kdbench.data.spec import DatasetSpec
from kdbench.loss import METHODS
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


def expand_grid(grid: GridConfig) -> list[RunSpec]:
    """All runs of the grid, teachers first; runs shared by several pairs (vanilla students) appear once."""
    teachers: dict[str, RunSpec] = {}
    students: dict[str, RunSpec] = {}
    for dataset in grid.datasets:
        for pair in grid.pairs:
            for seed in grid.seeds:
                t_seed = seed if grid.teacher_seed == "same" else grid.teacher_seed
                teacher = teacher_spec(grid, dataset, pair, t_seed)
                for method in grid.methods:
                    method_cls = METHODS.get(method.name)
                    uses_teacher = method_cls.needs.teacher
                    if uses_teacher:
                        teachers.setdefault(teacher.run_id, teacher)
                    recipe, override_params = _resolve(grid, grid.recipe, method, stage="student", dataset=dataset,
                                                       teacher=pair.teacher.arch if uses_teacher else None,
                                                       student=pair.student.arch)
                    try:
                        params = method_cls.resolve_hparams({**method.params, **override_params})
                    except ValueError as error:
                        raise ConfigError(f"{error} (params of method '{method.display}' with the matching "
                                          "overrides)") from None
                    ref = TeacherRef(arch=pair.teacher.arch, arch_kwargs=pair.teacher.kwargs,
                                     run_id=teacher.run_id) if uses_teacher else None
                    spec = RunSpec(stage="student", dataset=dataset, arch=pair.student.arch,
                                   arch_kwargs=pair.student.kwargs, teacher=ref, method=method.name,
                                   params=params, recipe=recipe, seed=seed, label=method.display)
                    students.setdefault(spec.run_id, spec)
    return [*teachers.values(), *students.values()]
