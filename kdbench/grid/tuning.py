"""Equal tuning: which configurations of a method's sweep are trained, and which one is selected on validation.

Stage 1 trains, for every (dataset, pair, method with a sweep), up to ``tuning.budget`` configurations on each of
``tuning.seeds``; they are ordinary runs (``RunSpec.tuning``) scored on the validation split only. Stage 2 trains
the selected configuration on the grid's seeds, as the method's row of every table. A selection exists once all
of a cell's tuning runs are done; until then its final runs are not planned (``kdbench run`` again trains them).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kdbench.config import MethodEntry, Recipe, TuningConfig
from kdbench.tracking.record import RunRecord
from kdbench.tracking.tuning_file import write_tuning_file


def sweep_configs(entry: MethodEntry, tuning: TuningConfig) -> list[dict[str, Any]]:
    """The configurations of ``entry``'s sweep that are trained: all when there are at most ``budget``, else
    ``budget`` of them (a random sample seeded by (tuning.seed, method label), or the first in grid order)."""
    if not entry.sweep:
        return []
    keys = sorted(entry.sweep)
    grid = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(entry.sweep[k] for k in keys))]
    if len(grid) <= tuning.budget:
        return grid
    if tuning.sampling == "grid":
        return grid[: tuning.budget]
    picked = random.Random(f"kdbench-tuning:{tuning.seed}:{entry.display}").sample(range(len(grid)), tuning.budget)
    return [grid[i] for i in sorted(picked)]


def tuning_recipe(recipe: Recipe, tuning: TuningConfig) -> Recipe:
    """The recipe of tuning runs: ``tuning.epochs`` (default the recipe's), LR milestones scaled to it."""
    if tuning.epochs is None or tuning.epochs == recipe.epochs:
        return recipe
    scale = tuning.epochs / recipe.epochs
    milestones = sorted({max(1, round(m * scale)) for m in recipe.milestones})
    return Recipe.model_validate({**recipe.model_dump(), "epochs": tuning.epochs, "milestones": milestones})


def score(record: RunRecord | None, select_on: str) -> float | None:
    """The validation number a finished tuning run is judged by; None when the run is not done."""
    if record is None or record.status != "done":
        return None
    if select_on == "best_val_top1":
        return record.best_val.val_top1 if record.best_val is not None else None
    result = record.final_val
    if result is None:
        return None
    return result.top1 if select_on == "val_top1" else result.balanced_acc


@dataclass
class Selection:
    """One (dataset, pair, method) cell's tuning: its configurations, their scores and the selected one."""

    dataset: str
    pair: str
    method: str
    select_on: str
    budget: int
    configs: list[dict[str, Any]]
    scores: list[float | None] = field(default_factory=list)  # mean over tuning seeds; None until all are done
    run_ids: list[list[str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every tuning run of the cell is done."""
        return all(s is not None for s in self.scores)

    @property
    def selected(self) -> int | None:
        """Index of the best configuration (ties: the first in sweep order); None until the cell is complete."""
        if not self.complete or not self.scores:
            return None
        best = max(s for s in self.scores if s is not None)
        return next(i for i, s in enumerate(self.scores) if s is not None and math.isclose(s, best, abs_tol=1e-12))

    @property
    def key(self) -> tuple[str, str, str]:
        """(dataset variant, pair label, method label)."""
        return (self.dataset, self.pair, self.method)


def score_configs(selection: Selection, records: dict[str, RunRecord | None]) -> Selection:
    """``selection`` with each configuration's mean score over its tuning runs (None while any is not done)."""
    scores: list[float | None] = []
    for ids in selection.run_ids:
        values = [score(records.get(run_id), selection.select_on) for run_id in ids]
        scores.append(None if any(v is None for v in values) else sum(values) / len(values))  # type: ignore[arg-type]
    selection.scores = scores
    return selection


def write_selections(grid_dir: Path, selections: Iterable[Selection]) -> None:
    """Record every cell's tuning (configs, scores, selection) in ``<grid dir>/tuning.json``."""
    names = [f.name for f in fields(Selection)]
    write_tuning_file(grid_dir, [{name: getattr(s, name) for name in names} | {"selected": s.selected}
                                 for s in selections])
