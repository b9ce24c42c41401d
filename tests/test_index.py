"""The grid index (kdbench.tracking.index): always equal to a full scan of the records, whatever happened to them.

Also: status and report through the index equal status and report from a full scan; `kdbench status` reads a
grid validated before without importing torch, and prints what a full load prints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from report_support import dataset, make_record

from kdbench.config import parse_grid
from kdbench.grid import plan_cache
from kdbench.grid.expand import expand_grid, tuning_cells
from kdbench.grid.status import plan_runs, run_status
from kdbench.report.build import build_tables, stale_notes
from kdbench.report.frames import frames_from_index, frames_from_records
from kdbench.report.groups import RULES
from kdbench.tracking import index as grid_index
from kdbench.tracking.atomic import atomic_write_json
from kdbench.tracking.index import load_index, summarize
from kdbench.tracking.lock import LOCK_NAME, FileLock
from kdbench.tracking.record import BACKUP_NAME, RECORD_NAME, archive_record, read_record, read_records, write_record
from tests_support import REPO

METHODS = ["vanilla", "kd", "dkd", "rkd"]


def _scan(runs_root: Path) -> dict[str, str]:
    """The truth, as a full scan sees it: run id → its summary and per-class counts (as comparable JSON text)."""
    found = {}
    for record in read_records(runs_root):
        summary, counts = summarize(record)
        found[record.run_id] = json.dumps([summary.to_json(), counts.__dict__ if counts else None], sort_keys=True)
    return found


def _indexed(runs_root: Path, update: bool = True) -> dict[str, str]:
    index = load_index(runs_root, with_counts=True, update=update)
    counts = index.class_counts(index.run_ids())
    return {run_id: json.dumps([index.summary(run_id).to_json(),
                                counts[run_id].__dict__ if run_id in counts else None], sort_keys=True)
            for run_id in index.run_ids()}


def _record(rng: random.Random, seed: int, status: str = "done"):
    rho = rng.choice([None, 10.0])
    record = make_record(rng.choice(METHODS), seed, round(rng.uniform(40, 80), 3), data=dataset(rho), status=status,
                         seconds=tuple(rng.uniform(1, 5) for _ in range(rng.randint(1, 4))),
                         best_val=rng.choice([None, 61.5]), correct=[rng.randint(0, 5) for _ in range(3)],
                         total=[5, 5, 5], class_counts=[30, 10, 3])
    return record


def _by_hand(run_dir: Path, record) -> None:
    """A record put there without kdbench's writer (copied in, or a writer killed before its index entry)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RECORD_NAME).write_text(record.model_dump_json())


def test_index_equals_a_full_scan_after_random_events(tmp_path, caplog):
    """Property-style (fixed seed): completions, failures, reruns, kills mid-write, records added, edited, damaged
    and deleted by hand, stale compactions; after each event the index equals a full scan of the records, and
    a notice is printed exactly when something other than kdbench's writers changed the records."""
    rng = random.Random(20240615)
    runs_root = tmp_path / "runs"
    runs_root.mkdir()
    seeds = list(range(14))
    by_seed: dict[int, str] = {}  # seed → the run folder used for it
    old_snapshot: bytes | None = None
    events_seen: set[str] = set()
    owed: set[str] = set()  # runs changed by hand: a notice is owed until a reader rewrites the index (or kdbench
    unsure = False  # writes the run again); unsure: an old index put back, a notice may or may not be due
    for step in range(250):
        event = rng.choice(["complete", "complete", "fail", "rerun", "kill_mid_write", "kill_before_index",
                            "add_by_hand", "edit_by_hand", "damage", "delete", "stale_compaction", "journal_torn"])
        seed = rng.choice(seeds)
        run_dir = runs_root / by_seed[seed] if seed in by_seed else None
        current = read_record(run_dir) if run_dir is not None else None
        by_hand, name = False, run_dir.name if run_dir is not None else None
        if event in ("complete", "fail"):
            if current is not None and current.status == "done":
                continue
            if current is not None:
                archive_record(run_dir, "failed")
            record = _record(rng, seed, "done" if event == "complete" else "failed")
            run_dir = runs_root / record.run_id if run_dir is None else run_dir
            write_record(run_dir, record.model_copy(update={"run_id": run_dir.name}))
            owed.discard(run_dir.name)
        elif event == "rerun":
            if current is None:
                continue
            archive_record(run_dir, "stale")
            write_record(run_dir, _record(rng, seed).model_copy(update={"run_id": run_dir.name}))
            owed.discard(run_dir.name)
        elif event == "kill_mid_write":  # a writer killed inside an atomic write leaves only its temporary file
            if run_dir is None:
                continue
            (run_dir / f".{RECORD_NAME}.x{step}.tmp").write_text('{"run_id": "trunc')
        elif event == "kill_before_index":  # record and backup written, the journal entry never
            if run_dir is None or (current is not None and current.status == "done"):
                continue
            record = _record(rng, seed).model_copy(update={"run_id": run_dir.name})
            atomic_write_json(run_dir / RECORD_NAME, record.model_dump(mode="json"))
            atomic_write_json(run_dir / BACKUP_NAME, record.model_dump(mode="json"))
            by_hand = True
        elif event == "add_by_hand":
            if run_dir is not None:
                continue
            record = _record(rng, seed)
            _by_hand(runs_root / record.run_id, record)
            run_dir, by_hand = runs_root / record.run_id, True
        elif event == "edit_by_hand":
            if current is None:
                continue
            _by_hand(run_dir, current.model_copy(update={"reason": f"edited at step {step}"}))
            by_hand = True
        elif event == "damage":  # the backup (if any) restores it, with a warning of its own
            if current is None:
                continue
            (run_dir / RECORD_NAME).write_text('{"run_id": ')
            by_hand = True
        elif event == "delete":
            if run_dir is None:
                continue
            shutil.rmtree(run_dir)
            run_dir, by_hand = None, current is not None
            unsure = unsure or current is None
        elif event == "stale_compaction":  # a slow compactor (no working flock) overwrites a newer index
            snapshot = runs_root / grid_index.INDEX_DIR / grid_index.INDEX_NAME
            if old_snapshot is None or not snapshot.is_file():
                old_snapshot = snapshot.read_bytes() if snapshot.is_file() else None
                continue
            snapshot.write_bytes(old_snapshot)
            old_snapshot, unsure = None, True
        elif event == "journal_torn":
            journal = runs_root / grid_index.INDEX_DIR / grid_index.JOURNAL_DIR
            journal.mkdir(parents=True, exist_ok=True)
            (journal / f".x.{step}.json.abc.tmp").write_text("{")
        if run_dir is not None:
            by_seed[seed] = run_dir.name
        else:
            by_seed.pop(seed, None)
        events_seen.add(event)
        if by_hand:
            owed.add(run_dir.name if run_dir is not None else name)
        update = rng.random() < 0.7
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kdbench"):
            indexed = _indexed(runs_root, update=update)
        notices = [r.getMessage() for r in caplog.records if r.getMessage().startswith("notice:")]
        assert indexed == _scan(runs_root), f"step {step}: {event}"
        assert len(notices) <= 1, notices
        if not unsure:
            assert len(notices) == int(bool(owed)), f"step {step}: {event}: {notices}"
        if update:
            owed, unsure = set(), False
    assert events_seen >= {"complete", "fail", "rerun", "kill_before_index", "add_by_hand", "edit_by_hand",
                           "damage", "delete", "stale_compaction"}
    assert len(_scan(runs_root)) >= 5


def test_a_writer_killed_between_index_entry_and_record(tmp_path, caplog):
    """A real SIGKILL (failpoint) after the index heard of a record and before the record was written: the entry
    matches nothing, and a record written later in that folder by hand is found and read."""
    runs_root = tmp_path / "runs"
    first = make_record("kd", 0, 70.0)
    write_record(runs_root / first.run_id, first)
    load_index(runs_root)  # an index exists
    second = make_record("kd", 1, 71.0)
    code = ("import sys; sys.path.insert(0, 'tests'); from pathlib import Path; from report_support import make_record;"
            "from kdbench.tracking.record import write_record; r = make_record('kd', 1, 71.0);"
            f"write_record(Path({str(runs_root)!r}) / r.run_id, r)")
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                            env={**os.environ, "KDBENCH_FAILPOINT": "after-index-entry"})
    assert killed.returncode == -9
    assert not (runs_root / second.run_id / RECORD_NAME).exists()
    with caplog.at_level(logging.WARNING, logger="kdbench"):
        assert _indexed(runs_root) == _scan(runs_root) and second.run_id not in _indexed(runs_root)
        assert not caplog.records
        _by_hand(runs_root / second.run_id, second.model_copy(update={"reason": "not what the index heard"}))
        assert _indexed(runs_root) == _scan(runs_root)
    assert [r.getMessage() for r in caplog.records] == [
        f"notice: the index of {runs_root} disagreed with the records (1 record(s) added); those entries were "
        "rebuilt from the records"]


def _write_many(runs_root: str, offset: int) -> None:
    for seed in range(offset, offset + 15):
        record = make_record("kd", seed, 60.0 + seed)
        write_record(Path(runs_root) / record.run_id, record)


def test_concurrent_writers_and_compacting_readers(tmp_path, caplog):
    """Four processes write records while this one reads (and compacts) the index: no update is lost."""
    import multiprocessing

    runs_root = tmp_path / "runs"
    runs_root.mkdir()
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_many, args=(str(runs_root), 100 * i)) for i in range(4)]
    for writer in writers:
        writer.start()
    with caplog.at_level(logging.WARNING, logger="kdbench"):
        while any(writer.is_alive() for writer in writers):
            load_index(runs_root)
        for writer in writers:
            writer.join()
            assert writer.exitcode == 0
        assert _indexed(runs_root) == _scan(runs_root)
    assert len(_scan(runs_root)) == 60
    assert not [r for r in caplog.records if "notice" in r.getMessage()]
    assert not list((runs_root / grid_index.INDEX_DIR / grid_index.JOURNAL_DIR).iterdir())  # all folded


def test_missing_or_unreadable_index_is_rebuilt_with_one_notice(tmp_path, caplog):
    runs_root = tmp_path / "runs"
    for seed in range(3):
        _by_hand(runs_root / f"run{seed}", make_record("kd", seed, 60.0).model_copy(update={"run_id": f"run{seed}"}))
    with caplog.at_level(logging.WARNING, logger="kdbench"):
        assert _indexed(runs_root) == _scan(runs_root)
        (runs_root / grid_index.INDEX_DIR / grid_index.INDEX_NAME).write_text("{not json")
        assert _indexed(runs_root) == _scan(runs_root)
        assert _indexed(runs_root) == _scan(runs_root)  # repaired: quiet now
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        f"notice: no index in {runs_root}",
        f"notice: unreadable index {runs_root / '.index' / 'index.jsonl'} (JSONDecodeError: Expecting property "
        "name enclosed in double quotes: line 1 column 2 (char 1))"]


def test_names_mirrored_without_imports():
    """The index and status name files as the modules they avoid importing do."""
    from kdbench.engine.checkpoint import CHECKPOINT_NAMES
    from kdbench.grid import status

    assert status.CHECKPOINT_NAMES == CHECKPOINT_NAMES
    assert (grid_index._RECORD, grid_index._BACKUP) == (RECORD_NAME, BACKUP_NAME)


# --- status and report: through the index = from a full scan ----------------------------------------------------

GRID = {
    "name": "idx",
    "datasets": [{"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 8,
                  "synthetic_test_per_class": 4},
                 {"name": "synthetic", "synthetic_classes": 4, "synthetic_train_per_class": 8,
                  "synthetic_test_per_class": 4, "long_tail": {"profile": "exp", "imbalance_ratio": 4}}],
    "pairs": [{"teacher": "cnn_small", "student": "cnn_small"}],
    "methods": ["vanilla", "kd", {"name": "kd", "label": "kd_T2", "params": {"temperature": 2.0}}],
    "seeds": [0, 1, 2],
    "recipe": {"epochs": 2, "batch_size": 8, "milestones": []},
    "executor": {"kind": "local", "device": "cpu"},
}


def _fake_result(spec, rng: random.Random, status: str, code: dict[str, str], teacher_sha: str = "a" * 64):
    """A record of ``spec`` as the engine writes one (no training)."""
    from kdbench.tracking.record import EpochLog, EvalResult, RunRecord, TeacherInfo

    correct, total = [rng.randint(0, 4) for _ in range(4)], [4] * 4
    final = EvalResult(top1=100.0 * sum(correct) / 16, top5=100.0, balanced_acc=50.0, loss=1.0, num_images=16,
                       per_class_correct=correct, per_class_total=total) if status == "done" else None
    history = [EpochLog(epoch=e + 1, lr=0.1, train={"ce": 1.0, "total": 1.0}, test_top1=40.0 + e, test_top5=90.0,
                        seconds=rng.uniform(1, 3), images_per_s=rng.uniform(100, 200)) for e in range(2)]
    return RunRecord(run_id=spec.run_id, grid="idx", status=status, reason=None if status == "done" else "boom",
                     stage=spec.stage, method=spec.method, label=spec.display_method, arch=spec.arch, pair=spec.pair,
                     dataset=spec.dataset.variant, seed=spec.seed, subset_seed=0, spec=spec.model_dump(mode="json"),
                     config_sha256="0" * 64, code=code, num_classes=4, class_counts=[150, 60, 30, 10], final=final,
                     history=history if status == "done" else [], model_sha256="a" * 64,
                     teacher=TeacherInfo(run_id=spec.teacher.run_id, arch="cnn_small", sha256=teacher_sha, top1=50.0)
                     if spec.teacher else None)


@pytest.fixture
def planned_grid(tmp_path):
    """A grid whose runs are done, stale (code or teacher weights), failed, running, interrupted and new."""
    from kdbench.codeid import code_identity

    grid = parse_grid({**GRID, "output": str(tmp_path / "results")})
    specs = expand_grid(grid)
    runs_root = tmp_path / "results" / "idx" / "runs"
    rng = random.Random(3)
    today = {method: code_identity(method) for method in ("vanilla", "kd")}
    held = []
    for i, spec in enumerate(specs):
        kind = i % 7
        run_dir = runs_root / spec.run_id
        code = today[spec.method] if kind != 1 else {**today[spec.method], "method": "0" * 64}
        if kind in (0, 1, 2):
            write_record(run_dir, _fake_result(spec, rng, "done", code, "b" * 64 if kind == 2 else "a" * 64))
        elif kind == 3:
            write_record(run_dir, _fake_result(spec, rng, "failed", code))
        elif kind == 4:
            lock = FileLock(run_dir / LOCK_NAME)
            assert lock.acquire()
            held.append(lock)
        elif kind == 5:
            run_dir.mkdir(parents=True)
            (run_dir / "checkpoint.pt").write_bytes(b"x")
    yield grid, specs, runs_root
    for lock in held:
        lock.release()


def test_status_from_the_index_equals_status_from_a_full_scan(planned_grid):
    from kdbench.codeid import code_identity, stale_reasons

    grid, specs, runs_root = planned_grid
    expected = []
    for spec in specs:
        status, record, holder = run_status(runs_root / spec.run_id)
        stale = []
        if status == "done":
            teacher = read_record(runs_root / spec.teacher.run_id) if spec.teacher else None
            stale = stale_reasons(record, teacher, code_identity(spec.method))
        expected.append((spec.run_id, status, holder, stale, record.reason if record else None))
    planned = plan_runs(specs, runs_root)
    assert [(r.spec.run_id, r.status, r.holder, r.stale, r.summary.reason if r.summary else None)
            for r in planned] == expected
    assert {status for _, status, *_ in expected} == {"done", "failed", "running", "interrupted", "new"}
    assert any(stale == ["method code"] for *_, stale, _ in expected)
    assert any(stale == ["teacher weights"] for *_, stale, _ in expected)
    assert all(r.record == read_record(runs_root / r.spec.run_id) for r in planned)  # read when asked for


def test_report_from_the_index_equals_report_from_a_full_scan(planned_grid):
    _, _, runs_root = planned_grid
    records = read_records(runs_root)
    scanned = frames_from_records(records)
    indexed = frames_from_index(load_index(runs_root, with_counts=True))
    for name in ("runs", "per_class", "curves"):
        pd.testing.assert_frame_equal(getattr(indexed, name), getattr(scanned, name), check_exact=True)
    tables = frames_from_index(load_index(runs_root, with_counts=True), curves=False)
    assert tables.curves.empty
    a, b = build_tables(tables, RULES["default"]), build_tables(scanned, RULES["default"])
    for left, right in zip(a.tables, b.tables, strict=True):
        pd.testing.assert_frame_equal(left.data, right.data, check_exact=True)
        pd.testing.assert_frame_equal(left.display, right.display, check_exact=True)
    index = load_index(runs_root)
    assert stale_notes(index.summaries()) == stale_notes(records) != []


def test_epoch_totals_match_the_history():
    totals = grid_index.epoch_totals([2.0, 4.0], [100.0, 200.0], [50.0, 52.5])
    assert totals == {"epochs": 2, "seconds_per_epoch": 3.0, "images_per_s": 1000.0 / 6.0, "best_test_top1": 52.5,
                      "max_epoch_seconds": 4.0}
    empty = grid_index.epoch_totals([], [], [])
    assert empty["epochs"] == 0 and math.isnan(empty["seconds_per_epoch"]) and empty["max_epoch_seconds"] is None


# --- the plan cache and `kdbench status` without torch -----------------------------------------------------------

@pytest.mark.parametrize("name", ["demo.yaml", "trg_cifar100_lt.yaml", "cifar100.yaml"])
def test_cached_specs_and_tuning_cells_equal_a_fresh_expansion(name, tmp_path):
    from kdbench.config import load_grid

    cifar = tmp_path / "cifar-100-python"
    cifar.mkdir()
    for part in ("train", "test", "meta"):
        (cifar / part).write_bytes(b"")  # plan-time checks look for the files, they do not read them
    grid = load_grid(REPO / "experiments" / name, data_root=str(tmp_path))
    specs = expand_grid(grid)
    again = plan_cache.specs_from_json(json.loads(json.dumps(plan_cache.specs_to_json(specs))))
    assert again == specs and [s.run_id for s in again] == [s.run_id for s in specs]
    cells = tuning_cells(grid)
    back = plan_cache.cells_from_json(json.loads(json.dumps(plan_cache.cells_to_json(cells))))
    assert back == cells


def _status(grid_file: Path, cache: Path) -> subprocess.CompletedProcess:
    """`kdbench status`, reporting on stderr whether torch (or pandas, MLflow) got imported."""
    code = ("import sys; from kdbench.cli import main; code = main(sys.argv[1:]); "
            "print('imported:', sorted(m for m in ('torch', 'pandas', 'mlflow', 'matplotlib') if m in sys.modules), "
            "file=sys.stderr); sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, "status", str(grid_file)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "KDBENCH_CACHE_DIR": str(cache)}, timeout=300)


def test_status_reads_a_grid_validated_before_without_torch(planned_grid, tmp_path):
    grid, _, _ = planned_grid
    grid_file = tmp_path / "idx.yaml"
    grid_file.write_text(yaml.safe_dump({**GRID, "output": str(tmp_path / "results")}))
    cache = tmp_path / "cache"
    first, second = _status(grid_file, cache), _status(grid_file, cache)
    assert first.returncode == second.returncode == 1  # failed runs
    assert "imported: ['torch']" in first.stderr  # validated and expanded in full, then cached
    assert "imported: []" in second.stderr, second.stderr
    assert first.stdout == second.stdout
    assert "stale" in second.stdout and "running" in second.stdout and "interrupted" in second.stdout
    grid_file.write_text(grid_file.read_text().replace("seeds:\n- 0\n- 1\n- 2", "seeds:\n- 0\n- 1"))
    third = _status(grid_file, cache)  # an edited grid is validated in full again
    assert "imported: ['torch']" in third.stderr and third.stdout != second.stdout


def test_help_imports_nothing_heavy():
    code = ("import sys; from kdbench.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'pydantic', 'pandas', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_deferred_data_package_is_the_normal_package_once_used():
    code = ("import sys\nfrom kdbench.lightimport import defer_package_init\n"
            "defer_package_init('kdbench.data', ('kdbench.data.spec',))\n"
            "import kdbench.config, kdbench.runspec\nassert 'torch' not in sys.modules\n"
            "from kdbench.data.sources import get_source\nimport kdbench.data as data\n"
            "assert get_source('cifar100').name == 'cifar100' and data.spec is sys.modules['kdbench.data.spec']\n"
            "assert data.DatasetSpec is kdbench.config.DatasetSpec\n"
            "assert data.sources is sys.modules['kdbench.data.sources']\n"
            "assert data.sources.__spec__.loader.__class__.__name__ == 'SourceFileLoader'\nprint('ok')")
    out = subprocess.run([sys.executable, "-W", "error::ImportWarning", "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert out.stdout.strip() == "ok", out.stderr
