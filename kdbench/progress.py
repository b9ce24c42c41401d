"""Elapsed time and ETA for progress lines: duration formatting and the arithmetic behind each estimate."""

from __future__ import annotations

import math


def format_duration(seconds: float | None) -> str:
    """'0:07', '12:34', '1:02:03', '3d 04:05:06'; '?' when unknown (None, negative or not finite)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def epoch_eta(session_seconds: float, epochs_in_session: int, epochs_left: int) -> float | None:
    """Seconds left in a run: the mean wall time of the epochs trained in this session × the epochs left."""
    if epochs_in_session <= 0:
        return None
    return session_seconds / epochs_in_session * max(0, epochs_left)


def rate_eta(done_cost: float, elapsed: float, remaining_cost: float) -> float | None:
    """Seconds left when ``done_cost`` units of work took ``elapsed`` wall seconds and ``remaining_cost`` are left.

    Units are relative run costs (estimated seconds or run counts): the observed rate (units per wall second)
    carries the machine's real speed and parallelism, the costs only weigh the runs against each other.
    """
    if remaining_cost <= 0:
        return 0.0
    if done_cost <= 0 or elapsed <= 0:
        return None
    return remaining_cost * elapsed / done_cost


def progress_text(elapsed: float, eta: float | None) -> str:
    """'elapsed 1:23, ETA 3:10' ('ETA ?' until an estimate exists)."""
    return f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}"
