"""CPU training steps reuse freed memory instead of page-faulting fresh memory for every large tensor (glibc).

glibc's malloc serves every allocation above its mmap threshold (adaptive, at most 32 MiB) with a fresh ``mmap``
and hands it back to the kernel on ``free``, so such a tensor is page-faulted in (and zeroed by the kernel)
anew each time it is allocated. A training step allocates the same large activations every step; with V·B
input rows (MLLD: 2·B, MLKD: 4·B) most of a resnet32x4's activations are above 32 MiB. Measured on a 2-core
VM (resnet32x4 → resnet8x4, batch 64): 2.6 GB page-faulted per step for MLLD and 9 GB for MLKD against 0.06 GB
for KD, the largest part of what the multi-view steps cost beyond V times KD's.

While ``keep_freed_memory`` is active, glibc serves large allocations from its heap (``M_MMAP_MAX = 0``) and
keeps freed memory in the process (``M_TRIM_THRESHOLD`` at its largest, 2 GiB), so from the second step on a
step reuses the memory of the one before: the process keeps its peak, as CUDA's caching allocator does. No
value changes. When the outermost block exits, the heap is trimmed and glibc's steady-state thresholds are set
(mmap above 32 MiB, trim above 64 MiB; setting any threshold ends glibc's own adaptation, so its earlier state
cannot be restored exactly). Other C libraries and non-CPU devices: nothing happens. ``KDBENCH_KEEP_FREED_MEMORY=0``
switches it off (e.g. under a preloaded jemalloc or tcmalloc, which cache on their own).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator

import torch

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
#: glibc defaults: the number of mmapped chunks allowed, the adaptive mmap threshold's ceiling on 64-bit systems.
GLIBC_MMAP_MAX = 65536
GLIBC_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
#: The environment variable that switches keep_freed_memory off ("0").
SWITCH = "KDBENCH_KEEP_FREED_MEMORY"

_depth = 0


def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (mallopt, malloc_trim), else None."""
    name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)  # by name: the process's global namespace may resolve mallopt elsewhere
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    return libc


@contextlib.contextmanager
def keep_freed_memory(device: torch.device) -> Iterator[bool]:
    """While the block runs (CPU device, glibc): large tensors come from the heap and freed memory is kept.

    Yields whether it is in effect. Blocks nest (only the outermost one changes and restores the settings); not
    meant for several threads at once.
    """
    global _depth
    libc = _glibc() if device.type == "cpu" and os.environ.get(SWITCH, "1") != "0" else None
    if libc is None:
        yield False
        return
    if _depth == 0:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # mallopt takes an int
    _depth += 1
    try:
        yield True
    finally:
        _depth -= 1
        if _depth == 0:
            libc.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
            libc.mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_THRESHOLD_MAX)
            libc.malloc_trim(0)


def release_freed_memory() -> bool:
    """Hand the heap's free memory back to the kernel now (glibc ``malloc_trim``); whether any was handed back."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
