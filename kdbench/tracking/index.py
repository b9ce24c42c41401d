"""The grid index: a summary of every run record of a runs folder, kept beside the records, checked against them.

The records stay the truth; the index only spares reading thousands of them. Under ``<runs root>/.index/``:

``index.jsonl``
    line 1: ``{"format": "kdbench-index", "version": N, "runs": {run_id: summary}}`` (state and final metrics);
    then one line per finished run, ``<run_id><TAB><json>``, with its per-class counts. Readers that need no
    per-class counts (status, plan, ``--wait``) read line 1 only. Written atomically (temporary file, rename).
``journal/``
    one small file per record written (or moved aside) since the last compaction, written atomically by the
    process that wrote the record. Writers never touch ``index.jsonl``, so concurrent writers on several nodes
    need no lock: each file has one writer and a unique name.
``.lock``
    a flock the reader that folds the journal into ``index.jsonl`` takes without waiting; a reader that does not
    get it uses the merged view without writing it. Where flock does not reach across nodes (NFS mounted
    ``nolock``), two compactions may race and one may drop the other's journal entries: the check below then
    finds those records unindexed and reads them again, so a lost update costs time, never a wrong answer.

Every load compares the index with the records: one scandir of the runs folder and one ``stat`` of each
``record.json`` (inode, size, mtime). An entry whose record changed, a record without an entry (added by hand,
or written by a process killed before its journal entry) and an entry whose record is gone (a run folder
deleted) are rebuilt from the records, with one notice line. What a stat cannot see (a record's bytes damaged in
place with the same size and mtime) is found when the record itself is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kdbench.tracking.atomic import TEMP_SUFFIX, atomic_write_bytes

if TYPE_CHECKING:  # pydantic is imported only when a record has to be read
    from kdbench.tracking.record import RunRecord

log = logging.getLogger("kdbench")

INDEX_DIR = ".index"
INDEX_NAME = "index.jsonl"
JOURNAL_DIR = "journal"
LOCK_NAME = ".lock"
FORMAT = "kdbench-index"
# Bump when a summary's fields change: an index of another version is rebuilt from the records.
VERSION = 1
GARBAGE_AFTER_S = 600  # a journal entry whose record has not appeared after this long belongs to a killed writer
_RECORD, _BACKUP = "record.json", "record.backup.json"  # as kdbench.tracking.record names them (a test checks)

Signature = tuple[int, int, int]  # (inode, size, mtime_ns) of record.json: a new atomic write changes the inode


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
        for name, kind in (("final", Metrics), ("final_val", Metrics), ("best_val", BestValSummary),
                           ("teacher", TeacherSummary)):
            if values.get(name) is not None:
                values[name] = kind(*values[name])
        return cls(**values)


class RunFacts(NamedTuple):
    """The few facts of a record that planning needs: its status, code identity and weights checksums."""

    status: str
    code: dict[str, str]
    teacher_sha256: str | None  # of the teacher weights a student used
    model_sha256: str | None  # of the run's own weights


@dataclass(frozen=True)
class ClassCounts:
    """A finished run's final-epoch per-class test counts and its per-class training counts."""

    class_counts: list[int]
    correct: list[int]
    total: list[int]


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
        peak_memory_bytes=record.peak_memory_bytes,
        teacher=(TeacherSummary(record.teacher.run_id, record.teacher.arch, record.teacher.sha256, record.teacher.top1)
                 if record.teacher else None),
        model_sha256=record.model_sha256, code=dict(record.code))
    counts = None
    if record.status == "done" and final is not None:
        counts = ClassCounts(list(record.class_counts), list(final.per_class_correct), list(final.per_class_total))
    return summary, counts


def _signature(path: str) -> Signature | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), allow_nan=True)


# --- writers ---------------------------------------------------------------------------------------------------

def _journal(run_dir: Path, payload: dict[str, Any]) -> None:
    name = f"{run_dir.name}.{time.time_ns()}.{secrets.token_hex(4)}.json"
    atomic_write_bytes(run_dir.parent / INDEX_DIR / JOURNAL_DIR / name, _dumps(payload).encode())


def note_record(run_dir: str | Path, record: RunRecord, sha256: str) -> None:
    """Tell the index that ``run_dir``/record.json is about to hold ``record`` (bytes with this ``sha256``).

    Called *before* the record is written, so that no reader ever sees the record without its entry; an entry
    whose record never appears (its writer was killed in between) matches nothing and is dropped later. Never
    fails the caller: without its entry, the next reader finds the record unindexed and reads it.
    """
    run_dir = Path(run_dir)
    summary, counts = summarize(record)
    with contextlib.suppress(OSError):
        run_dir.mkdir(parents=True, exist_ok=True)  # a reader drops entries of run folders that do not exist
        _journal(run_dir, {"run_id": run_dir.name, "sha256": sha256, "summary": summary.to_json(),
                           "counts": counts.__dict__ if counts else None})


def note_removed(run_dir: str | Path) -> None:
    """Tell the index that ``run_dir``'s record is about to be moved aside on purpose (the run is trained again)."""
    run_dir = Path(run_dir)
    with contextlib.suppress(OSError):
        _journal(run_dir, {"run_id": run_dir.name, "sha256": None, "summary": None, "counts": None})


# --- readers ---------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Entry:
    sig: Signature
    sha256: str | None  # of the record's bytes
    summary: dict[str, Any]  # RunSummary.to_json()
    counts: str | None = None  # the per-class line's JSON, kept as text until asked for
    counts_known: bool = True  # False: the snapshot's per-class line was not read (or did not match)


@dataclass
class _Snapshot:
    entries: dict[str, _Entry] = field(default_factory=dict)
    exists: bool = False
    problem: str | None = None  # why an existing index.jsonl could not be used


class GridIndex:
    """The verified index of one runs folder: a summary per recorded run, per-class counts on demand."""

    def __init__(self, runs_root: Path, entries: dict[str, _Entry]) -> None:
        self.runs_root = runs_root
        self._entries = entries
        self._summaries: dict[str, RunSummary] = {}

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def run_ids(self) -> list[str]:
        """Every recorded run, sorted."""
        return sorted(self._entries)

    def summary(self, run_id: str) -> RunSummary | None:
        """The summary of ``run_id``'s record, or None when it has no record."""
        found = self._summaries.get(run_id)
        if found is None and run_id in self._entries:
            found = self._summaries[run_id] = RunSummary.from_json(self._entries[run_id].summary)
        return found

    def facts(self, run_id: str) -> RunFacts | None:
        """Status, code identity and weights checksums of ``run_id``'s record (cheaper than its summary)."""
        entry = self._entries.get(run_id)
        if entry is None:
            return None
        data = entry.summary
        teacher = data.get("teacher")
        return RunFacts(data["status"], data.get("code") or {}, teacher[2] if teacher else None,
                        data.get("model_sha256"))

    def summaries(self) -> list[RunSummary]:
        """Every summary, in run-id order."""
        return [self.summary(run_id) for run_id in self.run_ids()]  # type: ignore[misc]

    def class_counts(self, run_ids: Iterable[str]) -> dict[str, ClassCounts]:
        """Per-class counts of the finished runs among ``run_ids`` (records are read where the index lacks them)."""
        result: dict[str, ClassCounts] = {}
        for run_id in run_ids:
            entry = self._entries.get(run_id)
            if entry is None:
                continue
            if not entry.counts_known:
                _fill_counts(self.runs_root, run_id, entry)
            if entry.counts is not None:
                result[run_id] = ClassCounts(**json.loads(entry.counts))
        return result


def _fill_counts(runs_root: Path, run_id: str, entry: _Entry) -> None:
    """Per-class counts from the record itself (a finished run whose per-class line the index lacks)."""
    entry.counts, entry.counts_known = None, True
    if not _has_counts(entry.summary):
        return
    from kdbench.tracking.record import read_record

    record = read_record(runs_root / run_id)
    counts = summarize(record)[1] if record is not None else None
    entry.counts = _dumps(counts.__dict__) if counts else None


def _read_snapshot(path: Path, with_counts: bool) -> _Snapshot:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return _Snapshot()
    with handle:
        try:
            header = json.loads(handle.readline())
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                return _Snapshot(exists=True, problem="not a kdbench index")
            if header.get("version") != VERSION:
                return _Snapshot(exists=True, problem=f"index version {header.get('version')}, this kdbench "
                                                      f"reads {VERSION}")
            entries = {run_id: _Entry(tuple(item["sig"]), item["sha256"], item["summary"],  # type: ignore[arg-type]
                                      counts_known=False) for run_id, item in header["runs"].items()}
            if with_counts:
                _read_counts(handle, entries)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return _Snapshot(exists=True, problem=f"{type(error).__name__}: {error}"[:200])
    return _Snapshot(entries, exists=True)


def _has_counts(summary: dict[str, Any]) -> bool:
    """Whether a record of this summary carries per-class counts (a finished run with final metrics)."""
    return summary.get("status") == "done" and summary.get("final") is not None


def _read_counts(handle, entries: dict[str, _Entry]) -> None:
    """The per-class lines after the header, ``<run_id>\\t<sig>\\t<json>``, into the entries whose sig they match.

    A finished run without a matching line keeps ``counts_known`` False: its record is read when asked for.
    """
    for raw in handle:
        run_id, _, rest = raw.decode().rstrip("\n").partition("\t")
        entry = entries.get(run_id)
        if entry is None or entry.counts_known:
            continue
        sig_text, _, counts = rest.partition("\t")
        if json.loads(sig_text) == list(entry.sig):
            entry.counts, entry.counts_known = counts, True
    for entry in entries.values():
        if not entry.counts_known and not _has_counts(entry.summary):
            entry.counts, entry.counts_known = None, True


@dataclass
class _Noted:
    """One journal entry: a record about to be written (its sha256 and summary) or moved aside (no sha256)."""

    path: Path
    written_ns: int
    sha256: str | None
    summary: dict[str, Any] | None
    counts: dict[str, Any] | None


def _read_journal(journal_dir: Path) -> tuple[dict[str, list[_Noted]], list[_Noted]]:
    """Journal entries per run (oldest first), and all entries read."""
    try:
        names = [name for name in os.listdir(journal_dir) if name.endswith(".json") and not name.startswith(".")]
    except FileNotFoundError:
        return {}, []
    by_run: dict[str, list[_Noted]] = {}
    read = []
    for name in sorted(names, key=_written_at):
        path = journal_dir / name
        try:
            item = json.loads(path.read_bytes())
            noted = _Noted(path, _written_at(name)[0], item["sha256"], item["summary"], item["counts"])
            by_run.setdefault(str(item["run_id"]), []).append(noted)
        except FileNotFoundError:
            continue  # folded into index.jsonl by another reader meanwhile (load_index then reads again)
        except (ValueError, KeyError, TypeError, OSError):
            noted = _Noted(path, 0, None, None, None)  # unreadable: matches nothing, removed as garbage
        read.append(noted)
    return by_run, read


def _written_at(name: str) -> tuple[int, str]:
    """A journal file's write time (``<run_id>.<ns>.<random>.json``), for ordering."""
    parts = name.rsplit(".", 3)
    return (int(parts[1]), name) if len(parts) == 4 and parts[1].isdigit() else (0, name)


def _run_folders(runs_root: Path) -> Iterator[str]:
    with os.scandir(runs_root) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_dir():
                yield entry.name


@dataclass
class _Changes:
    added: int = 0
    changed: int = 0
    removed: int = 0
    folded: int = 0  # journal entries taken over (no notice: that is how records reach the index)
    consumed: set[Path] = field(default_factory=set)  # journal files whose news is now in the entries

    @property
    def disagreed(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def load_index(runs_root: str | Path, *, with_counts: bool = False, update: bool = True) -> GridIndex:
    """The index of ``runs_root``, checked against its records (and repaired from them, with one notice line).

    ``with_counts`` also reads the per-class counts (the report); ``update`` writes the merged index back
    (folding the journal) when this process gets the index lock and may write there.
    """
    runs_root = Path(runs_root)
    if not runs_root.is_dir():
        return GridIndex(runs_root, {})
    index_dir = runs_root / INDEX_DIR
    index_file = str(index_dir / INDEX_NAME)
    for _ in range(5):
        # In this order: a record's journal entry is written before the record, so the journal read after the
        # scan has the entry of every record the scan saw, unless a compaction folded it into a newer index.jsonl
        # meanwhile (it replaces index.jsonl before it deletes journal files): then read again.
        version = _signature(index_file)
        snapshot = _read_snapshot(Path(index_file), with_counts)
        observed = {run_id: _signature(f"{runs_root}/{run_id}/{_RECORD}") for run_id in _run_folders(runs_root)}
        journal, noted = _read_journal(index_dir / JOURNAL_DIR)
        if _signature(index_file) == version:
            break
    entries, changes = _verify(runs_root, observed, snapshot, journal)
    _notice(runs_root, snapshot, changes, len(entries))
    droppable = _droppable(noted, changes.consumed)
    if update and (changes.disagreed or changes.folded or droppable or snapshot.problem):
        _compact(index_dir, entries, droppable)
    return GridIndex(runs_root, entries)


def _droppable(noted: list[_Noted], consumed: set[Path]) -> list[Path]:
    """Journal files a compaction may delete: those folded in, and entries of writers killed before their record
    appeared (unmatched for GARBAGE_AFTER_S; a live writer's record follows its entry within moments)."""
    cutoff = time.time_ns() - GARBAGE_AFTER_S * 10**9
    return [item.path for item in noted if item.path in consumed or item.written_ns < cutoff]


def _record_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def _verify(runs_root: Path, observed: dict[str, Signature | None], snapshot: _Snapshot,
            journal: dict[str, list[_Noted]]) -> tuple[dict[str, _Entry], _Changes]:
    """Entries that agree with the records (``observed``: each run folder's record.json signature, or None): the
    snapshot's, the journal's, or rebuilt from the record."""
    entries: dict[str, _Entry] = {}
    changes = _Changes()
    root = str(runs_root)
    for run_id, sig in observed.items():
        path = f"{root}/{run_id}/{_RECORD}"
        known = snapshot.entries.get(run_id)
        noted = journal.get(run_id, [])
        if sig is not None and known is not None and known.sig == sig:
            entries[run_id] = known
            changes.consumed.update(item.path for item in noted if item.sha256 == known.sha256)  # folded before
            continue
        if sig is not None and any(item.sha256 is not None for item in noted):
            digest = _record_sha256(path)
            match = [item for item in noted if item.sha256 is not None and item.sha256 == digest]
            if match and _signature(path) == sig:
                item = match[-1]
                entries[run_id] = _Entry(sig, digest, item.summary or {}, _dumps(item.counts) if item.counts else None)
                changes.folded += 1
                changes.consumed.update(n.path for n in noted if n.written_ns <= item.written_ns)
                continue
        if sig is None and _signature(f"{root}/{run_id}/{_BACKUP}") is None:
            tombstoned = _tombstoned(noted)
            changes.consumed.update(item.path for item in noted if item.sha256 is None)
            if known is not None:  # the record is gone: moved aside on purpose (a tombstone) or deleted
                changes.folded += 1
                changes.removed += not tombstoned
            continue
        moved = _signature(path) != sig
        rebuilt = _entry_from_record(runs_root, run_id)
        if rebuilt is not None:
            entries[run_id] = rebuilt
        if moved:
            changes.folded += 1  # rewritten since the scan (a rerun): its journal entry may be newer than our read
        elif known is None and rebuilt is not None:
            changes.added += 1
        elif known is not None:
            changes.changed += 1
    for run_id, noted in journal.items():
        if not (runs_root / run_id).is_dir():
            changes.consumed.update(item.path for item in noted)
    for run_id in snapshot.entries.keys() - entries.keys():
        if not (runs_root / run_id).is_dir():  # the run folder itself was deleted
            changes.folded += 1
            changes.removed += not _tombstoned(journal.get(run_id, []))
    return entries, changes


def _tombstoned(items: list[_Noted]) -> bool:
    return bool(items) and items[-1].sha256 is None


def _entry_from_record(runs_root: Path, run_id: str) -> _Entry | None:
    """The entry of a run, from its record (the truth); None when it has no readable record."""
    from kdbench.tracking.record import read_record

    record = read_record(runs_root / run_id)  # sets a damaged record aside, restores the backup
    path = f"{runs_root}/{run_id}/{_RECORD}"
    sig, digest = _signature(path), _record_sha256(path)
    if record is None or sig is None:
        return None
    summary, counts = summarize(record)
    return _Entry(sig, digest, summary.to_json(), _dumps(counts.__dict__) if counts else None)


def _notice(runs_root: Path, snapshot: _Snapshot, changes: _Changes, total: int) -> None:
    index = runs_root / INDEX_DIR / INDEX_NAME
    if snapshot.problem is not None and total:
        log.warning("notice: unreadable index %s (%s); rebuilt it from the %d records", index, snapshot.problem,
                    total)
    elif not snapshot.exists and changes.added:
        log.warning("notice: no index in %s; built it from %d records", runs_root, changes.added)
    elif changes.disagreed:
        parts = [f"{n} {what}" for n, what in ((changes.added, "record(s) added"),
                                               (changes.changed, "record(s) changed"),
                                               (changes.removed, "record(s) gone")) if n]
        log.warning("notice: the index of %s disagreed with the records (%s); those entries were rebuilt from "
                    "the records", runs_root, ", ".join(parts))


def _compact(index_dir: Path, entries: dict[str, _Entry], journal_files: list[Path]) -> None:
    """Write the merged index and drop the journal files folded into it, if this process gets the lock."""
    from kdbench.tracking.lock import FileLock

    lock = FileLock(index_dir / LOCK_NAME)
    try:
        if not lock.acquire():
            return
    except OSError:  # a read-only results folder: the merged view still answers this reader
        return
    try:
        if any(not entry.counts_known for entry in entries.values()):
            _counts_from_snapshot(index_dir / INDEX_NAME, entries)
        header = {"format": FORMAT, "version": VERSION,
                  "runs": {run_id: {"sig": list(entry.sig), "sha256": entry.sha256, "summary": entry.summary}
                           for run_id, entry in sorted(entries.items())}}
        lines = [_dumps(header)]
        lines += [f"{run_id}\t{_dumps(list(entry.sig))}\t{entry.counts}" for run_id, entry in sorted(entries.items())
                  if entry.counts is not None and entry.counts_known]
        try:
            atomic_write_bytes(index_dir / INDEX_NAME, ("\n".join(lines) + "\n").encode())
        except OSError:
            return
        for path in journal_files:
            path.unlink(missing_ok=True)
        _remove_stale_temp_files(index_dir / JOURNAL_DIR)
    finally:
        lock.release()


def _counts_from_snapshot(path: Path, entries: dict[str, _Entry]) -> None:
    """Fill the entries whose per-class line was not read, from the index file on disk (lines matching their sig)."""
    with contextlib.suppress(OSError, ValueError), path.open("rb") as handle:
        handle.readline()
        _read_counts(handle, {run_id: entry for run_id, entry in entries.items() if not entry.counts_known})


def _remove_stale_temp_files(journal_dir: Path) -> None:
    """Temporary files of journal writes killed mid-way (older than a minute, so never a live writer's)."""
    cutoff = time.time() - 60
    with contextlib.suppress(OSError):
        for name in os.listdir(journal_dir):
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                path = journal_dir / name
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
