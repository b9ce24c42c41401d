"""Exclusive OS file locks (flock): one writer per run folder, one creator of the MLflow store.

The kernel releases a flock when its holder dies (kill -9 included), so a crash never leaves a stale lock.
The lock file itself is never deleted (deleting a lock file races with a process opening it); it holds one
JSON line naming the holder (host, pid, since) for `kdbench status` and for "running elsewhere" messages.

Shared file systems: NFSv4 (and NFSv3 with lockd) turn flock into a POSIX byte-range lock on the server, so
the lock holds across nodes; Lustre needs the `flock` mount option, GPFS/BeeGFS support it natively. A file
system mounted with `nolock` or `local_lock=all` only locks within one node.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = ".lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: host, process id and since when (ISO time, UTC)."""

    host: str
    pid: int
    since: str

    def describe(self) -> str:
        """'host, pid N, since T'."""
        return f"{self.host}, pid {self.pid}, since {self.since}"


class FileLock:
    """A non-reentrant exclusive flock on ``path``; `acquire` never waits unless asked to."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        """Take the lock (waiting for it when ``wait``); False when another open file holds it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        holder = LockHolder(socket.gethostname(), os.getpid(), datetime.now(timezone.utc).isoformat(timespec="seconds"))
        with contextlib.suppress(OSError):  # the holder line is informative; a full disk must not lose the lock
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder.__dict__) + "\n").encode(), 0)
        return True

    def release(self) -> None:
        """Let go of the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def read_holder(path: str | Path) -> LockHolder | None:
    """The holder line of a lock file (None when absent or unreadable); says nothing about whether it is held."""
    try:
        data = json.loads(Path(path).read_text() or "null")
        return LockHolder(str(data["host"]), int(data["pid"]), str(data["since"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def lock_holder(path: str | Path) -> LockHolder | None:
    """Who holds the lock at ``path`` right now, or None when nobody does (a probe that takes and drops it)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return read_holder(path) or LockHolder("?", 0, "?")
    finally:
        os.close(fd)
    return None


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[FileLock]:
    """Hold the lock at ``path`` for the ``with`` block, waiting for it if another process has it."""
    lock = FileLock(path)
    lock.acquire(wait=True)
    try:
        yield lock
    finally:
        lock.release()
