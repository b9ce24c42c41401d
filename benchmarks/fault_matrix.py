"""Fault matrix: inject each fault into a tiny real grid, recover as a user would, and measure what it cost.

    python benchmarks/fault_matrix.py [--out DIR] [--only NAME,...]

Everything is a real `python -m kdbench ...` process on real files (no mocks). The grid: dataset `digits`, pair
cnn_small→cnn_small, methods vanilla and kd, seed 0, 3 epochs, batch 64, MLflow tracking off unless the fault is
about MLflow (1 teacher + 2 students).

The grid is first trained once, uninterrupted, as the reference (its numbers: final per-class correct counts and the
per-epoch test top-1 of each record). Each fault then gets a fresh results folder, the fault is injected, and the
grid is recovered with the plain commands a user would type (`kdbench run GRID`, `kdbench sync GRID`; freeing the
disk or remounting it read-write for resource faults) until it is complete. Columns of the printed markdown table:

- runs lost: reference runs that are not done with numbers identical to the reference after recovery;
- runs trained twice: runs whose log.txt shows the final epoch line ("epoch 3/3") more than once;
- epochs redone: epoch lines ("| epoch N/3") in all log.txt files minus runs × 3 (an epoch is logged just before
  its checkpoint is written, so an epoch trained and then lost with its checkpoint is counted); a forward gap in a
  run's epoch numbers counts the missing epochs as trained once;
- training minutes lost: epochs redone × the mean epoch seconds of the reference records (history[].seconds) / 60.
  An epoch in flight when a process dies has written no log line and is not counted (at most one per kill);
- bad file named in one line: for faults that damage a file, exactly one output line (stdout + stderr of the
  recovery commands) names its path as unreadable (a further line saying it was restored from its backup is
  allowed); "—" for faults that damage no file;
- exit codes: of every kdbench command of the fault, in order (-9 = SIGKILL).

Any "Traceback" in any command's output is added to the outcome. Faults this machine cannot inject (mounting a
tmpfs needs root) are skipped with the reason printed. The command outputs are kept under --out/<fault>/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 3
GRID = {
    "name": "faults",
    "datasets": [{"name": "digits"}],
    "pairs": [{"teacher": "cnn_small", "student": "cnn_small"}],
    "methods": ["vanilla", "kd"],
    "seeds": [0],
    "recipe": {"epochs": EPOCHS, "batch_size": 64},
    "executor": {"kind": "local", "device": "cpu"},
    "tracking": {"mlflow": False},
}
EPOCH_LINE = re.compile(rf"\| epoch (\d+)/{EPOCHS} ")
FINAL_EPOCH = f"epoch {EPOCHS}/{EPOCHS} "
TIMEOUT = 900.0

# A plugin method whose loss is vanilla's (cross-entropy, weight 1): its numbers are compared to vanilla's.
PLUGIN = '''
import torch.nn.functional as F
from kdbench.loss import DistillLoss, Needs, register_method

@register_method("plug")
class Plug(DistillLoss):
    """A plugin method for the stale-code fault."""
    paper = "Plugin, 2026"
    needs = Needs(student_taps=("logits",), teacher_taps=())
    defaults = {"ce_weight": 1.0}
    def forward(self, student, teacher, batch, progress):
        return {"ce": self.hparams["ce_weight"] * F.cross_entropy(student["logits"], batch["target"])}
'''


class Skip(Exception):
    """The machine cannot inject this fault; the message says why."""


# ---------------------------------------------------------------------------------------------------------------
# Processes, files, records


def write_grid(folder: Path, results: Path, **changes) -> Path:
    """grid.yaml in ``folder`` whose results go to ``results``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump({**GRID, "output": str(results), **changes}, sort_keys=False))
    return path


@dataclass
class Case:
    """One fault's folder, its kdbench commands (exit codes and outputs kept) and what it found."""

    name: str
    folder: Path
    codes: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # stdout + stderr of each command, in order
    _count: int = 0

    def _files(self, args: tuple[str, ...]) -> tuple[Path, Path]:
        self._count += 1
        stem = self.folder / f"{self._count:02d}-{args[0]}"
        return stem.with_suffix(".out"), stem.with_suffix(".err")

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        """`python -m kdbench ARGS` in the background; output to files (a full pipe would block it)."""
        out, err = self._files(args)
        # SIGINT back to its default: a shell starts background jobs with SIGINT ignored, the child would inherit
        # that, and Python would then never raise KeyboardInterrupt (the SIGINT fault would test nothing).
        # One torch thread everywhere: a pool worker trains with one, and the thread count changes the gradients'
        # summation order, so the reference and every process must agree for "identical numbers" to mean anything.
        process = subprocess.Popen([sys.executable, "-m", "kdbench", *args], cwd=REPO, stdout=out.open("w"),
                                   stderr=err.open("w"), text=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        process.files = (out, err)  # type: ignore[attr-defined]
        return process

    def finish(self, process: subprocess.Popen, timeout: float = TIMEOUT) -> tuple[int, str, str]:
        """Wait for a started command: (exit code, stdout, stderr); both kept in the case."""
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out, err = (path.read_text() for path in process.files)  # type: ignore[attr-defined]
        self.codes.append(process.returncode)
        self.outputs.append(out + err)
        return process.returncode, out, err

    def run(self, *args: str, env: dict | None = None) -> tuple[int, str, str]:
        """`python -m kdbench ARGS`, waited for."""
        return self.finish(self.start(*args, env=env))

    def tracebacks(self) -> int:
        return sum(text.count("Traceback") for text in self.outputs)

    def lines_naming(self, path: Path) -> list[str]:
        return [line for text in self.outputs for line in text.splitlines() if str(path) in line]


def read_json_records(runs_root: Path) -> dict[str, dict]:
    """run id → record (as JSON) of every run folder with a readable record.json."""
    found = {}
    for path in sorted(runs_root.glob("*/record.json")):
        with contextlib.suppress(OSError, ValueError):
            found[path.parent.name] = json.loads(path.read_text())
    return found


def key_of(record: dict, aliases: dict[str, str]) -> tuple:
    """What identifies a run across grids and folders: stage and method (a plugin may stand for a built-in)."""
    return record["stage"], aliases.get(record["label"], record["label"])


def numbers(record: dict) -> tuple:
    """What must be identical to the reference: final per-class correct counts, per-epoch test top-1."""
    final = record.get("final") or {}
    return tuple(final.get("per_class_correct") or ()), tuple(round(e["test_top1"], 6) for e in record["history"])


def complete(runs_root: Path, expected: int) -> bool:
    records = read_json_records(runs_root)
    return len(records) == expected and all(r["status"] == "done" for r in records.values())


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen | None = None) -> bool:
    """Poll ``predicate``; False if ``process`` ended first or ``timeout`` passed (``what`` names it in errors)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline or (process is not None and process.poll() is not None):
            return predicate()
        time.sleep(0.05)
    return True


def recover(case: Case, grid: Path, runs_root: Path, attempts: int = 3) -> None:
    """`kdbench run GRID` until the grid is complete (at most ``attempts`` times)."""
    for _ in range(attempts):
        if complete(runs_root, 3):
            return
        case.run("run", str(grid))


def teacher_id(runs_root: Path) -> str | None:
    return next((run_id for run_id, r in read_json_records(runs_root).items() if r["stage"] == "teacher"), None)


def named_once(case: Case, path: Path) -> str:
    """'yes' when exactly one line names ``path`` as unreadable and no other line names it (but a restore line)."""
    lines = case.lines_naming(path)
    unreadable = [line for line in lines if "unreadable" in line]
    others = [line for line in lines if "unreadable" not in line and "restored from its backup" not in line]
    return "yes" if len(unreadable) == 1 and not others else f"no ({len(unreadable)} lines)"


def mount_tmpfs(path: Path, size: str = "16m") -> None:
    if os.geteuid() != 0:
        raise Skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise Skip(f"mount -t tmpfs failed: {result.stderr.strip()}")


def keep(runs: Path, case: Case) -> Path:
    """A copy of a runs folder on a tmpfs, for measuring after the tmpfs is unmounted."""
    copy = case.folder / "runs-kept"
    if runs.is_dir():
        shutil.copytree(runs, copy)
    return copy


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def mlflow_check(results_root: Path, experiment: str, runs_root: Path) -> str:
    """'' when the MLflow store equals the records (one FINISHED run per record id, final_top1 equal), else why not."""
    from mlflow.tracking import MlflowClient

    records = read_json_records(runs_root)
    client = MlflowClient(tracking_uri=f"sqlite:///{results_root / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return f"no experiment '{experiment}'"
    runs = client.search_runs([found.experiment_id], max_results=10_000)
    finished = [run for run in runs if run.info.status == "FINISHED"]
    ids = sorted(run.data.tags.get("kdbench.run_id", "") for run in finished)
    problems = []
    if ids != sorted(records):
        problems.append(f"{len(finished)} FINISHED runs for {len(records)} records")
    for run in finished:
        record = records.get(run.data.tags.get("kdbench.run_id", ""))
        if record is not None and run.data.metrics.get("final_top1") != record["final"]["top1"]:
            problems.append(f"final_top1 of {record['run_id']} differs")
    if len(runs) != len(finished):
        problems.append(f"{len(runs) - len(finished)} runs not FINISHED")
    return "; ".join(problems)


# ---------------------------------------------------------------------------------------------------------------
# The faults: each returns (outcome, bad file named, [(runs root, plugin aliases)]) after recovering the grid.

Result = tuple[str, str, list[tuple[Path, dict[str, str]]]]


def fault_kill9(case: Case) -> Result:
    """kill -9 right after epoch 2's checkpoint of the first run, then `kdbench run`."""
    grid, runs = write_grid(case.folder, case.folder / "results"), case.folder / "results/faults/runs"
    code, _, _ = case.run("run", str(grid), env={"KDBENCH_FAILPOINT": "after-checkpoint:2"})
    recover(case, grid, runs)
    resumed = sum("resuming after epoch 2" in text for text in case.outputs)
    return f"killed ({code}); resumed after epoch 2: {'yes' if resumed else 'no'}", "—", [(runs, {})]


def fault_sigint(case: Case) -> Result:
    """SIGINT to a single-process `kdbench run` once the first checkpoint file appears, then `kdbench run`."""
    grid, runs = write_grid(case.folder, case.folder / "results"), case.folder / "results/faults/runs"
    process = case.start("run", str(grid))
    appeared = wait_for(lambda: any(runs.glob("*/checkpoint.pt")), 300, "the first checkpoint", process)
    process.send_signal(signal.SIGINT)
    code, _, err = case.finish(process)
    recover(case, grid, runs)
    said = "interrupted; re-run" in err
    resumed = re.search(r"resuming after epoch (\d+)", "\n".join(case.outputs))
    return (f"exit {code}{' (130 expected)' if code != 130 else ''}{'' if appeared else ' (no checkpoint seen)'}; "
            f"message {'yes' if said else 'no'}; "
            f"{'resumed after epoch ' + resumed.group(1) if resumed else 'not resumed'}"), "—", [(runs, {})]


def fault_concurrent(case: Case) -> Result:
    """Two `kdbench run` of the same grid started together."""
    grid, runs = write_grid(case.folder, case.folder / "results"), case.folder / "results/faults/runs"
    first, second = case.start("run", str(grid)), case.start("run", str(grid))
    case.finish(first)
    case.finish(second)
    busy = sum("is running elsewhere:" in text for text in case.outputs)
    done_by_two = complete(runs, 3)
    recover(case, grid, runs)
    return (f"{busy} 'running elsewhere' outputs; complete after the pair: {'yes' if done_by_two else 'no'}",
            "—", [(runs, {})])


def _done_copy(case: Case, reference: Path) -> tuple[Path, Path]:
    results = case.folder / "results"
    shutil.copytree(reference / "results", results)
    return write_grid(case.folder, results), results / "faults/runs"


def _a_student(runs: Path) -> Path:
    return next(runs / rid for rid, r in read_json_records(runs).items() if r["stage"] == "student")


def fault_record_truncated(case: Case, reference: Path) -> Result:
    """A done run's record.json truncated to half (its backup intact), then `kdbench run`."""
    grid, runs = _done_copy(case, reference)
    path = _a_student(runs) / "record.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    recover(case, grid, runs)
    restored = any(f"{path} restored from its backup" in text for text in case.outputs)
    ran = re.findall(r"ran (\d+) runs", "\n".join(case.outputs))
    return f"restored from backup: {'yes' if restored else 'no'}; ran {'+'.join(ran)} runs", named_once(case, path), \
        [(runs, {})]


def fault_record_and_backup(case: Case, reference: Path) -> Result:
    """DOUBLE FAULT: a done run's record.json and record.backup.json both destroyed, then `kdbench run`."""
    grid, runs = _done_copy(case, reference)
    record, backup = _a_student(runs) / "record.json", _a_student(runs) / "record.backup.json"
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    backup.write_bytes(b"\0garbage" * 8)
    recover(case, grid, runs)
    ran = re.findall(r"ran (\d+) runs", "\n".join(case.outputs))
    backup_lines = case.lines_naming(backup)
    named = f"record {named_once(case, record)}; backup {'yes' if backup_lines else 'no'}"
    return f"double fault: the run trained again (ran {'+'.join(ran)})", named, [(runs, {})]


def fault_checkpoint_truncated(case: Case) -> Result:
    """An interrupted run's checkpoint.pt (epoch 2) truncated to half, then `kdbench run`."""
    grid, runs = write_grid(case.folder, case.folder / "results"), case.folder / "results/faults/runs"
    case.run("run", str(grid), env={"KDBENCH_FAILPOINT": "after-checkpoint:2"})
    tid = teacher_id(runs) or next(p.name for p in runs.iterdir() if (p / "checkpoint.pt").is_file())
    path = runs / tid / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    recover(case, grid, runs)
    previous = any("resuming after epoch 1 from the previous checkpoint" in text for text in case.outputs)
    return (f"resumed from the previous checkpoint (epoch 1): {'yes' if previous else 'no'}; epoch 2 trained again",
            named_once(case, path), [(runs, {})])


class _Planted:
    """Unpickling it runs `touch MARKER` (what torch.load with weights_only=False would execute)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def fault_planted_pickle(case: Case, reference: Path) -> Result:
    """A planted checkpoint.pt in a fresh results folder (unpickling it would create a marker file); `kdbench run`."""
    grid, runs = write_grid(case.folder, case.folder / "results"), case.folder / "results/faults/runs"
    tid = teacher_id(reference / "results/faults/runs")  # run ids do not depend on the results folder
    marker = case.folder / "planted-code-ran"
    (runs / tid).mkdir(parents=True)
    with (runs / tid / "checkpoint.pt").open("wb") as handle:
        pickle.dump({"state": {"epoch": 2}, "student": _Planted(marker)}, handle)
    recover(case, grid, runs)
    scratch = any("training from scratch" in text for text in case.outputs)
    return (f"marker {'CREATED' if marker.exists() else 'absent'}; from scratch: {'yes' if scratch else 'no'}",
            named_once(case, runs / tid / "checkpoint.pt"), [(runs, {})])


def fault_disk_full(case: Case) -> Result:
    """Results on a 16 MB tmpfs filled after the teacher's record appears; filler removed; `kdbench run`."""
    small = case.folder / "small"
    mount_tmpfs(small)
    try:
        grid, runs = write_grid(case.folder, small / "results"), small / "results/faults/runs"
        process = case.start("run", str(grid))
        wait_for(lambda: any(runs.glob("*/record.json")), 300, "the teacher's record", process)
        with (small / "filler").open("wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * (1 << 16))
                    filler.flush()
            except OSError:
                pass
        code, _, err = case.finish(process)
        enospc = [line for line in err.splitlines() if "ENOSPC" in line]
        recorded = len(read_json_records(runs))
        started = len([p for p in runs.iterdir() if p.is_dir()])
        (small / "filler").unlink()
        recover(case, grid, runs)
        queue = "queue kept" if recorded == 1 and started == 2 else f"{recorded} records, {started} run dirs"
        return (f"{len(enospc)} ENOSPC line{'s' if len(enospc) != 1 else ''}, exit {code}, {queue}; completed",
                "—", [(keep(runs, case), {})])
    finally:
        umount(small)


def fault_read_only(case: Case) -> Result:
    """The results root on a tmpfs remounted read-only: `kdbench run`; remounted rw: `kdbench run`."""
    small = case.folder / "small"
    mount_tmpfs(small)
    try:
        grid, runs = write_grid(case.folder, small / "results"), small / "results/faults/runs"
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        code, _, err = case.run("run", str(grid))
        erofs = [line for line in err.splitlines() if "EROFS" in line]
        subprocess.run(["mount", "-o", "remount,rw", str(small)], check=True)
        recover(case, grid, runs)
        return f"{len(erofs)} EROFS line{'s' if len(erofs) != 1 else ''}, exit {code}; rw: completed", "—", \
            [(keep(runs, case), {})]
    finally:
        umount(small)


def fault_mlflow_kill(case: Case) -> Result:
    """Tracking on; SIGKILL between the first record write and its MLflow close; `kdbench sync`, `kdbench run`."""
    results = case.folder / "results"
    grid, runs = write_grid(case.folder, results, tracking={"mlflow": True}), results / "faults/runs"
    case.run("run", str(grid), env={"KDBENCH_FAILPOINT": "after-record"})
    _, first_sync, _ = case.run("sync", str(grid))
    recover(case, grid, runs)
    _, last_sync, _ = case.run("sync", str(grid))
    problems = mlflow_check(results, "faults", runs)
    summary = re.search(r"MLflow sync: (.*)", first_sync)
    quiet = "0 created, 0 completed" in last_sync
    return (f"sync: {summary.group(1) if summary else 'no summary'}; MLflow = records: "
            f"{'yes' if not problems else 'NO (' + problems + ')'}; 2nd sync no-op: {'yes' if quiet else 'NO'}",
            "—", [(runs, {})])


def fault_mlflow_two_grids(case: Case) -> Result:
    """Two grids (different names) sharing one fresh results root, tracking on, started together."""
    results = case.folder / "results"
    grids = [write_grid(case.folder / name, results, name=name, tracking={"mlflow": True}) for name in ("ga", "gb")]
    processes = [case.start("run", str(grid)) for grid in grids]
    for process in processes:
        case.finish(process)
    for grid, name in zip(grids, ("ga", "gb"), strict=True):
        recover(case, grid, results / name / "runs")
    problems = {name: mlflow_check(results, name, results / name / "runs") for name in ("ga", "gb")}
    bad = {name: why for name, why in problems.items() if why}
    return ("both fully tracked" if not bad else f"NOT fully tracked: {bad}"), "—", \
        [(results / name / "runs", {}) for name in ("ga", "gb")]


def fault_stale_code(case: Case) -> Result:
    """A plugin method trained, its file edited: `kdbench run` warns; `kdbench run --rerun stale` retrains it."""
    plugin = case.folder / "plug.py"
    case.folder.mkdir(parents=True, exist_ok=True)
    plugin.write_text(PLUGIN)
    grid = write_grid(case.folder, case.folder / "results", methods=["plug", "kd"], plugins=["plug.py"])
    runs = case.folder / "results/faults/runs"
    case.run("run", str(grid))
    plugin.write_text(PLUGIN.replace("* F.cross_entropy", "* 1.0 * F.cross_entropy"))
    _, again, _ = case.run("run", str(grid))
    warned = again.count("done runs of 'plug' were trained by other code")
    nothing = "ran 0 runs" in again
    _, retrained, _ = case.run("run", str(grid), "--rerun", "stale")
    ran = re.search(r"ran (\d+) runs", retrained)
    archived = [json.loads(p.read_text())["method"] for p in runs.glob("*/record.stale-*.json")]
    plug_runs = sum(r["method"] == "plug" for r in read_json_records(runs).values())
    exact = archived == ["plug"] * plug_runs
    outcome = (f"{'warned' if warned == 1 else f'{warned} warnings'}{'' if nothing else ' (and trained)'}; "
               f"{ran.group(1) if ran else '?'} retrained{'' if exact else ' (NOT exactly the plugin runs)'} "
               "(retrain intended)")
    return outcome, "—", [(runs, {"plug": "vanilla"})]


def _children(pid: int) -> set[int]:
    """Direct children of ``pid`` (from /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found |= {int(child) for child in task.read_text().split()}
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                alive.add(pid)
    return alive


def _workers_started(case: Case) -> tuple[Path, Path, subprocess.Popen, set[int]]:
    """A `workers: 3` grid started; returns once both students (the pool's jobs) have a checkpoint."""
    grid = write_grid(case.folder, case.folder / "results", executor={**GRID["executor"], "workers": 3})
    runs = case.folder / "results/faults/runs"
    process = case.start("run", str(grid))
    wait_for(lambda: len(list(runs.glob("*/checkpoint.pt"))) >= 2 and len(_children(process.pid)) >= 2, 600,
             "both students' first checkpoints", process)
    return grid, runs, process, _children(process.pid)


def _name(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
    return str(pid)


def fault_workers_sigint(case: Case) -> Result:
    """`workers: 3`: SIGINT to the main process while the pool trains both students, then `kdbench run`."""
    grid, runs, process, workers = _workers_started(case)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    code, _, _ = case.finish(process, timeout=60)
    seconds = time.monotonic() - sent
    gone = wait_for(lambda: not _alive(workers), 10, "the workers to end")
    left = sorted(_name(pid) for pid in _alive(workers))
    temp_files = len(list(runs.glob('*/.*.tmp')))
    recover(case, grid, runs)
    return (f"exit {code} in {seconds:.1f} s; {len(workers)} child processes, all gone within 10 s: "
            f"{'yes' if gone else 'NO: ' + ', '.join(left)}; temp files left: {temp_files}"), "—", [(runs, {})]


def fault_workers_kill9(case: Case) -> Result:
    """`workers: 3`: kill -9 of the main process while the pool trains; no worker may outlive it by 10 s."""
    grid, runs, process, workers = _workers_started(case)
    process.kill()
    case.finish(process, timeout=60)
    gone = wait_for(lambda: not _alive(workers), 10, "the workers to die")
    recover(case, grid, runs)
    left = sorted(_name(pid) for pid in _alive(workers))
    return (f"{len(workers)} child processes; all gone within 10 s: {'yes' if gone else 'NO: ' + ', '.join(left)}",
            "—", [(runs, {})])


# name → fault function (functions taking a second argument get the reference folder).
FAULTS: list[tuple[str, str, Callable[..., Result]]] = [
    ("kill9", "kill -9 mid-run (after epoch 2's checkpoint)", fault_kill9),
    ("sigint", "SIGINT to `kdbench run` (after first checkpoint)", fault_sigint),
    ("concurrent", "two `kdbench run` of one grid at once", fault_concurrent),
    ("record-truncated", "done record.json truncated (backup intact)", fault_record_truncated),
    ("record-and-backup", "DOUBLE FAULT: record.json + backup destroyed", fault_record_and_backup),
    ("checkpoint-truncated", "interrupted run's checkpoint.pt truncated", fault_checkpoint_truncated),
    ("planted-pickle", "planted checkpoint.pt (code on unpickling)", fault_planted_pickle),
    ("disk-full", "disk full (16 MB tmpfs filled)", fault_disk_full),
    ("read-only", "read-only results root (tmpfs ro, then rw)", fault_read_only),
    ("mlflow-kill", "MLflow: kill between record and MLflow close", fault_mlflow_kill),
    ("mlflow-two-grids", "MLflow: two grids, one fresh root, at once", fault_mlflow_two_grids),
    ("stale-code", "stale code: plugin file edited", fault_stale_code),
    ("workers-sigint", "`workers: 3` + SIGINT while the pool trains", fault_workers_sigint),
    ("workers-kill9-parent", "`workers: 3` + kill -9 of the main process", fault_workers_kill9),
]


# ---------------------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Reference:
    folder: Path
    numbers: dict[tuple, tuple]  # (stage, label) → numbers
    epoch_seconds: float


def train_reference(out: Path) -> Reference:
    case = Case("reference", out / "reference")
    case.folder.mkdir(parents=True)
    grid = write_grid(case.folder, case.folder / "results")
    code, stdout, stderr = case.run("run", str(grid))
    runs = case.folder / "results/faults/runs"
    if code != 0 or not complete(runs, 3):
        sys.exit(f"the reference grid did not complete (exit {code}):\n{stdout[-2000:]}\n{stderr[-2000:]}")
    records = read_json_records(runs).values()
    seconds = [entry["seconds"] for record in records for entry in record["history"]]
    return Reference(case.folder, {key_of(r, {}): numbers(r) for r in records}, sum(seconds) / len(seconds))


def measure(roots: list[tuple[Path, dict[str, str]]], reference: Reference) -> tuple[int, int, int]:
    """(runs lost, runs trained twice, epochs redone) over the runs roots of a fault."""
    lost = twice = epoch_lines = expected = 0
    for runs, aliases in roots:
        records = {key_of(r, aliases): r for r in read_json_records(runs).values()}
        for key, wanted in reference.numbers.items():
            record = records.get(key)
            lost += record is None or record["status"] != "done" or numbers(record) != wanted
        expected += len(reference.numbers)
        for log in runs.glob("*/log.txt") if runs.is_dir() else ():
            text = log.read_text(errors="replace")
            previous = 0
            for number in map(int, EPOCH_LINE.findall(text)):
                epoch_lines += 1 + max(0, number - previous - 1)  # a gap: trained and checkpointed, not logged
                previous = number
            twice += text.count(FINAL_EPOCH) > 1
    return lost, twice, epoch_lines - expected * EPOCHS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="working folder (default: a new folder under /tmp)")
    parser.add_argument("--only", help="comma-separated fault names: " + ", ".join(name for name, _, _ in FAULTS))
    args = parser.parse_args()
    wanted = [name.strip() for name in args.only.split(",")] if args.only else [name for name, _, _ in FAULTS]
    unknown = set(wanted) - {name for name, _, _ in FAULTS}
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(name for name, _, _ in FAULTS)}")
    out = (args.out or Path(tempfile.mkdtemp(prefix="kdbench-faults-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    print(f"working folder: {out}", flush=True)
    reference = train_reference(out)
    print(f"reference trained in {time.monotonic() - began:.0f} s; mean epoch {reference.epoch_seconds:.2f} s",
          flush=True)

    rows = []
    for name, title, function in FAULTS:
        if name not in wanted:
            continue
        case = Case(name, out / name)
        if case.folder.exists():
            shutil.rmtree(case.folder)
        case.folder.mkdir(parents=True)
        started = time.monotonic()
        try:
            needs_reference = function.__code__.co_argcount == 2
            outcome, named, roots = function(case, reference.folder) if needs_reference else function(case)
        except Skip as why:
            print(f"skipped {name}: {why}", flush=True)
            rows.append((title, f"skipped: {why}", "—", "—", "—", "—", "—", "—"))
            continue
        lost, twice, redone = measure(roots, reference)
        if case.tracebacks():
            outcome += f"; TRACEBACK in output ({case.tracebacks()})"
        minutes = redone * reference.epoch_seconds / 60
        codes = ", ".join(str(code) for code in case.codes)
        rows.append((title, outcome, str(lost), str(twice), str(redone), f"{minutes:.3f}", named, codes))
        print(f"{name}: {time.monotonic() - started:.0f} s | {' | '.join(rows[-1][1:])}", flush=True)

    header = ("fault", "outcome (short)", "runs lost", "runs trained twice", "epochs redone",
              "training minutes lost", "bad file named in one line", "exit codes")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    print(f"\ntotal {time.monotonic() - began:.0f} s; load average {' '.join(load)}; outputs under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
