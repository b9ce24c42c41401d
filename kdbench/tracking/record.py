"""RunRecord: the JSON record of one run, the source of truth for every table (PROTOCOL.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kdbench.tracking.atomic import atomic_write_json

RECORD_NAME = "record.json"
RECORD_VERSION = 1


class EvalResult(BaseModel):
    """Metrics of one evaluation, with the raw per-class counts they come from."""

    model_config = ConfigDict(extra="forbid")

    top1: float
    top5: float
    balanced_acc: float
    loss: float
    num_images: int
    per_class_correct: list[int]
    per_class_total: list[int]
    confusion: list[list[int]] | None = Field(default=None, description="rows = true class; kept up to 100 classes")


class EpochLog(BaseModel):
    """One epoch: learning rate, mean train loss terms, accuracies, speed."""

    model_config = ConfigDict(extra="forbid")

    epoch: int
    lr: float
    train: dict[str, float]
    val_top1: float | None = None
    test_top1: float
    test_top5: float
    seconds: float
    images_per_s: float


class BestVal(BaseModel):
    """The epoch with the best validation top-1, and the test metrics at that epoch."""

    model_config = ConfigDict(extra="forbid")

    epoch: int
    val_top1: float
    test: EvalResult


class TeacherInfo(BaseModel):
    """The teacher a student used: run id, checksum of its weights, its test top-1."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    arch: str
    sha256: str
    top1: float


class RunRecord(BaseModel):
    """Everything a run produced and where it came from; written once, atomically, when the run ends."""

    model_config = ConfigDict(extra="forbid")

    record_version: int = RECORD_VERSION
    run_id: str
    grid: str
    status: Literal["done", "failed"]
    reason: str | None = None
    traceback: str | None = None
    stage: Literal["teacher", "student"]
    method: str
    label: str
    arch: str
    pair: str
    dataset: str
    seed: int
    subset_seed: int
    spec: dict[str, Any]
    config_sha256: str
    num_classes: int | None = None
    class_counts: list[int] = Field(default_factory=list)
    final: EvalResult | None = None
    final_val: EvalResult | None = None
    best_val: BestVal | None = None
    history: list[EpochLog] = Field(default_factory=list)
    student_params: int | None = None
    extra_params: int | None = None
    peak_memory_bytes: int | None = None
    teacher: TeacherInfo | None = None
    model_sha256: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)


def write_record(run_dir: str | Path, record: RunRecord) -> Path:
    """Write ``record.json`` atomically into ``run_dir``; never overwrite a finished (done) record."""
    path = Path(run_dir) / RECORD_NAME
    existing = read_record(path.parent)
    if existing is not None and existing.status == "done":
        raise FileExistsError(f"{path} already holds a finished run; refusing to overwrite it")
    atomic_write_json(path, record.model_dump(mode="json"))
    return path


def read_record(run_dir: str | Path) -> RunRecord | None:
    """The record in ``run_dir``, or None when there is none yet."""
    path = Path(run_dir) / RECORD_NAME
    if not path.is_file():
        return None
    return RunRecord.model_validate(json.loads(path.read_text()))
