"""A small on-disk cache of things derived from kdbench's code (validated grids, expansions, method source files).

Each value is keyed by what it was computed from, including the *code fingerprint*: the path, size and mtime of
every Python file of kdbench and its built-in methods, and the versions of the libraries that validation and
expansion use. Any edit to kdbench or an upgrade of those libraries gives a new fingerprint, so a cached value
is never used for other code than the one that computed it. The cache lives in ``$KDBENCH_CACHE_DIR``, else
``$XDG_CACHE_HOME/kdbench`` or ``~/.cache/kdbench``; it is only a cache: deleting it costs time, never results.
Values are zlib-compressed JSON written atomically; an unreadable or unwritable cache is silently skipped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import zlib
from pathlib import Path
from typing import Any

from kdbench.tracking.atomic import atomic_write_bytes

ENV_VAR = "KDBENCH_CACHE_DIR"
KEEP = 64  # values kept per kind; older ones (other code, other grids) are removed when a new one is written
# Libraries whose version can change what a grid validates to or expands into (run ids hash pydantic's dumps).
LIBRARIES = ("pydantic", "torch", "torchvision", "timm")


def cache_dir() -> Path:
    """Where cached values live (created on first write)."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kdbench"


def source_dirs() -> list[str]:
    """The folders of kdbench's package and of its built-in methods."""
    import kdbench

    dirs = [os.path.dirname(os.path.abspath(kdbench.__file__))]
    methods = importlib.util.find_spec("kdbench.methods")  # found without importing it (that imports torch)
    if methods is not None and methods.submodule_search_locations:
        dirs += [os.path.abspath(path) for path in methods.submodule_search_locations]
    return dirs


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over (path, size, mtime) of kdbench's and its methods' .py files and the libraries' versions."""
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    for root in source_dirs():
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    st = os.stat(path)
                    digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for library in LIBRARIES:
        try:
            digest.update(f"{library}=={version(library)}\n".encode())
        except PackageNotFoundError:
            digest.update(f"{library} absent\n".encode())
    return digest.hexdigest()


def key_of(*parts: Any) -> str:
    """A cache key: sha256 of the JSON of ``parts`` (with the code fingerprint added by the caller when needed)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _path(kind: str, key: str) -> Path:
    return cache_dir() / kind / f"{key}.json.z"


def exists(kind: str, key: str) -> bool:
    """Whether a value is stored under (``kind``, ``key``)."""
    return _path(kind, key).is_file()


def read(kind: str, key: str) -> Any | None:
    """The value stored under (``kind``, ``key``), or None (absent, unreadable, or the cache is unusable)."""
    try:
        return json.loads(zlib.decompress(_path(kind, key).read_bytes()))
    except (OSError, ValueError, zlib.error):
        return None


def write(kind: str, key: str, value: Any) -> None:
    """Store ``value`` (JSON-able) under (``kind``, ``key``); a cache that cannot be written is skipped."""
    path = _path(kind, key)
    with contextlib.suppress(OSError, ValueError, TypeError):
        atomic_write_bytes(path, zlib.compress(json.dumps(value).encode(), 1))
        _prune(path.parent)


def _prune(folder: Path) -> None:
    """Keep the KEEP newest values of a kind."""
    values = [entry for entry in os.scandir(folder) if entry.name.endswith(".json.z")]
    if len(values) <= KEEP:
        return
    values.sort(key=lambda entry: entry.stat().st_mtime_ns, reverse=True)
    for entry in values[KEEP:]:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
