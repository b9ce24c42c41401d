"""keep_freed_memory: large CPU tensors reuse freed memory while it is active (glibc); nesting; switches;
release_freed_memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kdbench.engine import cpu_memory
from kdbench.engine.cpu_memory import keep_freed_memory

CPU = torch.device("cpu")

# In a fresh process (glibc's default state): minor page faults of a 48 MiB tensor (above glibc's largest mmap
# threshold, 32 MiB) allocated, written and freed 4 times, first as glibc does it, then inside the block.
PROBE = """
import json, resource, torch
from kdbench.engine.cpu_memory import keep_freed_memory, release_freed_memory
FLOATS = 48 * 2**20 // 4
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
def faults(repeats):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        torch.empty(FLOATS).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = faults(4)
with keep_freed_memory(torch.device("cpu")) as kept:
    faults(10)  # the heap grows to a steady state (aligned allocations fragment it a little)
    while_kept = faults(4)
    held = resident()
    released = release_freed_memory()
    handed_back = held - resident()
pages = FLOATS * 4 // resource.getpagesize()
print(json.dumps({"kept": kept, "default": default, "while_kept": while_kept, "pages": pages, "released": released,
                  "handed_back": handed_back}))
"""


@pytest.mark.skipif(cpu_memory._glibc() is None, reason="glibc's mallopt only")
def test_large_tensors_reuse_freed_memory_while_kept() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["kept"]
    assert probe["default"] >= 3 * probe["pages"], probe  # glibc: mmapped and faulted in afresh every time
    assert probe["while_kept"] < probe["pages"], probe  # reused: not even one allocation's pages are new
    assert probe["released"] and probe["handed_back"] >= 48 * 2**20, probe  # release_freed_memory


def test_nesting_only_the_outermost_block_switches(monkeypatch) -> None:
    calls = []
    if cpu_memory._glibc() is None:
        pytest.skip("glibc's mallopt only")
    real = cpu_memory._glibc()

    class Recorder:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return real.mallopt(param, value)

        def malloc_trim(self, pad: int) -> int:
            calls.append(("trim", pad))
            return real.malloc_trim(pad)

    monkeypatch.setattr(cpu_memory, "_glibc", Recorder)
    with keep_freed_memory(CPU), keep_freed_memory(CPU):
        assert calls == [(cpu_memory.M_MMAP_MAX, 0), (cpu_memory.M_TRIM_THRESHOLD, 2**31 - 1)]
    assert calls[-1] == ("trim", 0) and (cpu_memory.M_MMAP_MAX, cpu_memory.GLIBC_MMAP_MAX) in calls
    assert len(calls) == 6


def test_switched_off_by_the_environment_and_for_other_devices(monkeypatch) -> None:
    with keep_freed_memory(torch.device("cuda")) as kept:
        assert not kept
    monkeypatch.setenv(cpu_memory.SWITCH, "0")
    with keep_freed_memory(CPU) as kept:
        assert not kept
