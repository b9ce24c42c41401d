"""train_run: one run of either stage, from its RunSpec to its record, resumable from its last checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import BaseModel, Field
from torch import nn

import kdbench.methods  # noqa: F401  (registers the built-in methods in any worker process)
from kdbench.codeid import code_identity, stale_reasons
from kdbench.config import import_plugins
from kdbench.data import DataBundle
from kdbench.data.batches import check_shardable
from kdbench.data.loaders import EvalBatches
from kdbench.data.streaming import default_workers
from kdbench.engine.assemble import assemble_training
from kdbench.engine.checkpoint import (
    MODEL_NAME,
    CorruptCheckpointError,
    checkpoint_files,
    file_sha256,
    load_checkpoint,
    load_weights_only,
    remove_checkpoints,
    save_atomic,
    save_checkpoint,
)
from kdbench.engine.distributed import (
    SINGLE,
    DistInfo,
    DistributedSetupError,
    barrier,
    broadcast_state,
    device_for,
    dist_info_from_env,
    init_distributed,
)
from kdbench.engine.environment import (
    configure_device,
    configure_threads,
    peak_memory_bytes,
    prepare_model,
    provenance,
)
from kdbench.engine.evaluate import evaluate
from kdbench.engine.given_weights import evaluate_given_teacher
from kdbench.engine.loop import train_epoch
from kdbench.engine.run_data import build_run_data, run_eval_batches
from kdbench.engine.seeding import capture_rng_state, restore_rng_state, seed_everything
from kdbench.faults import failpoint
from kdbench.models import build_model
from kdbench.progress import epoch_eta, progress_text
from kdbench.runspec import RunSpec
from kdbench.tracking.atomic import remove_temp_files
from kdbench.tracking.corrupt import set_aside
from kdbench.tracking.lock import LOCK_NAME, FileLock, LockHolder, lock_holder
from kdbench.tracking.mlflow_sink import MlflowSink, mlflow_run_name
from kdbench.tracking.record import (
    BestVal,
    EpochLog,
    EvalResult,
    RunRecord,
    TeacherInfo,
    archive_record,
    read_record,
    write_record,
)
from kdbench.tracking.resources import as_resource_error

log = logging.getLogger("kdbench")


class RunObserver(Protocol):
    """Receives a run's start, each epoch and its end (the MLflow sink is one)."""

    def on_start(self, run_id: str, run_name: str, spec: dict[str, Any], resumed_epoch: int) -> None: ...
    def on_epoch(self, entry: EpochLog) -> None: ...
    def on_end(self, record: RunRecord) -> None: ...


class TeacherError(RuntimeError):
    """The teacher a student needs is missing, unfinished, or its weights do not match its record."""


@dataclass(frozen=True)
class RunBusy:
    """A run another process is training right now (it holds the run's lock): skipped here."""

    run_id: str
    description: str
    holder: LockHolder | None

    def describe(self) -> str:
        """'<run> is running elsewhere: host, pid N, since T'."""
        where = self.holder.describe() if self.holder is not None else "holder unknown"
        return f"{self.run_id} {self.description} is running elsewhere: {where}"


@dataclass
class RunJob:
    """A picklable unit of work for any executor: one spec and where its results go."""

    spec: RunSpec
    runs_root: Path
    grid: str
    device: str = "auto"
    tracking_uri: str | None = None
    tracking_experiment: str | None = None
    label: str = ""
    rerun_stale: bool = False  # train again when the done record's code or teacher differs from today's
    loader_workers: int | None = None  # DataLoader workers for image-file datasets; None: the CPUs given minus one
    plugins: list[str] = field(default_factory=list)  # absolute files or module names, imported in the worker
    observers: list[RunObserver] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        """results/<grid>/runs/<run_id>."""
        return self.runs_root / self.spec.run_id

    def all_observers(self) -> list[RunObserver]:
        """The given observers plus the MLflow sink when tracking is configured."""
        sinks: list[RunObserver] = []
        if self.tracking_uri and self.tracking_experiment:
            sinks.append(MlflowSink(self.tracking_uri, self.tracking_experiment))
        return [*self.observers, *sinks]

    def __call__(self) -> RunRecord | RunBusy:
        return train_run(self)


class _State(BaseModel):
    """What the checkpoint carries beyond module and optimizer states."""

    epoch: int = 0
    history: list[EpochLog] = Field(default_factory=list)
    best_val: BestVal | None = None
    last_test: EvalResult | None = None
    last_val: EvalResult | None = None
    seconds: float = 0.0
    resumed_from: list[int] = Field(default_factory=list)


def load_teacher(spec: RunSpec, runs_root: Path, num_classes: int,
                 device: torch.device) -> tuple[nn.Module, TeacherInfo]:
    """Build the frozen teacher (eval mode, no grad) from its finished run; verify its checksum."""
    assert spec.teacher is not None
    teacher_dir = runs_root / spec.teacher.run_id
    record = read_record(teacher_dir)
    if record is None or record.status != "done" or record.final is None:
        raise TeacherError(f"teacher run {spec.teacher.run_id} ({spec.teacher.arch}) has not finished")
    weights = teacher_dir / MODEL_NAME
    checksum = file_sha256(weights) if weights.is_file() else "missing"
    if checksum != record.model_sha256:
        raise TeacherError(f"teacher weights {weights} do not match the sha256 in its record; refusing them")
    teacher = build_model(spec.teacher.arch, num_classes, **spec.teacher.arch_kwargs)
    teacher.load_state_dict(load_weights_only(weights))
    teacher.to(device).eval().requires_grad_(False)
    info = TeacherInfo(run_id=spec.teacher.run_id, arch=spec.teacher.arch, sha256=checksum, top1=record.final.top1)
    return teacher, info


class _RunLogHandler(logging.FileHandler):
    """The run's log.txt; a failed write (a full disk) is dropped silently: the checkpoint write reports it."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass

    def flush(self) -> None:
        with contextlib.suppress(OSError):  # buffered lines a full disk refused; closing must not raise them
            super().flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            super().close()


def _stale(record: RunRecord, job: RunJob) -> list[str]:
    teacher = read_record(job.runs_root / job.spec.teacher.run_id) if job.spec.teacher is not None else None
    return stale_reasons(record, teacher)


def _attach_log_file(run_dir: Path) -> logging.Handler:
    handler = _RunLogHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def _base_record(job: RunJob) -> dict[str, Any]:
    spec = job.spec
    return dict(run_id=spec.run_id, grid=job.grid, stage=spec.stage, method=spec.method, label=spec.display_method,
                arch=spec.arch, pair=spec.pair, dataset=spec.dataset.variant, seed=spec.seed,
                subset_seed=spec.dataset.subset_seed, spec=spec.model_dump(mode="json"),
                config_sha256=hashlib.sha256(spec.canonical_json().encode()).hexdigest(),
                code=code_identity(spec.method))


def train_run(job: RunJob) -> RunRecord | RunBusy:
    """Train one run to the end (or resume it) and write its record; failures become a failed record.

    One writer per run: the process that trains a run holds the flock on ``<run dir>/.lock`` (the kernel
    releases it when the process dies); a run locked by another process is skipped and returned as RunBusy.
    A full disk or an unwritable results folder raises ResourceError and is not recorded as the run's failure.

    Under torch.distributed (one process per device, see engine/distributed.py) every rank trains and only
    rank 0 takes the lock and writes the log file, checkpoints, weights, record and MLflow; the other ranks
    wait for the record.
    """
    setup_error: DistributedSetupError | None = None
    try:
        ranks = dist_info_from_env()
    except DistributedSetupError as error:
        ranks, setup_error = SINGLE, error
    lock = FileLock(job.run_dir / LOCK_NAME) if ranks.is_main else None
    try:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        if lock is not None and not lock.acquire():
            return RunBusy(job.spec.run_id, job.spec.describe(), lock_holder(lock.path))
        return _train_locked(job, ranks, setup_error)
    except Exception as error:
        resource = as_resource_error(error)
        if resource is not None:
            raise resource from None
        raise
    finally:
        if lock is not None:
            lock.release()


def _train_locked(job: RunJob, ranks: DistInfo, setup_error: DistributedSetupError | None) -> RunRecord:
    run_dir = job.run_dir
    existing = read_record(run_dir)
    if existing is not None and existing.status == "done":
        stale = _stale(existing, job) if job.rerun_stale else []
        if not stale:
            if ranks.is_main:
                remove_checkpoints(run_dir)  # left by a kill between the record write and the clean-up
            return existing
        if ranks.is_main:
            archive_record(run_dir, "stale")
            log.info("%s: trained again (%s changed); the old record and weights are kept beside it",
                     job.spec.describe(), ", ".join(stale))
    elif existing is not None and ranks.is_main:
        archive_record(run_dir, "failed")
    elif ranks.is_main and (run_dir / MODEL_NAME).is_file():  # weights whose record was lost: kept, not overwritten
        orphan = run_dir / f"model.orphan-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}.pt"
        (run_dir / MODEL_NAME).rename(orphan)
        log.warning("warning: %s has no readable record; its weights were moved aside to %s", run_dir, orphan.name)
    if ranks.is_main:
        remove_temp_files(run_dir)
    handler = _attach_log_file(run_dir) if ranks.is_main else None
    import_plugins(job.plugins, Path.cwd())  # a spawned worker or Slurm task starts with built-in methods only
    observers = job.all_observers() if ranks.is_main else []
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        if setup_error is not None:
            raise setup_error
        record = _train(job, observers, ranks)
    except Exception as error:  # the grid goes on; the reason is recorded
        if as_resource_error(error) is not None:
            raise  # the machine's failure, not the run's: nothing is recorded, the grid stops
        log.error("%s failed: %s: %s", job.spec.describe(), type(error).__name__, error)
        record = RunRecord(status="failed", reason=f"{type(error).__name__}: {error}",
                           traceback=traceback.format_exc(), **_base_record(job))
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
    if not ranks.is_main:
        if record.status == "done":
            barrier()  # rank 0 has written the weights and the record
            return read_record(run_dir) or record
        return record  # a failed rank does not wait: the group may be broken
    record.provenance.update(started_at=started, finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_record(run_dir, record)
    failpoint("after-record")  # tests: a kill between the record write and the MLflow update
    for observer in observers:
        observer.on_end(record)
    if record.status == "done":
        remove_checkpoints(run_dir)  # the final weights are kept in model.pt
        if ranks.distributed:
            barrier()
    return record


@dataclass
class _Setup:
    """Everything a run trains with, built from its spec (again, after a checkpoint that failed to apply)."""

    data: DataBundle
    test_batches: EvalBatches
    val_batches: EvalBatches | None
    student: nn.Module
    teacher_info: TeacherInfo | None
    parts: Any
    scheduler: Any


def _setup(job: RunJob, device: torch.device, ranks: DistInfo) -> _Setup:
    spec, recipe = job.spec, job.spec.recipe
    seed_everything(spec.seed)
    data = build_run_data(spec)
    workers = job.loader_workers if job.loader_workers is not None else default_workers()
    test_batches, val_batches = run_eval_batches(data, recipe, device, ranks, workers)
    student = prepare_model(build_model(spec.arch, data.num_classes, **spec.arch_kwargs), device, recipe)
    teacher, teacher_info = (load_teacher(spec, job.runs_root, data.num_classes, device)
                             if spec.teacher is not None else (None, None))
    if teacher is not None:
        teacher = prepare_model(teacher, device, recipe)
    parts = assemble_training(method=spec.method, params=spec.params, student=student, teacher=teacher, data=data,
                              train_set=data.train.to(device), recipe=recipe, device=device, seed=spec.seed,
                              dist=ranks, loader_workers=workers)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(parts.optimizer, milestones=list(recipe.milestones),
                                                     gamma=recipe.gamma)
    return _Setup(data, test_batches, val_batches, student, teacher_info, parts, scheduler)


def _apply_checkpoint(checkpoint: dict[str, Any], built: _Setup) -> _State:
    built.student.load_state_dict(checkpoint["student"])
    built.parts.loss.load_state_dict(checkpoint["loss"])
    built.parts.optimizer.load_state_dict(checkpoint["optimizer"])
    built.scheduler.load_state_dict(checkpoint["scheduler"])
    state = _State.model_validate(checkpoint["state"])
    restore_rng_state(checkpoint["rng"])
    return state


def _resume(job: RunJob, device: torch.device, ranks: DistInfo) -> tuple[_Setup, _State]:
    """Build the run and restore the newest usable checkpoint; unusable ones are moved aside (main rank)."""
    built = _setup(job, device, ranks)
    if ranks.distributed and not ranks.is_main:
        barrier()  # rank 0 has set aside what it could not use
    candidates = checkpoint_files(job.run_dir)
    for path in candidates:
        try:
            state = _apply_checkpoint(load_checkpoint(path), built)
        except (CorruptCheckpointError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
            if ranks.is_main:
                set_aside(path, "checkpoint", f"{type(error).__name__}: {error}")
            built = _setup(job, device, ranks)  # a half-applied checkpoint must not leak into the next try
            continue
        state.resumed_from.append(state.epoch)
        log.info("%s: resuming after epoch %d%s", job.spec.describe(), state.epoch,
                 "" if path == candidates[0] else f" from the previous checkpoint {path.name}")
        break
    else:
        state = _State()
        if candidates:
            log.warning("warning: %s: no usable checkpoint in %s; training from scratch", job.spec.describe(),
                        job.run_dir)
    if ranks.distributed and ranks.is_main:
        barrier()
    return built, state


def _train(job: RunJob, observers: list[RunObserver], ranks: DistInfo = SINGLE) -> RunRecord:
    spec, run_dir, recipe = job.spec, job.run_dir, job.spec.recipe
    run_started = time.perf_counter()
    configure_threads()
    device = device_for(job.device, ranks)
    configure_device(device)
    ranks = init_distributed(device)
    if spec.weights is not None:
        return evaluate_given_teacher(job, observers, device, ranks, _base_record(job))
    if ranks.distributed:
        check_shardable(recipe.batch_size, ranks.world_size)
    built, state = _resume(job, device, ranks)
    data, student, teacher_info = built.data, built.student, built.teacher_info
    parts, scheduler = built.parts, built.scheduler
    loss, optimizer, autocast = parts.loss, parts.optimizer, parts.autocast
    broadcast_state(student, loss)  # every rank starts from rank 0's weights and method state

    for observer in observers:
        observer.on_start(spec.run_id, mlflow_run_name(spec.display_method, spec.pair, spec.dataset.variant, spec.seed),
                          spec.model_dump(mode="json"), state.epoch)
    eval_args = dict(num_classes=data.num_classes, device=device, autocast=autocast, dist=ranks)
    first_epoch, loop_started = state.epoch + 1, time.perf_counter()
    for epoch in range(state.epoch + 1, recipe.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        result = train_epoch(parts, epoch)
        scheduler.step()
        state.last_test = evaluate(student, built.test_batches, **eval_args)
        state.last_val = evaluate(student, built.val_batches, **eval_args) if built.val_batches is not None else None
        if state.last_val is not None and (state.best_val is None or state.last_val.top1 > state.best_val.val_top1):
            state.best_val = BestVal(epoch=epoch, val_top1=state.last_val.top1, test=state.last_test)
        entry = EpochLog(epoch=epoch, lr=lr, train=result.terms, test_top1=state.last_test.top1,
                         test_top5=state.last_test.top5, val_top1=state.last_val.top1 if state.last_val else None,
                         seconds=result.seconds, images_per_s=result.images / max(result.seconds, 1e-9))
        state.history.append(entry)
        state.epoch = epoch
        state.seconds += result.seconds
        if not ranks.is_main:
            continue
        val_text = f" val {entry.val_top1:.2f}" if entry.val_top1 is not None else ""
        # ETA: this session's wall time per epoch (training, evaluation, checkpoint) × the epochs left
        now = time.perf_counter()
        eta = epoch_eta(now - loop_started, epoch - first_epoch + 1, recipe.epochs - epoch)
        # logged before the checkpoint: log.txt lists every epoch trained, also one a kill then loses
        log.info("%s%s | epoch %d/%d loss %.4f train %.2f test %.2f%s | %.1fs %.0f img/s | %s", job.label,
                 spec.describe(), epoch, recipe.epochs, result.terms["total"], result.terms["top1"],
                 entry.test_top1, val_text, result.seconds, entry.images_per_s,
                 progress_text(now - run_started, eta))
        _save_checkpoint(run_dir, student, loss, optimizer, scheduler, state)
        failpoint(f"after-checkpoint:{epoch}")  # tests: a kill right after epoch N's checkpoint
        for observer in observers:
            observer.on_epoch(entry)

    assert state.last_test is not None
    if ranks.is_main:
        save_atomic(student.state_dict(), run_dir / MODEL_NAME)
    extra = sum(p.numel() for p in loss.parameters() if p.requires_grad)
    record = RunRecord(
        status="done", num_classes=data.num_classes, class_counts=list(data.class_counts), final=state.last_test,
        final_val=state.last_val, best_val=state.best_val, history=state.history,
        student_params=sum(p.numel() for p in student.parameters()), extra_params=extra,
        peak_memory_bytes=peak_memory_bytes(device), teacher=teacher_info,
        model_sha256=file_sha256(run_dir / MODEL_NAME) if ranks.is_main else None,
        provenance=provenance(device) | {"train_seconds": state.seconds, "resumed_after_epochs": state.resumed_from,
                                         "train_source_indices_sha256": _indices_digest(data)}
        | ({"world_size": ranks.world_size} if ranks.distributed else {}),
        **_base_record(job),
    )
    return record


def _indices_digest(data: DataBundle) -> str:
    return hashlib.sha256(data.train_source_indices.cpu().numpy().tobytes()).hexdigest()[:16]


def _save_checkpoint(run_dir: Path, student: nn.Module, loss: nn.Module, optimizer, scheduler, state: _State) -> None:
    payload = {
        "student": student.state_dict(), "loss": loss.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": capture_rng_state(),
        "state": state.model_dump(),
        "saved_at": time.time(),
    }
    save_checkpoint(payload, run_dir)
