"""Failures of the machine rather than of the run (disk full, read-only or forbidden results folder)."""

from __future__ import annotations

import errno

RESOURCE_ERRNOS = {
    errno.ENOSPC: "no space left on device (ENOSPC)",
    errno.EDQUOT: "disk quota exceeded (EDQUOT)",
    errno.EROFS: "read-only file system (EROFS)",
    errno.EACCES: "permission denied (EACCES)",
    errno.EPERM: "operation not permitted (EPERM)",
}


UNKNOWN_PATH = "(path unknown)"


class ResourceError(RuntimeError):
    """The results folder cannot be written: the grid stops; the run is not recorded as failed."""

    def __init__(self, path: str, cause: str) -> None:
        super().__init__(f"{cause}: {path}")
        self.path = path
        self.cause = cause

    def __reduce__(self):  # crosses process-pool boundaries with both fields
        return type(self), (self.path, self.cause)


def as_resource_error(error: BaseException) -> ResourceError | None:
    """The ResourceError behind ``error`` (itself, or an OSError with a resource errno in its chain), else None.

    Of several such errors in the chain, the first that names its file wins (a later failure, e.g. flushing a
    log while the first one propagates, may not know its path).
    """
    seen: set[int] = set()
    found: list[ResourceError] = []
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ResourceError):
            found.append(current)
        elif isinstance(current, OSError) and current.errno in RESOURCE_ERRNOS:
            path = current.filename if current.filename is not None else UNKNOWN_PATH
            found.append(ResourceError(str(path), RESOURCE_ERRNOS[current.errno]))
        current = current.__cause__ or current.__context__
    return next((e for e in found if e.path != UNKNOWN_PATH), found[0] if found else None)
