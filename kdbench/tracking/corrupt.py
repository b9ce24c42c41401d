"""Unreadable files (truncated, invalid, foreign) are moved aside as `<name>.corrupt-<time>`, named in one line."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("kdbench")


def set_aside(path: Path, what: str, reason: str) -> Path | None:
    """Rename ``path`` to ``<name>.corrupt-<UTC time>`` and log one warning line; None if it could not be moved."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    reason = reason.strip().splitlines()[0][:200] if reason.strip() else "unreadable"
    try:
        path.rename(target)
    except FileNotFoundError:
        return None  # another process set it aside first
    except OSError as error:
        log.warning("warning: unreadable %s %s (%s); could not move it aside: %s", what, path, reason, error.strerror)
        return None
    log.warning("warning: unreadable %s %s (%s); moved aside to %s", what, path, reason, target.name)
    return target
