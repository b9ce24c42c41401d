"""Failpoints for fault-injection tests and benchmarks: the process kills itself (SIGKILL) at a named point.

`KDBENCH_FAILPOINT=after-record` (a comma-separated list) makes `failpoint("after-record")` kill this process,
exactly as a node failure or `kill -9` at that instant would. Unset (always, outside tests), it costs one
environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "KDBENCH_FAILPOINT"


def failpoint(name: str) -> None:
    """SIGKILL this process when ``name`` is listed in $KDBENCH_FAILPOINT."""
    armed = os.environ.get(ENV_VAR)
    if armed and name in armed.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
