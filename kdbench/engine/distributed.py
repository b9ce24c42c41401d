"""One process per device with torch.distributed: rank facts from the launcher's environment, and the collectives
the engine and stateful methods need.

Launchers. torchrun (or any launcher exporting RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) is read
first; otherwise Slurm's task variables (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), inside an srun step only
(one that sets SLURM_STEP_NUM_TASKS: the batch script itself also carries SLURM_PROCID=0 and SLURM_NTASKS=N, yet
is one process and stays so). The rendezvous host is then the first node of the step (SLURM_STEP_NODELIST, else
SLURM_JOB_NODELIST, expanded by ``scontrol show hostnames`` or ``first_host``) and the port is derived from
SLURM_JOB_ID, unless MASTER_ADDR / MASTER_PORT are set. A world of one process initialises nothing: every helper
below is then a no-op returning its input, so a single process pays nothing.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from kdbench.engine.environment import resolve_device

#: MASTER_PORT derived from SLURM_JOB_ID: SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN (unprivileged, below the
#: usual ephemeral range 32768+, so concurrent jobs on one node rarely collide).
SLURM_PORT_BASE = 12000
SLURM_PORT_SPAN = 20000
#: Bytes per gradient bucket all-reduced at once (bounds the transient copy; one collective per bucket).
GRADIENT_BUCKET_BYTES = 64 << 20
#: How long a rank waits in a collective for the others before failing (a crashed rank must not hang the run).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


class DistributedSetupError(RuntimeError):
    """The launcher's environment does not describe a valid process group."""


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, number of processes, rank on its node, rendezvous address."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = ""
    master_port: int = 0
    source: str = "single"  # "torch", "slurm" or "single"

    @property
    def is_main(self) -> bool:
        """Rank 0 writes records, checkpoints, MLflow and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


SINGLE = DistInfo()


def _int_var(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise DistributedSetupError(f"environment variable {name}={value!r} must be an integer") from None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[07-09,12],cpu1' -> 'gpu07'; 'a[1-2]-b[3-4]' -> 'a1-b3'."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise DistributedSetupError("the Slurm node list is empty")
    depth, end = 0, len(nodelist)
    for position, char in enumerate(nodelist):  # the first top-level comma ends the first entry
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = position
            break
    entry = nodelist[:end]
    if entry.count("[") != entry.count("]"):
        raise DistributedSetupError(f"cannot parse the Slurm node list {nodelist!r}: unbalanced brackets")
    # each bracket group contributes its first value, zero padding kept ("07-09" -> "07")
    return re.sub(r"\[([^\]]*)\]", lambda match: re.split(r"[,-]", match.group(1))[0], entry)


@functools.lru_cache(maxsize=8)  # asked once per run by the CLI, runner and engine: one scontrol call
def slurm_first_host(nodelist: str) -> str:
    """First host of ``nodelist`` via ``scontrol show hostnames`` when available, else ``first_host``."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            result = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                                    timeout=20, check=True)
            hosts = result.stdout.split()
            if hosts:
                return hosts[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return first_host(nodelist)


def dist_info_from_env(env: Mapping[str, str] | None = None) -> DistInfo:
    """Rank facts from torch launcher variables, else Slurm task variables, else a single process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
        local = _int_var(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        if world > 1:
            missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
            if missing:
                raise DistributedSetupError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set; "
                                            "launch with torchrun or export them")
        info = DistInfo(rank, world, local, env.get("MASTER_ADDR", ""),
                        _int_var(env, "MASTER_PORT") if env.get("MASTER_PORT") else 0, "torch")
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "SLURM_STEP_NUM_TASKS" in env:
        rank, world = _int_var(env, "SLURM_PROCID"), _int_var(env, "SLURM_NTASKS")
        local = _int_var(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        if world <= 1:
            return SINGLE
        addr = env.get("MASTER_ADDR") or slurm_first_host(env.get("SLURM_STEP_NODELIST")
                                                          or env.get("SLURM_JOB_NODELIST", ""))
        if env.get("MASTER_PORT"):
            port = _int_var(env, "MASTER_PORT")
        elif env.get("SLURM_JOB_ID"):
            port = SLURM_PORT_BASE + _int_var(env, "SLURM_JOB_ID") % SLURM_PORT_SPAN
        else:
            raise DistributedSetupError(f"SLURM_NTASKS={world} but neither MASTER_PORT nor SLURM_JOB_ID is set")
        info = DistInfo(rank, world, local, addr, port, "slurm")
    else:
        return SINGLE
    if world < 1 or not 0 <= rank < world:
        raise DistributedSetupError(f"rank {rank} is not in a world of size {world} ({info.source} variables)")
    return info if world > 1 else SINGLE


def device_for(name: str, info: DistInfo) -> torch.device:
    """The device of this rank: 'auto' is CUDA when available, else CPU; a CUDA rank gets cuda:LOCAL_RANK."""
    device = resolve_device(name)
    if device.type == "cuda" and info.distributed and device.index is None:
        count = torch.cuda.device_count()
        if info.local_rank >= count:
            raise DistributedSetupError(f"local rank {info.local_rank} has no GPU: this node shows {count}; "
                                        "launch one process per GPU (Slurm: tasks_per_node = gpus_per_node)")
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda" and info.distributed:
        torch.cuda.set_device(device)
    return device


def init_distributed(device: torch.device, env: Mapping[str, str] | None = None) -> DistInfo:
    """Join the process group the environment describes (nccl on CUDA, gloo otherwise); reuse one already joined."""
    if dist.is_available() and dist.is_initialized():
        return current_info(env)
    info = dist_info_from_env(env)
    if not info.distributed:
        return info
    if not dist.is_available():
        raise DistributedSetupError("this PyTorch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{info.master_addr}:{info.master_port}", rank=info.rank,
                            world_size=info.world_size, timeout=COLLECTIVE_TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    atexit.register(shutdown)  # kept for the process's later runs (a torchrun grid), left at exit
    return info


def current_info(env: Mapping[str, str] | None = None) -> DistInfo:
    """Rank facts of the joined process group (or of the environment when none is joined)."""
    if not (dist.is_available() and dist.is_initialized()):
        return dist_info_from_env(env)
    parsed = dist_info_from_env(env)
    return DistInfo(dist.get_rank(), dist.get_world_size(), parsed.local_rank, parsed.master_addr,
                    parsed.master_port, parsed.source)


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active_world() -> int:
    """Processes in the joined group; 1 when none is joined (the cheap test every helper starts with)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    """Wait for every rank."""
    if active_world() > 1:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it."""
    if active_world() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order; ranks may hold different row counts.

    One small all-gather of the row counts (read on the host), then one all-gather of tensors padded to the
    largest count. No gradient flows through the result.
    """
    world = active_world()
    if world == 1:
        return tensor
    rows = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    counts = [torch.zeros_like(rows) for _ in range(world)]
    dist.all_gather(counts, rows)
    sizes = [int(count) for count in counts]
    largest = max(sizes)
    padded = tensor.detach().new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor.detach()
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded.contiguous())
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)])


def _buckets(tensors: list[torch.Tensor], limit: int) -> Iterable[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        same_kind = not bucket or (bucket[0].dtype == tensor.dtype and bucket[0].device == tensor.device)
        if bucket and (size + nbytes > limit or not same_kind):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += nbytes
    if bucket:
        yield bucket


def _reduce_flat(tensors: list[torch.Tensor], *, average: bool, limit: int = GRADIENT_BUCKET_BYTES) -> None:
    """Sum (or average) a list of tensors over ranks in place: one flat all-reduce per bucket."""
    world = active_world()
    for bucket in _buckets(tensors, limit):
        flat = torch.cat([tensor.reshape(-1) for tensor in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if average:
            flat.div_(world)
        pieces = flat.split([tensor.numel() for tensor in bucket])
        torch._foreach_copy_(bucket, [piece.view_as(tensor) for piece, tensor in zip(pieces, bucket, strict=True)])


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace every existing ``.grad`` by its mean over ranks (bucketed flat all-reduces).

    Every rank must hold gradients for the same parameters (true when the loss's structure does not depend on
    the data, as for every built-in method); parameters without a gradient keep none, as in one process.
    """
    if active_world() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if grads:
        _reduce_flat(grads, average=True)


def average_batchnorm_statistics(*modules: nn.Module) -> None:
    """Average BatchNorm running means and variances over ranks (each rank saw its own shards).

    The mean of the ranks' running means is exactly the running mean of the global batches' means when the
    shards are equal; the variances are averaged as an estimate. ``num_batches_tracked`` is equal on all ranks.
    """
    if active_world() == 1:
        return
    buffers = [buffer for module in modules for layer in module.modules()
               if isinstance(layer, nn.modules.batchnorm._BatchNorm)
               for buffer in (layer.running_mean, layer.running_var) if buffer is not None]
    if buffers:
        _reduce_flat(buffers, average=True)


def broadcast_state(*modules: nn.Module, src: int = 0) -> None:
    """Make every parameter and buffer of ``modules`` equal to rank ``src``'s (once, after building or resuming)."""
    if active_world() == 1:
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)
