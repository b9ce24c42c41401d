"""Where a run executes: device, CPU threads, and the provenance recorded with every run."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_model(model: torch.nn.Module, device: torch.device, recipe: Any) -> torch.nn.Module:
    """``model`` on ``device``, in channels_last memory format and compiled in place when the recipe asks.

    ``nn.Module.compile`` compiles the forward in place, so state-dict keys, hooks and checkpoints stay those
    of the plain module.
    """
    model = model.to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if recipe.compile:
        model.compile()
    return model


def autocast_for(recipe: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when the recipe's precision is bf16, else a no-op context."""
    if recipe.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def configure_device(device: torch.device) -> None:
    """Let cuDNN pick the fastest convolution algorithms for the (fixed) input shapes of a run."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def configure_threads() -> int:
    """Honour SLURM_CPUS_PER_TASK for torch's intra-op threads; return the thread count in use."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit() and int(cpus) > 0:
        torch.set_num_threads(int(cpus))
    return torch.get_num_threads()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated on ``device``, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the kdbench source tree (with '+dirty' when modified), or None outside a checkout."""
    source = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def provenance(device: torch.device) -> dict[str, Any]:
    """Code, package versions and machine of this run."""
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "git_commit": git_commit(),
        "versions": {name: _package_version(name) for name in ("kdbench", "torchvision", "numpy", "timm")}
        | {"torch": torch.__version__, "python": sys.version.split()[0]},
        "device": str(device),
        "device_name": device_name,
        "hostname": socket.gethostname(),
        "threads": torch.get_num_threads(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
