"""The grid file: pydantic models, YAML loading through safe_load, and one-line errors that name the field."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from kdbench.clusterconf import ClusterConfig
from kdbench.config_errors import ConfigError, validation_lines
from kdbench.data.spec import DatasetSpec, LongTailSpec
from kdbench.plugins import import_plugins
from kdbench.recipe import Recipe, RecipeOverride

__all__ = [
    "TRUSTED",
    "ClusterConfig",
    "ConfigError",
    "DatasetSpec",
    "ExecutorConfig",
    "GridConfig",
    "LongTailSpec",
    "MethodEntry",
    "Override",
    "PairConfig",
    "Recipe",
    "RecipeOverride",
    "TrackingConfig",
    "TuningConfig",
    "import_plugins",
    "load_grid",
    "parse_grid",
]


#: Validation context of a grid that was validated in full before with today's code (kdbench.grid.plan_cache):
#: the checks against the method, model and dataset registries, which import torch, are skipped.
TRUSTED = {"kdbench_trusted": True}


def _trusted(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("kdbench_trusted"))


class ModelChoice(BaseModel):
    """An architecture name with optional constructor keyword arguments."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(default=None, description="teachers: a state-dict file, or 'pretrained'")
    sha256: str | None = Field(default=None, description="the weights file's sha256, checked before use")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"arch": data} if isinstance(data, str) else data

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError(f"'{value}' is not a sha256 digest; allowed: 64 hexadecimal digits")
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _checksum_needs_file(self, info: ValidationInfo) -> ModelChoice:
        if self.sha256 is not None and self.weights in (None, "pretrained"):
            raise ValueError(f"sha256 checks a weights file; {self.arch} has weights = {self.weights!r}")
        if self.weights == "pretrained" and not _trusted(info):
            from kdbench.models.pretrained import pretrained_source

            pretrained_source(self.arch)  # raises naming the models that have library weights
        return self

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str, info: ValidationInfo) -> str:
        if _trusted(info):
            return value
        from kdbench.models import MODELS

        MODELS.get(value)  # raises with the closest match and the allowed names
        return value


class PairConfig(BaseModel):
    """One teacher → student pair."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    teacher: ModelChoice
    student: ModelChoice

    @field_validator("student")
    @classmethod
    def _student_is_trained(cls, value: ModelChoice) -> ModelChoice:
        if value.weights is not None:
            raise ValueError(f"weights = '{value.weights}': a student is always trained; weights apply to teachers")
        return value

    @property
    def label(self) -> str:
        """'teacher->student' for tables."""
        return f"{self.teacher.arch}->{self.student.arch}"


class MethodEntry(BaseModel):
    """A method of the grid with its hyper-parameters; `label` tells two settings of one method apart."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    sweep: dict[str, list[Any]] | None = Field(default=None, description="values to tune on validation (tuning:)")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _known_method(cls, value: str, info: ValidationInfo) -> str:
        if _trusted(info):
            return value
        from kdbench.loss import METHODS

        METHODS.get(value)
        return value

    @model_validator(mode="after")
    def _known_params(self, info: ValidationInfo) -> MethodEntry:
        if _trusted(info):
            return self
        from kdbench.loss import METHODS

        METHODS.get(self.name).check_hparams(self.params)
        for key, values in (self.sweep or {}).items():
            if not values:
                raise ValueError(f"sweep.{key} = []: a sweep needs at least one value")
            try:
                for value in values:
                    METHODS.get(self.name).check_hparams({**self.params, key: value})
            except ValueError as error:
                raise ValueError(f"sweep.{key}: {error}") from None
            if key in self.params:
                raise ValueError(f"sweep.{key}: also fixed in params ({self.params[key]!r}); give it in one place")
        return self

    @property
    def display(self) -> str:
        """The label, or the method name."""
        return self.label or self.name


class TuningConfig(BaseModel):
    """Equal tuning: each method's sweep, trained on the validation split, up to ``budget`` configurations."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget: int = Field(ge=1, description="configurations per method (all of a smaller sweep)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="training seeds per config")
    select_on: Literal["val_top1", "val_balanced_acc", "best_val_top1"] = Field(
        default="val_top1", description="final-epoch validation top-1 / balanced accuracy, or the best epoch's")
    epochs: int | None = Field(default=None, gt=0, description="default: the recipe's; milestones scale with it")
    sampling: Literal["random", "grid"] = Field(default="random", description="which configs when the sweep is "
                                                "larger than the budget: a seeded random sample, or the first")
    seed: int = Field(default=0, description="seed of the random sample of configurations")
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0, description="balanced datasets without a validation "
                                "split: tuning runs hold out this stratified share of train (final runs do not)")


class OverrideWhen(BaseModel):
    """Which runs an override applies to; every field given must match."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: Literal["teacher", "student"] | None = None
    teacher: str | None = None
    student: str | None = None
    method: str | None = Field(default=None, description="a method label (or name) of this grid")
    dataset: str | None = Field(default=None, description="a dataset name or variant, e.g. cifar100-lt-exp-100")


class Override(BaseModel):
    """Per-pair, per-method or per-dataset settings, applied in file order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    when: OverrideWhen
    recipe: RecipeOverride = Field(default_factory=RecipeOverride)
    params: dict[str, Any] = Field(default_factory=dict)


#: Datasets whose held-out images are in ImageNet-1k's training set: pretrained ImageNet teachers leak there.
LEAKY_PRETRAINED_DATASETS = ("imagenet_lt",)

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")


def check_device(value: str) -> str:
    """A device name kdbench accepts (auto, cpu, mps, cuda, cuda:N); ValueError naming the value otherwise."""
    if not DEVICE_PATTERN.match(str(value)):
        raise ValueError(f"'{value}' is not a device; allowed: auto, cpu, cuda, cuda:N, mps")
    return str(value)


class ExecutorConfig(BaseModel):
    """Where runs execute."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["local", "debug", "slurm"] = "local"
    workers: int | Literal["auto"] = Field(default=1, description="local: parallel run processes; auto: one "
                                           "single-threaded process per usable CPU on the CPU, one on a GPU")
    device: str = Field(default="auto", description="auto (cuda when available), cpu, cuda, cuda:N")
    loader_workers: int | None = Field(default=None, ge=0, description="DataLoader workers per run for image-file "
                                       "datasets; default: the CPUs the run may use minus one (at most 16)")

    @field_validator("workers")
    @classmethod
    def _positive_workers(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError(f"workers = {value}: allowed: an integer >= 1, or auto")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device(value)


class TrackingConfig(BaseModel):
    """MLflow tracking; the run record stays the source of truth."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mlflow: bool = True
    uri: str | None = Field(default=None, description="default sqlite:///<abs results root>/mlflow.db")
    experiment: str | None = Field(default=None, description="default: the grid name")


class GridConfig(BaseModel):
    """A whole grid: datasets × pairs × methods × seeds, with a recipe, overrides and where to run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="a plain name: the results folder results/<name>")
    plugins: list[str] = Field(default_factory=list)
    datasets: list[DatasetSpec] = Field(min_length=1)
    pairs: list[PairConfig] = Field(min_length=1)
    methods: list[MethodEntry] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    teacher_seed: int | Literal["same"] = Field(default=0, description="'same': one teacher per student seed")
    recipe: Recipe = Field(default_factory=Recipe)
    teacher_recipe: RecipeOverride = Field(default_factory=RecipeOverride)
    overrides: list[Override] = Field(default_factory=list)
    tuning: TuningConfig | None = Field(default=None, description="train methods' sweeps on validation first")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    cluster: ClusterConfig | None = Field(default=None, description="Slurm resources (executor kind slurm)")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output: str = Field(default="results", description="results root; relative to the working directory")
    allow_leaky_teacher: bool = Field(default=False, description="accept ImageNet-1k pretrained teachers on "
                                      "imagenet_lt (they have seen its held-out tail and test images)")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", value):
            raise ValueError(f"'{value}' is not a plain name; allowed: letters, digits, _ . - (no path separators, "
                             "no leading dot, not '.' or '..')")
        return value

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"{value} repeats a seed; each seed must appear once")
        return value

    @field_validator("datasets")
    @classmethod
    def _datasets_valid(cls, value: list[DatasetSpec], info: ValidationInfo) -> list[DatasetSpec]:
        if _trusted(info):
            return value
        from kdbench.data import validate_dataset_spec

        seen: dict[str, int] = {}
        for index, spec in enumerate(value):
            try:
                validate_dataset_spec(spec, require_files=False)  # `kdbench run` checks files before submitting
            except ValueError as error:
                raise ValueError(f"datasets[{index}]: {error}") from None
            identity = spec.model_dump_json(exclude={"root", "download", "split_dir"})
            if identity in seen:
                raise ValueError(f"datasets[{index}] repeats datasets[{seen[identity]}] ({spec.variant})")
            seen[identity] = index
        return value

    @field_validator("pairs")
    @classmethod
    def _pairs_unique_and_compatible(cls, value: list[PairConfig], info: ValidationInfo) -> list[PairConfig]:
        if _trusted(info):
            return value
        from kdbench.models import model_info

        seen: dict[str, int] = {}
        for index, pair in enumerate(value):
            key = pair.model_dump_json()
            if key in seen:
                raise ValueError(f"pairs[{index}]: duplicate pair {pair.label} (same as pairs[{seen[key]}])")
            seen[key] = index
            t_info = model_info(pair.teacher.arch, **pair.teacher.kwargs)
            s_info = model_info(pair.student.arch, **pair.student.kwargs)
            t_shape = (t_info.in_channels, t_info.input_size)
            if t_shape != (s_info.in_channels, s_info.input_size):
                raise ValueError(
                    f"pairs[{index}]: teacher {pair.teacher.arch} takes {t_info.in_channels}×{t_info.input_size}² "
                    f"inputs but student {pair.student.arch} takes {s_info.in_channels}×{s_info.input_size}²; "
                    "a pair must share its input"
                )
        return value

    @field_validator("methods")
    @classmethod
    def _methods_distinct(cls, value: list[MethodEntry]) -> list[MethodEntry]:
        labels = [entry.display for entry in value]
        for index, label in enumerate(labels):
            if label in labels[:index]:
                raise ValueError(f"methods[{index}]: '{label}' appears twice; give one a distinct `label`")
        return value

    @model_validator(mode="after")
    def _tuning_has_what_it_needs(self) -> GridConfig:
        swept = [i for i, m in enumerate(self.methods) if m.sweep]
        if swept and self.tuning is None:
            raise ValueError(f"methods[{swept[0]}].sweep needs a `tuning:` section (budget, seeds, select_on)")
        if self.tuning is None or not swept:
            return self
        for index, dataset in enumerate(self.datasets):
            if dataset.name == "imagenet_lt":
                continue  # its split files give the validation set
            if dataset.long_tail is not None:
                has_val = dataset.val_per_class > 0
            else:
                has_val = dataset.val_fraction > 0 or self.tuning.val_fraction > 0
            if not has_val:
                raise ValueError(
                    f"datasets[{index}] ({dataset.variant}) has no validation split to tune on (never the test "
                    "set); set tuning.val_fraction or the dataset's val_fraction (balanced: a stratified slice of "
                    "train), or val_per_class (long-tailed)")
        return self

    @model_validator(mode="after")
    def _no_leaky_teacher(self) -> GridConfig:
        leaky = [d.name for d in self.datasets if d.name in LEAKY_PRETRAINED_DATASETS]
        if not leaky or self.allow_leaky_teacher:
            return self
        for index, pair in enumerate(self.pairs):
            if pair.teacher.weights == "pretrained":
                raise ValueError(
                    f"pairs[{index}].teacher.weights = 'pretrained' on {leaky[0]}: the library's ImageNet-1k weights "
                    f"have seen {leaky[0]}'s held-out tail images and its test images (ImageNet val), so every "
                    "number distilled from them is optimistic; train the teacher on the split (remove weights) or "
                    "set allow_leaky_teacher: true to accept this knowingly")
        return self

    @model_validator(mode="after")
    def _overrides_match_something(self) -> GridConfig:
        known = {
            "teacher": {p.teacher.arch for p in self.pairs},
            "student": {p.student.arch for p in self.pairs},
            "method": {m.display for m in self.methods} | {m.name for m in self.methods},
            "dataset": {d.name for d in self.datasets} | {d.variant for d in self.datasets},
        }
        from kdbench.registry import closest_match_hint

        for index, override in enumerate(self.overrides):
            for field, allowed in known.items():
                wanted = getattr(override.when, field)
                if wanted is not None and wanted not in allowed:
                    options = sorted(allowed)
                    raise ValueError(
                        f"overrides[{index}].when.{field} = '{wanted}' matches nothing in this grid"
                        f"{closest_match_hint(wanted, options)}; allowed: {', '.join(options)}"
                    )
        return self


def parse_grid(raw: Any, *, default_name: str = "grid", base_dir: Path | None = None,
               data_root: str | None = None) -> GridConfig:
    """Validate a grid given as a mapping; import its plugins first. Raise ConfigError on bad input."""
    import kdbench.methods  # noqa: F401  (registers the built-in methods)

    if not isinstance(raw, dict):
        raise ConfigError(f"the grid must be a mapping of fields, got {type(raw).__name__}")
    plugins = import_plugins(raw.get("plugins"), base_dir or Path.cwd())
    raw = {"name": default_name, **raw}
    if plugins:
        raw["plugins"] = plugins
    if data_root is not None and isinstance(raw.get("datasets"), list):
        raw["datasets"] = [{**d, "root": data_root} if isinstance(d, dict) else d for d in raw["datasets"]]
    if isinstance(raw.get("datasets"), list):
        raw["datasets"] = [_expand_root(d) for d in raw["datasets"]]
    if isinstance(raw.get("pairs"), list):
        raw["pairs"] = [_expand_weights(p, base_dir or Path.cwd()) for p in raw["pairs"]]
    try:
        return GridConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError("\n".join(validation_lines(error, GridConfig))) from None


def _expand_weights(pair: Any, base_dir: Path) -> Any:
    """A pair whose teacher weights file is made absolute (relative to the grid file's folder)."""
    teacher = pair.get("teacher") if isinstance(pair, dict) else None
    weights = teacher.get("weights") if isinstance(teacher, dict) else None
    if not isinstance(weights, str) or weights == "pretrained":
        return pair
    path = (base_dir / os.path.expanduser(os.path.expandvars(weights))).resolve()
    return {**pair, "teacher": {**teacher, "weights": str(path)}}


def _expand_root(dataset: Any) -> Any:
    if isinstance(dataset, dict) and isinstance(dataset.get("root"), str):
        root = os.path.abspath(os.path.expanduser(os.path.expandvars(dataset["root"])))
        return {**dataset, "root": root}
    return dataset


def load_grid(path: str | Path, *, data_root: str | None = None) -> GridConfig:
    """Read a grid file with yaml.safe_load and validate it; ConfigError names the file and field."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read grid file: {error.strerror or error}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}:{where}: unreadable YAML: {problem}") from None
    try:
        return parse_grid(raw, default_name=path.stem, base_dir=path.parent, data_root=data_root)
    except ConfigError as error:
        raise ConfigError("\n".join(f"{path}: {line}" for line in str(error).splitlines())) from None
