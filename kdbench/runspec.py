"""RunSpec: the frozen, fully resolved description of one training run, and its stable run id."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kdbench.config import Recipe
from kdbench.data.spec import DatasetSpec

# Bump when the meaning of a spec changes in a way that must not reuse old results.
SPEC_SCHEMA = 1

# Fields that say where things are or how fast they run, not what is computed: they do not enter the run id.
_LOCATION_FIELDS = {"dataset": {"root", "download", "split_dir"}, "recipe": {"channels_last", "compile"}}
# Fields added after run ids were first issued: left out of the id while they hold these values, so that
# every run planned before them keeps its id (and its results).
_ADDED_DEFAULTS = {"dataset": {"image_size": None}, "recipe": {"lr_scaling": "none", "lr_reference_batch": 256}}
_ADDED_TOP_DEFAULTS = {"weights": None, "tuning": False}


class TeacherRef(BaseModel):
    """The teacher a student distils from: its architecture and the run that trained it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    run_id: str


class WeightsRef(BaseModel):
    """Where a teacher's weights come from instead of training: a state-dict file, or the hub's pretrained ones.

    ``identity`` is what the run id hashes: ``sha256:<hex>`` when a checksum is given (the file may move),
    else the absolute path, or ``pretrained``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(description="an absolute file path, or 'pretrained'")
    sha256: str | None = None

    @property
    def identity(self) -> str:
        """What names these weights in the run id."""
        return f"sha256:{self.sha256}" if self.sha256 else self.source

    @property
    def pretrained(self) -> bool:
        """True for the model library's own pretrained weights."""
        return self.source == "pretrained"


class RunSpec(BaseModel):
    """One run: stage, data, architecture, teacher, method and hyper-parameters, recipe and seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: Literal["teacher", "student"]
    dataset: DatasetSpec
    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    teacher: TeacherRef | None = None
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    recipe: Recipe
    seed: int
    weights: WeightsRef | None = Field(default=None, description="teacher stage: evaluate these weights, no training")
    tuning: bool = Field(default=False, description="a run of a method's sweep, selected on validation only")
    label: str = Field(default="", description="display name of the method setting; not part of the run id")

    def canonical_json(self) -> str:
        """The JSON that the run id hashes: sorted keys, no location fields, no display label."""
        payload = self.model_dump(mode="json", exclude={"label": True, **_LOCATION_FIELDS})
        for section, defaults in _ADDED_DEFAULTS.items():
            part = payload.get(section)
            for name, default in defaults.items():
                if isinstance(part, dict) and name in part and part[name] == default:
                    del part[name]
        for name, default in _ADDED_TOP_DEFAULTS.items():
            if payload.get(name, default) == default:
                payload.pop(name, None)
        if self.weights is not None:
            payload["weights"] = self.weights.identity
        payload["schema"] = SPEC_SCHEMA
        return json.dumps(payload, sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    @property
    def pair(self) -> str:
        """'teacher->student', or the architecture alone when there is no teacher."""
        return f"{self.teacher.arch}->{self.arch}" if self.teacher else self.arch

    @property
    def display_method(self) -> str:
        """The method's label in tables."""
        return self.label or self.method

    def describe(self) -> str:
        """A one-line human description, for progress lines."""
        if self.stage == "teacher" and self.weights is not None:
            given = "pretrained" if self.weights.pretrained else Path(self.weights.source).name
            return f"teacher {self.arch} {self.dataset.variant} from weights ({given})"
        if self.stage == "teacher":
            return f"teacher {self.arch} {self.dataset.variant} seed {self.seed}"
        stage = "tuning" if self.tuning else "student"
        return f"{stage} {self.display_method} {self.pair} {self.dataset.variant} seed {self.seed}"
