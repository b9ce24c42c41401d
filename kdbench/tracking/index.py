"""The grid index: a summary of every run record of a runs folder, kept beside the records, checked against them.

The records stay the truth; the index only spares reading thousands of them. Under ``<runs root>/.index/``:

``index.jsonl``
    line 1: each run's record signature and sha256 with the facts planning needs (status, code identity, weights
    checksums); then ``S<TAB>run_id<TAB>sha256<TAB>summary`` (state and final metrics, RunSummary) per run and
    ``C<TAB>...<TAB>counts`` (per-class counts) per finished run. Status, plan and ``--wait`` read line 1 only;
    the report reads the rest. Written atomically (temporary file, rename).
``journal/``
    one small file per record written (or moved aside) since the last compaction, written atomically by the
    process that writes the record, just before it does. Writers never touch ``index.jsonl``, so concurrent
    writers on several nodes need no lock: each file has one writer and a unique name.
``.lock``
    a flock the reader that folds the journal into ``index.jsonl`` takes without waiting; a reader that does not
    get it uses the merged view without writing it. Where flock does not reach across nodes (NFS mounted
    ``nolock``), two compactions may race and one may drop the other's journal entries: the check below then
    finds those records unindexed and reads them again, so a lost update costs time, never a wrong answer.

Every load compares the index with the records: one scandir of the runs folder and one ``stat`` of each
``record.json`` (inode, size, mtime), then the sha256 of a record the index does not know yet, to match it with
its journal entry. An entry whose record changed, a record without an entry (copied in or edited by hand,
written by an older kdbench) and an entry whose record is gone (a run folder deleted) are rebuilt from the
records, with one notice line. What a stat cannot see (a record's bytes damaged in
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
VERSION = 2
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
        peak_memory_bytes=record.peak_memory_bytes, train_images=sum(record.class_counts),
        device=record.provenance.get("device_name") or record.provenance.get("device"),
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

def _facts_of(summary: dict[str, Any]) -> RunFacts:
    teacher = summary.get("teacher")
    return RunFacts(summary["status"], summary.get("code") or {}, teacher[2] if teacher else None,
                    summary.get("model_sha256"))


def _has_counts(facts: RunFacts, summary: dict[str, Any] | None = None) -> bool:
    """Whether a record carries per-class counts (a finished run with final metrics; ``summary`` when known)."""
    return facts.status == "done" and (summary is None or summary.get("final") is not None)


@dataclass(slots=True)
class _Entry:
    """One run in the index: its record's signature and sha256, its facts, and (as JSON text, read when needed)
    its summary and per-class counts."""

    sig: Signature
    sha256: str | None
    facts: RunFacts
    summary: str | None = None  # None: not read from index.jsonl (yet)
    counts: str | None = None
    counts_known: bool = True  # False: not read from index.jsonl (yet)


def _new_entry(sig: Signature, sha256: str | None, summary: dict[str, Any], counts: dict[str, Any] | None) -> _Entry:
    return _Entry(sig, sha256, _facts_of(summary), _dumps(summary), _dumps(counts) if counts is not None else None)


@dataclass
class _Snapshot:
    entries: dict[str, _Entry] = field(default_factory=dict)
    exists: bool = False
    problem: str | None = None  # why an existing index.jsonl could not be used
    details: bool = False  # summaries and per-class counts were read too


class GridIndex:
    """The verified index of one runs folder: each recorded run's facts; summaries and per-class counts on demand."""

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

    def facts(self, run_id: str) -> RunFacts | None:
        """Status, code identity and weights checksums of ``run_id``'s record (what planning needs)."""
        entry = self._entries.get(run_id)
        return entry.facts if entry is not None else None

    def summary(self, run_id: str) -> RunSummary | None:
        """The summary of ``run_id``'s record, or None when it has no record."""
        found = self._summaries.get(run_id)
        if found is None and run_id in self._entries:
            entry = self._entries[run_id]
            if entry.summary is None:
                self._read_details()
            if entry.summary is not None:
                found = self._summaries[run_id] = RunSummary.from_json(json.loads(entry.summary))
        return found

    def summaries(self) -> list[RunSummary]:
        """Every summary, in run-id order."""
        if any(entry.summary is None for entry in self._entries.values()):
            self._read_details()
        pending = [run_id for run_id in self.run_ids()
                   if run_id not in self._summaries and self._entries[run_id].summary is not None]
        texts = [self._entries[run_id].summary for run_id in pending]
        for run_id, data in zip(pending, json.loads("[" + ",".join(texts) + "]"), strict=True):  # one parse
            self._summaries[run_id] = RunSummary.from_json(data)
        return [self._summaries[run_id] for run_id in self.run_ids() if run_id in self._summaries]

    def class_counts(self, run_ids: Iterable[str]) -> dict[str, ClassCounts]:
        """Per-class counts of the finished runs among ``run_ids`` (records are read where the index lacks them)."""
        wanted = [run_id for run_id in run_ids if run_id in self._entries]
        if any(not self._entries[run_id].counts_known for run_id in wanted):
            self._read_details()
        found = [run_id for run_id in wanted if self._entries[run_id].counts is not None]
        texts = [self._entries[run_id].counts for run_id in found]
        parsed = json.loads("[" + ",".join(texts) + "]")  # type: ignore[arg-type]  (one parse for all)
        return {run_id: ClassCounts(**data) for run_id, data in zip(found, parsed, strict=True)}

    def _read_details(self) -> None:
        """Summaries and per-class counts of every entry: from index.jsonl where it has them, else the record."""
        _details_from_file(self.runs_root / INDEX_DIR / INDEX_NAME, self._entries)
        for run_id, entry in self._entries.items():
            if entry.summary is None or not entry.counts_known:
                _details_from_record(self.runs_root, run_id, entry)


def _details_from_record(runs_root: Path, run_id: str, entry: _Entry) -> None:
    """An entry's summary and per-class counts from the record itself (an entry whose details the index lacks);
    a record gone since the index was checked leaves the summary unknown (None)."""
    from kdbench.tracking.record import read_record

    record = read_record(runs_root / run_id)
    entry.counts_known = True
    if record is None:
        return
    summary, counts = summarize(record)
    entry.summary = _dumps(summary.to_json())
    entry.counts = _dumps(counts.__dict__) if counts else None


def _details_from_file(path: Path, entries: dict[str, _Entry]) -> None:
    """Fill the entries lacking details from index.jsonl's detail lines that carry their record's sha256."""
    missing = {run_id: entry for run_id, entry in entries.items() if entry.summary is None or not entry.counts_known}
    if not missing:
        return
    with contextlib.suppress(OSError, ValueError), path.open("rb") as handle:
        handle.readline()
        _read_details(handle, missing)


def _read_details(handle: Any, entries: dict[str, _Entry]) -> None:
    """Detail lines ``S|C <TAB> run_id <TAB> sha256 <TAB> json`` into the entries whose record has that sha256."""
    for raw in handle:
        kind, run_id, sha256, text = raw.decode().rstrip("\n").split("\t", 3)
        entry = entries.get(run_id)
        if entry is None or entry.sha256 != sha256:
            continue
        if kind == "S" and entry.summary is None:
            entry.summary = text
        elif kind == "C" and not entry.counts_known:
            entry.counts, entry.counts_known = text, True
    for entry in entries.values():  # runs without per-class counts have no C line
        if not entry.counts_known and not _has_counts(entry.facts):
            entry.counts, entry.counts_known = None, True


_last_read: dict[str, tuple[Signature | None, _Snapshot]] = {}  # index file → its last parse in this process


def _snapshot(index_file: str, version: Signature | None, details: bool) -> _Snapshot:
    """index.jsonl parsed, or as parsed before by this process when it has not changed since (`--wait` polls)."""
    known = _last_read.get(index_file)
    if known is not None and version is not None and known[0] == version and (known[1].details or not details):
        return known[1]
    snapshot = _read_snapshot(Path(index_file), details)
    if snapshot.problem is None:
        _last_read[index_file] = (version, snapshot)
    return snapshot


def _read_snapshot(path: Path, details: bool) -> _Snapshot:
    """index.jsonl: the header line (each run's signature, sha256 and facts) and, with ``details``, the rest."""
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
            codes = header["codes"]
            entries = {}
            for run_id, (ino, size, mtime, sha256, status, code, teacher, model) in header["runs"].items():
                facts = RunFacts(status, codes[code] if code >= 0 else {}, teacher, model)
                entries[run_id] = _Entry((ino, size, mtime), sha256, facts, None, None, False)
            if details:
                _read_details(handle, entries)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            return _Snapshot(exists=True, problem=f"{type(error).__name__}: {error}"[:200])
    return _Snapshot(entries, exists=True, details=details)


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

    ``with_counts`` reads the summaries and per-class counts up front (the report; otherwise they are read when
    first asked for); ``update`` writes the merged index back (folding the journal) when this process gets the
    index lock and may write there.
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
        snapshot = _snapshot(index_file, version, with_counts)
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
                entries[run_id] = _new_entry(sig, digest, item.summary or {}, item.counts)
                changes.folded += 1
                changes.consumed.update(n.path for n in noted if n.written_ns <= item.written_ns)
                continue
        if sig is None and _signature(f"{root}/{run_id}/{_BACKUP}") is None:
            changes.consumed.update(item.path for item in noted if item.sha256 is None)
            if known is not None:  # the record is gone: moved aside on purpose (a tombstone) or deleted
                changes.folded += 1
                changes.removed += not _tombstoned(noted)
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
    return _new_entry(sig, digest, summary.to_json(), counts.__dict__ if counts else None)


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
        GridIndex(index_dir.parent, entries)._read_details()
        codes: dict[str, int] = {}
        runs = {}
        for run_id, entry in sorted(entries.items()):
            facts = entry.facts
            code = codes.setdefault(_dumps(facts.code), len(codes)) if facts.code else -1
            runs[run_id] = [*entry.sig, entry.sha256, facts.status, code, facts.teacher_sha256, facts.model_sha256]
        header = {"format": FORMAT, "version": VERSION, "codes": [json.loads(text) for text in codes], "runs": runs}
        lines = [_dumps(header)]
        lines += [f"S\t{run_id}\t{entry.sha256}\t{entry.summary}" for run_id, entry in sorted(entries.items())
                  if entry.summary is not None]
        lines += [f"C\t{run_id}\t{entry.sha256}\t{entry.counts}" for run_id, entry in sorted(entries.items())
                  if entry.counts is not None]
        try:
            atomic_write_bytes(index_dir / INDEX_NAME, ("\n".join(lines) + "\n").encode())
        except OSError:
            return
        for path in journal_files:
            path.unlink(missing_ok=True)
        _remove_stale_temp_files(index_dir / JOURNAL_DIR)
    finally:
        lock.release()


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
