"""Checks made before any run is submitted: every dataset's files, and every teacher weights file.

Grid loading checks what needs no data (so that ``--dry-run`` plans an ImageNet grid on a laptop); these
checks need the files and run when ``kdbench run`` is about to train or submit.
"""

from __future__ import annotations

from pathlib import Path

from kdbench.config import GridConfig
from kdbench.data import get_source, missing_data, validate_dataset_spec
from kdbench.models import build_model
from kdbench.models.weights import WeightsError, state_dict_from_file


def preflight_problems(grid: GridConfig) -> list[str]:
    """One line per problem (naming the field and the value); empty when every file a run needs is usable."""
    problems = []
    classes: dict[str, int] = {}
    for index, dataset in enumerate(grid.datasets):
        problem = missing_data(dataset)
        if problem is None:
            try:
                validate_dataset_spec(dataset)
                classes[dataset.name] = get_source(dataset.name).num_classes(dataset)
            except ValueError as error:
                problem = str(error).removeprefix("dataset.root: ")
        if problem is not None:
            problems.append(f"datasets[{index}].root: {problem}")
    for index, pair in enumerate(grid.pairs):
        weights = pair.teacher.weights
        if weights is None or weights == "pretrained":
            continue
        field = f"pairs[{index}].teacher.weights"
        if not Path(weights).is_file():
            problems.append(f"{field} = '{weights}': no such file")
            continue
        for name, num_classes in sorted(classes.items()):
            model = build_model(pair.teacher.arch, num_classes, **pair.teacher.kwargs)
            try:
                state_dict_from_file(weights, model, sha256=pair.teacher.sha256)
            except WeightsError as error:
                problems.append(f"{field}: {error} ({pair.teacher.arch} with the {num_classes} classes of {name})")
                break
    return problems
