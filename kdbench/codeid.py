"""Code identity: sha256 of the source that trains a run (the method's module and kdbench's training code).

A record stores both digests; a done run whose digests differ from today's code is *stale*: `kdbench run`
warns, `status` and `report` mark it, and `kdbench run --rerun stale` trains it again.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING

from kdbench.tracking.record import RunRecord

if TYPE_CHECKING:
    from kdbench.tracking.index import RunSummary

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


def current_code_identity(method: str) -> dict[str, str]:
    """``code_identity(method)``, without importing the method when kdbench's code is unchanged since it was.

    A built-in method's source files are remembered per code fingerprint (kdbench.diskcache): the digests are
    still computed from today's file contents, only finding the files (importing the methods, which imports
    torch) is skipped. Plugin methods are always looked up in the registry.
    """
    from kdbench import diskcache

    key = diskcache.code_fingerprint()
    known: dict[str, list[str]] = diskcache.read("method-files", key) or {}
    files = known.get(method)
    if files is not None:
        try:
            return {"method": _digest([Path(name) for name in files]), "training": training_code_sha256()}
        except OSError:
            pass  # a file gone since: ask the registry
    paths = method_source_files(method)
    if all(_is_builtin(path) for path in paths):
        diskcache.write("method-files", key, {**known, method: [str(path) for path in paths]})
    return {"method": _digest(paths), "training": training_code_sha256()}


def _is_builtin(path: Path) -> bool:
    """A file of kdbench itself or of its built-in methods (what the code fingerprint covers)."""
    from kdbench import diskcache

    return any(path.resolve().is_relative_to(Path(folder).resolve()) for folder in diskcache.source_dirs())


def stale_parts(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Which parts ('method', 'training') of a record's code identity differ from ``current``; [] for old records."""
    return [part for part in ("method", "training") if part in recorded and recorded[part] != current.get(part)]


def stale_reasons(record: RunRecord | RunSummary, teacher_record: RunRecord | RunSummary | None = None,
                  current: dict[str, str] | None = None) -> list[str]:
    """Why a done run no longer matches today's code or teacher: 'method code', 'training code', 'teacher weights'.

    Records written before code identity existed have none and are not called stale. ``current`` is the code
    identity of the record's method (computed when not given). Records and index summaries
    (kdbench.tracking.index.RunSummary) both work.
    """
    if record.code and current is None:
        current = code_identity(record.method)
    return stale_reasons_of(record.code, record.teacher.sha256 if record.teacher is not None else None,
                            teacher_record.model_sha256 if teacher_record is not None else None, current or {})


def stale_reasons_of(code: dict[str, str], teacher_sha256: str | None, teacher_model_sha256: str | None,
                     current: dict[str, str]) -> list[str]:
    """stale_reasons from the facts it compares: the record's code identity and the sha256 of the teacher weights
    it used, the teacher record's weights sha256 today, and today's code identity of the method."""
    reasons = [f"{part} code" for part in stale_parts(code, current)] if code else []
    if teacher_sha256 is not None and teacher_model_sha256 and teacher_model_sha256 != teacher_sha256:
        reasons.append("teacher weights")
    return reasons
