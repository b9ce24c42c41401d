"""Code identity: sha256 of the source that trains a run (the method's module and kdbench's training code).

A record stores both digests; a done run whose digests differ from today's code is *stale*: `kdbench run`
warns, `status` and `report` mark it, and `kdbench run --rerun stale` trains it again.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from pathlib import Path

from kdbench.tracking.record import RunRecord

PACKAGE_DIR = Path(__file__).resolve().parent
# What decides a run's numbers besides its method: the training step, data, models and the loss interface.
TRAINING_CODE = ("engine", "data", "models", "loss.py", "runspec.py")


def _digest(files: list[Path], root: Path | None = None) -> str:
    digest = hashlib.sha256()
    for path in files:
        name = str(path.relative_to(root)) if root is not None else path.name
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def training_code_sha256() -> str:
    """sha256 over kdbench's training code (engine, data, models, loss interface, run spec), read once."""
    files: list[Path] = []
    for entry in TRAINING_CODE:
        path = PACKAGE_DIR / entry
        files.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return _digest(files, PACKAGE_DIR)


def method_source_files(method: str) -> list[Path]:
    """The source files of a method's class and of its base classes up to DistillLoss (plugins included)."""
    import kdbench.methods  # noqa: F401  (the built-in methods register on import)
    from kdbench.loss import METHODS, DistillLoss

    files: list[Path] = []
    for cls in inspect.getmro(METHODS.get(method)):
        if cls is DistillLoss or not issubclass(cls, DistillLoss):
            continue
        source = inspect.getsourcefile(cls)
        if source is not None and Path(source).resolve() not in files:
            files.append(Path(source).resolve())
    return files


def method_code_sha256(method: str) -> str:
    """sha256 over the current contents of a method's source files."""
    return _digest(method_source_files(method))


def code_identity(method: str) -> dict[str, str]:
    """{'method': sha256 of the method's source, 'training': sha256 of kdbench's training code}."""
    return {"method": method_code_sha256(method), "training": training_code_sha256()}


def stale_parts(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Which parts ('method', 'training') of a record's code identity differ from ``current``; [] for old records."""
    return [part for part in ("method", "training") if part in recorded and recorded[part] != current.get(part)]


def stale_reasons(record: RunRecord, teacher_record: RunRecord | None = None,
                  current: dict[str, str] | None = None) -> list[str]:
    """Why a done run no longer matches today's code or teacher: 'method code', 'training code', 'teacher weights'.

    Records written before code identity existed have none and are not called stale. ``current`` is the code
    identity of the record's method (computed when not given).
    """
    reasons = []
    if record.code:
        current = current if current is not None else code_identity(record.method)
        reasons += [f"{part} code" for part in stale_parts(record.code, current)]
    if (record.teacher is not None and teacher_record is not None and teacher_record.model_sha256
            and teacher_record.model_sha256 != record.teacher.sha256):
        reasons.append("teacher weights")
    return reasons
