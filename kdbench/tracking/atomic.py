"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

# mkstemp creates files readable by the owner only; results are shared, so give them the usual umask mode.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"  # a temporary file is .<name>.<random>.tmp beside <name>
_own_temp_files: set[str] = set()  # this process's temporary files not yet renamed or removed



def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temporary file next to ``path``, fsync it, then rename it to ``path``.

    An OSError (disk full, read-only folder) is raised again with ``path`` as its file name, so that the
    one-line diagnosis names the file that could not be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as error:
        if error.errno is None or error.filename is not None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error
    _own_temp_files.add(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None and error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    finally:
        _own_temp_files.discard(tmp_name)


def remove_own_temp_files() -> None:
    """Remove the temporary files of this process's unfinished atomic writes (a worker about to exit)."""
    for name in list(_own_temp_files):
        Path(name).unlink(missing_ok=True)
        _own_temp_files.discard(name)


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Remove temporary files of atomic writes left in ``folder`` by a process that died; returns them.

    Only safe when no live process writes into ``folder``: the caller holds the run's lock, or has checked that
    nobody does after its own writers ended.
    """
    removed = []
    for path in Path(folder).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda handle: handle.write(data))


def json_bytes(payload: Any) -> bytes:
    """``payload`` as the indented JSON that atomic_write_json writes."""
    return json.dumps(payload, indent=2, sort_keys=False, allow_nan=True).encode()


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    atomic_write_bytes(path, json_bytes(payload))
