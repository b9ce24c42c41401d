"""The grid's `cluster:` section (Slurm resources) and the site profiles in slurm/profiles/ it can start from."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PROFILE_DIRS_ENV = "KDBENCH_SLURM_PROFILES"
BUILTIN_PROFILE_DIR = Path(__file__).resolve().parents[1] / "slurm" / "profiles"
_TIME_RE = re.compile(r"^(?:(?P<days>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d+):(?P<s>\d{1,2})$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")
SCALAR = str | int | float | bool


def parse_time_limit(value: Any) -> int:
    """Minutes from an int (minutes) or a Slurm time 'MM:SS', 'HH:MM:SS' or 'D-HH:MM:SS' (seconds round up)."""
    if isinstance(value, bool):
        raise ValueError(f"time = {value!r}: give minutes (e.g. 90) or 'HH:MM:SS'")
    if isinstance(value, int):
        minutes = value
    elif isinstance(value, str) and value.strip().isdigit():
        minutes = int(value)
    elif isinstance(value, str) and (match := _TIME_RE.match(value.strip())):
        parts = {k: int(v or 0) for k, v in match.groupdict().items()}
        seconds = ((parts["days"] * 24 + parts["h"]) * 60 + parts["m"]) * 60 + parts["s"]
        minutes = -(-seconds // 60)
    else:
        raise ValueError(f"time = {value!r}: give minutes (e.g. 90) or 'HH:MM:SS' / 'D-HH:MM:SS'")
    if minutes < 1:
        raise ValueError(f"time = {value!r}: Slurm's smallest time limit is 1 minute")
    return minutes


def profile_dirs() -> list[Path]:
    """Where profiles are looked up: $KDBENCH_SLURM_PROFILES (':'-separated), ./slurm/profiles, kdbench's own."""
    extra = [Path(p) for p in os.environ.get(PROFILE_DIRS_ENV, "").split(os.pathsep) if p]
    return [*extra, Path.cwd() / "slurm" / "profiles", BUILTIN_PROFILE_DIR]


def available_profiles() -> list[str]:
    """Names of every profile found in the profile directories."""
    return sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.yaml")})


def load_profile(name: str) -> dict[str, Any]:
    """The settings of profile ``name`` (a YAML mapping); ValueError names the profile and what exists."""
    for folder in profile_dirs():
        path = folder / f"{name}.yaml"
        if path.is_file():
            raw = yaml.safe_load(path.read_text()) or {}
            if not isinstance(raw, dict):
                raise ValueError(f"profile = '{name}': {path} must hold a mapping of cluster settings")
            if "profile" in raw:
                raise ValueError(f"profile = '{name}': {path} sets `profile`; profiles do not chain")
            unknown = sorted(set(raw) - set(ClusterConfig.model_fields))
            if unknown:
                raise ValueError(f"profile = '{name}': {path} has unknown field(s) {unknown}; "
                                 f"allowed: {', '.join(ClusterConfig.model_fields)}")
            return raw
    raise ValueError(f"profile = '{name}': no such profile; available: {', '.join(available_profiles()) or 'none'} "
                     f"(looked in {', '.join(str(d) for d in profile_dirs())})")


class ClusterConfig(BaseModel):
    """Slurm resources of every run of the grid; a named profile supplies defaults the grid's keys override."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: str | None = Field(default=None, description="a site profile: slurm/profiles/<name>.yaml")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time: int = Field(default=60, description="time limit per run: minutes, or 'HH:MM:SS' / 'D-HH:MM:SS'")
    nodes: int = Field(default=1, ge=1)
    gpus_per_node: int = Field(default=0, ge=0)
    tasks_per_node: int | None = Field(default=None, ge=1, description="default: gpus_per_node, or 1 without GPUs")
    cpus_per_task: int = Field(default=1, ge=1)
    mem: str | None = Field(default=None, description="memory per node, e.g. '16G' (Slurm --mem)")
    extra_sbatch_args: dict[str, SCALAR] = Field(default_factory=dict, description="more sbatch options, e.g. "
                                                 "{reservation: kd, exclusive: true}")
    setup: list[str] = Field(default_factory=list, description="shell lines run before each job, e.g. module load")
    array_parallelism: int = Field(default=64, ge=1, description="at most this many tasks of one array run at once")
    signal_delay_s: int | None = Field(default=None, ge=1, description="seconds before the time limit that the "
                                       "checkpoint-and-requeue signal comes; default min(90, time/4)")
    max_requeues: int = Field(default=3, ge=0, description="requeues after a time-out (preemptions do not count)")

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("profile"), str):
            return {**load_profile(data["profile"]), **data}
        return data

    @field_validator("time", mode="before")
    @classmethod
    def _time_minutes(cls, value: Any) -> int:
        return parse_time_limit(value)

    @field_validator("mem")
    @classmethod
    def _mem_format(cls, value: str | None) -> str | None:
        if value is not None and not _MEM_RE.match(value):
            raise ValueError(f"mem = {value!r}: give a size like '4096', '500M', '16G'")
        return value

    @field_validator("extra_sbatch_args")
    @classmethod
    def _no_managed_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        managed = {"array", "dependency", "output", "error", "job-name", "job_name", "signal", "wckey", "open-mode"}
        clash = sorted(managed & set(value))
        if clash:
            raise ValueError(f"extra_sbatch_args sets {clash}, which kdbench manages itself; remove them")
        return value

    @model_validator(mode="after")
    def _signal_within_limit(self) -> ClusterConfig:
        if self.signal_delay_s is not None and self.signal_delay_s >= self.time * 60:
            raise ValueError(f"signal_delay_s = {self.signal_delay_s}: must be shorter than the time limit "
                             f"({self.time * 60} s)")
        return self

    @property
    def tasks(self) -> int:
        """Tasks per node: as given, else one per GPU, else 1."""
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def signal_delay(self) -> int:
        """Seconds before the time limit that the USR2 (checkpoint and requeue) signal is sent."""
        return self.signal_delay_s or min(90, max(10, self.time * 60 // 4))

    def submitit_parameters(self) -> dict[str, Any]:
        """Keyword arguments for submitit.SlurmExecutor.update_parameters."""
        params: dict[str, Any] = dict(time=self.time, nodes=self.nodes, ntasks_per_node=self.tasks,
                                      cpus_per_task=self.cpus_per_task, signal_delay_s=self.signal_delay,
                                      array_parallelism=self.array_parallelism)
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        for key in ("partition", "account", "qos", "constraint", "mem"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if self.setup:
            params["setup"] = list(self.setup)
        if self.extra_sbatch_args:
            params["additional_parameters"] = dict(self.extra_sbatch_args)
        return params


def validate_cluster(raw: Any) -> ClusterConfig:
    """Validate a `cluster:` mapping on its own (tests, tools); raises ValueError with readable lines."""
    try:
        return ClusterConfig.model_validate(raw)
    except ValidationError as error:
        raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in error.errors())) from None
