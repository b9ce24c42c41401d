"""RunRecord: the JSON record of one run, the source of truth for every table (docs/protocol.md)."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdbench.faults import failpoint
from kdbench.tracking import index
from kdbench.tracking.atomic import atomic_write_bytes, atomic_write_json, json_bytes
from kdbench.tracking.corrupt import log, set_aside

RECORD_NAME = "record.json"
BACKUP_NAME = "record.backup.json"  # a second copy: a torn or damaged record.json costs nothing
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
    code: dict[str, str] = Field(default_factory=dict, description="sha256 of the method's source and of kdbench's "
                                 "training code (kdbench.codeid); empty in records written before it existed")
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
    """Write ``record.json`` atomically into ``run_dir``; never overwrite a finished (done) record.

    The grid index (kdbench.tracking.index) is told first, so that no reader sees the record without its entry;
    a kill in between leaves an entry without a record, which matches nothing.
    """
    path = Path(run_dir) / RECORD_NAME
    existing = read_record(path.parent)
    if existing is not None and existing.status == "done":
        raise FileExistsError(f"{path} already holds a finished run; refusing to overwrite it")
    data = json_bytes(record.model_dump(mode="json"))
    index.note_record(path.parent, record, hashlib.sha256(data).hexdigest())
    failpoint("after-index-entry")  # tests: a kill between the index entry and the record
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_name(BACKUP_NAME), data)
    return path


def archive_record(run_dir: str | Path, why: str) -> Path | None:
    """Move a run's record (and weights) aside as ``record.<why>-<time>.json`` before the run is trained again."""
    run_dir = Path(run_dir)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    record = run_dir / RECORD_NAME
    if not record.is_file():
        return None
    weights = run_dir / "model.pt"
    if weights.is_file():
        weights.rename(run_dir / f"model.{why}-{stamp}.pt")
    target = run_dir / f"record.{why}-{stamp}.json"
    index.note_removed(run_dir)  # first: a reader never sees the record gone without the news
    (run_dir / BACKUP_NAME).unlink(missing_ok=True)  # before the record: a reader finding a backup alone restores it
    record.rename(target)
    return target


def _parse_record(data: bytes, run_id: str) -> RunRecord:
    """A record from its bytes; ValueError saying what is wrong (invalid JSON, fields, another run's record)."""
    try:
        record = RunRecord.model_validate(json.loads(data))
    except ValidationError as error:
        first = error.errors()[0]
        raise ValueError(f"{error.error_count()} invalid fields, first {'.'.join(map(str, first['loc']))}: "
                         f"{first['msg']}") from None
    if record.run_id != run_id:
        raise ValueError(f"it is the record of run {record.run_id}, not of {run_id}")
    return record


def read_record(run_dir: str | Path) -> RunRecord | None:
    """The record in ``run_dir``, or None when there is none yet.

    An unreadable record (truncated, invalid JSON, not this run's record) is moved aside as
    ``record.json.corrupt-<time>`` with one warning line naming it; the record is then restored from its backup
    copy when that is intact, else the run reads as not recorded (and is trained again).
    """
    run_dir = Path(run_dir)
    path = run_dir / RECORD_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return _parse_record(data, run_dir.name)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        set_aside(path, "record", str(error))
    backup = run_dir / BACKUP_NAME
    try:
        record = _parse_record(backup.read_bytes(), run_dir.name)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        set_aside(backup, "record backup", str(error))
        return None
    try:
        atomic_write_json(path, record.model_dump(mode="json"))
        log.warning("warning: %s restored from its backup %s", path, BACKUP_NAME)
    except OSError:
        pass  # a read-only results folder: the backup still answers
    return record


def read_records(runs_root: str | Path) -> list[RunRecord]:
    """Every readable record under ``runs_root`` (one folder per run), in run-id order; corrupt ones set aside."""
    records = (read_record(path.parent) for path in sorted(Path(runs_root).glob(f"*/{RECORD_NAME}")))
    return [record for record in records if record is not None]
