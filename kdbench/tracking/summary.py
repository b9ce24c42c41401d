"""What the grid index keeps of a run record: its summary (state, final metrics, stale facts) and per-class counts.

``summarize(record)`` is the one place these are computed from a record, for the index (kdbench.tracking.index)
and for reports built from records directly, so that both give the same numbers.
"""

from __future__ import annotations

import base64
import math
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # pydantic is imported only when a record has to be read
    from kdbench.tracking.record import RunRecord


class Metrics(NamedTuple):
    """Test (or validation) metrics of one evaluation."""

    top1: float
    top5: float
    balanced_acc: float


class BestValSummary(NamedTuple):
    """The best-validation epoch: its validation top-1 and the test top-1 at that epoch."""

    epoch: int
    val_top1: float
    test_top1: float


class TeacherSummary(NamedTuple):
    """The teacher a student used: its run, weights checksum and test top-1."""

    run_id: str
    arch: str
    sha256: str
    top1: float


@dataclass(frozen=True)
class RunSummary:
    """What the index keeps of one record: state, final metrics and what stale checks need.

    Attribute names follow RunRecord's where they mean the same (``status``, ``method``, ``code``, ``teacher``,
    ``model_sha256``, ``final_val``, ``best_val.val_top1``), so code that reads those works on either.
    """

    run_id: str
    grid: str
    stage: str
    status: str
    reason: str | None
    method: str
    label: str
    arch: str
    pair: str
    dataset: str
    seed: int
    subset_seed: int
    num_classes: int | None
    tuning: bool
    teacher_arch: str | None
    dataset_name: str | None
    lt_profile: str
    imbalance_ratio: float
    params: dict[str, Any]
    final: Metrics | None
    final_val: Metrics | None
    best_val: BestValSummary | None
    epochs: int
    seconds_per_epoch: float
    images_per_s: float
    best_test_top1: float
    max_epoch_seconds: float | None
    student_params: int | None
    extra_params: int | None
    peak_memory_bytes: int | None
    train_images: int  # the sum of the per-class training counts
    device: str | None  # where it trained (provenance: device name, else device)
    teacher: TeacherSummary | None
    model_sha256: str | None
    code: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (named tuples become lists)."""
        return {name: (list(value) if isinstance(value, tuple) else value)
                for name, value in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        """The summary ``to_json`` wrote."""
        values = dict(data)
        for name, kind in _NESTED:
            if values.get(name) is not None:
                values[name] = kind(*values[name])
        return cls(**values)

    def to_row(self) -> list[Any]:
        """The values of ``to_json`` in field order (SUMMARY_FIELDS): a third smaller as JSON, faster to read."""
        return list(self.to_json().values())

    @classmethod
    def from_row(cls, row: list[Any]) -> RunSummary:
        """The summary ``to_row`` wrote."""
        return cls.from_json(dict(zip(SUMMARY_FIELDS, row, strict=True)))


SUMMARY_FIELDS = tuple(RunSummary.__dataclass_fields__)
_NESTED = (("final", Metrics), ("final_val", Metrics), ("best_val", BestValSummary), ("teacher", TeacherSummary))


class RunFacts(NamedTuple):
    """The few facts of a record that planning needs: its status, code identity and weights checksums."""

    status: str
    code: dict[str, str]
    teacher_sha256: str | None  # of the teacher weights a student used
    model_sha256: str | None  # of the run's own weights


@dataclass(frozen=True)
class ClassCounts:
    """A finished run's final-epoch per-class test counts and its per-class training counts."""

    class_counts: Sequence[int]
    correct: Sequence[int]
    total: Sequence[int]

    def encode(self) -> str:
        """The three sequences as base64 of little-endian int32s (a 100,000-run index parses them in a second;
        as JSON numbers they take many)."""
        values = array("i", [len(self.class_counts), len(self.correct), *self.class_counts, *self.correct,
                             *self.total])
        if sys.byteorder == "big":
            values.byteswap()
        return base64.b64encode(values.tobytes()).decode()

    @classmethod
    def decode(cls, text: str) -> ClassCounts:
        """The counts ``encode`` wrote (as arrays of int)."""
        values = array("i")
        values.frombytes(base64.b64decode(text))
        if sys.byteorder == "big":
            values.byteswap()
        n, m = values[0], values[1]
        return cls(values[2:2 + n], values[2 + n:2 + n + m], values[2 + n + m:])


def epoch_totals(seconds: list[float], images_per_s: list[float], test_top1: list[float]) -> dict[str, Any]:
    """epochs, mean seconds per epoch, images/s over all epochs (images / seconds), best test top-1, longest epoch.

    The one place these are computed from a run's history, so that every reader gets the same numbers.
    """
    total_seconds = math.fsum(seconds)
    images = math.fsum(rate * s for rate, s in zip(images_per_s, seconds, strict=True))
    return {
        "epochs": len(seconds),
        "seconds_per_epoch": total_seconds / len(seconds) if seconds else math.nan,
        "images_per_s": images / total_seconds if total_seconds > 0 else math.nan,
        "best_test_top1": max(test_top1) if test_top1 else math.nan,
        "max_epoch_seconds": max(seconds) if seconds else None,
    }


def summarize(record: RunRecord) -> tuple[RunSummary, ClassCounts | None]:
    """The summary of a record and, for a finished run, its per-class counts."""
    spec = record.spec
    dataset = spec.get("dataset") or {}
    long_tail = dataset.get("long_tail")
    history = record.history
    final, final_val, best = record.final, record.final_val, record.best_val
    summary = RunSummary(
        run_id=record.run_id, grid=record.grid, stage=record.stage, status=record.status, reason=record.reason,
        method=record.method, label=record.label, arch=record.arch, pair=record.pair, dataset=record.dataset,
        seed=record.seed, subset_seed=record.subset_seed, num_classes=record.num_classes,
        tuning=bool(spec.get("tuning")), teacher_arch=(spec.get("teacher") or {}).get("arch"),
        dataset_name=dataset.get("name"), lt_profile=long_tail["profile"] if long_tail else "balanced",
        imbalance_ratio=float(long_tail["imbalance_ratio"]) if long_tail else 1.0,
        params=dict(spec.get("params") or {}),
        final=Metrics(final.top1, final.top5, final.balanced_acc) if final else None,
        final_val=Metrics(final_val.top1, final_val.top5, final_val.balanced_acc) if final_val else None,
        best_val=BestValSummary(best.epoch, best.val_top1, best.test.top1) if best else None,
        **epoch_totals([e.seconds for e in history], [e.images_per_s for e in history],
                       [e.test_top1 for e in history]),
        student_params=record.student_params, extra_params=record.extra_params,
        peak_memory_bytes=record.peak_memory_bytes, train_images=sum(record.class_counts),
        device=record.provenance.get("device_name") or record.provenance.get("device"),
        teacher=(TeacherSummary(record.teacher.run_id, record.teacher.arch, record.teacher.sha256, record.teacher.top1)
                 if record.teacher else None),
        model_sha256=record.model_sha256, code=dict(record.code))
    counts = None
    if record.status == "done" and final is not None:
        counts = ClassCounts(list(record.class_counts), list(final.per_class_correct), list(final.per_class_total))
    return summary, counts
