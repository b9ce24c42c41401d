"""RunSpec: the frozen, fully resolved description of one training run, and its stable run id."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kdbench.config import Recipe
from kdbench.data.spec import DatasetSpec

# Bump when the meaning of a spec changes in a way that must not reuse old results.
SPEC_SCHEMA = 1

# Fields that say where things are, not what is computed: they do not enter the run id.
_LOCATION_FIELDS = {"dataset": {"root", "download"}}


class TeacherRef(BaseModel):
    """The teacher a student distils from: its architecture and the run that trained it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    run_id: str


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
    label: str = Field(default="", description="display name of the method setting; not part of the run id")

    def canonical_json(self) -> str:
        """The JSON that the run id hashes: sorted keys, no location fields, no display label."""
        payload = self.model_dump(mode="json", exclude={"label": True, **_LOCATION_FIELDS})
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
        if self.stage == "teacher":
            return f"teacher {self.arch} {self.dataset.variant} seed {self.seed}"
        return f"student {self.display_method} {self.pair} {self.dataset.variant} seed {self.seed}"
