"""Training recipes: the full Recipe (docs/protocol.md's CIFAR defaults) and partial overrides of it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Recipe(BaseModel):
    """A training recipe (docs/protocol.md defaults are the CIFAR ones)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=240, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0)
    milestones: tuple[int, ...] = (150, 180, 210)
    gamma: float = Field(default=0.1, gt=0)
    augmentation: Literal["default", "crop_flip", "jitter", "none"] = "default"
    precision: Literal["fp32", "bf16"] = "fp32"
    eval_batch_size: int = Field(default=256, gt=0)
    lr_scaling: Literal["none", "linear"] = Field(
        default="none", description="linear: lr × batch_size / lr_reference_batch (Goyal et al. 2017)")
    lr_reference_batch: int = Field(default=256, gt=0, description="the batch size `lr` is given for (lr_scaling)")
    channels_last: bool = Field(default=False, description="CNNs in NHWC memory format (faster on GPUs)")
    compile: bool = Field(default=False, description="torch.compile the student and teacher (opt-in)")

    @property
    def effective_lr(self) -> float:
        """The learning rate the optimiser starts from, after lr_scaling."""
        return self.lr * self.batch_size / self.lr_reference_batch if self.lr_scaling == "linear" else self.lr

    @field_validator("milestones")
    @classmethod
    def _milestones_increasing(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if list(value) != sorted(set(value)) or any(m <= 0 for m in value):
            raise ValueError(f"{list(value)} must be strictly increasing positive epochs")
        return value


class RecipeOverride(BaseModel):
    """Some recipe fields, applied over the base recipe where an override matches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int | None = Field(default=None, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    lr: float | None = Field(default=None, gt=0)
    momentum: float | None = Field(default=None, ge=0)
    nesterov: bool | None = None
    weight_decay: float | None = Field(default=None, ge=0)
    milestones: tuple[int, ...] | None = None
    gamma: float | None = Field(default=None, gt=0)
    augmentation: Literal["default", "crop_flip", "jitter", "none"] | None = None
    precision: Literal["fp32", "bf16"] | None = None
    eval_batch_size: int | None = Field(default=None, gt=0)
    lr_scaling: Literal["none", "linear"] | None = None
    lr_reference_batch: int | None = Field(default=None, gt=0)
    channels_last: bool | None = None
    compile: bool | None = None

    def apply(self, recipe: Recipe) -> Recipe:
        """Return ``recipe`` with the fields set here replaced (validated again)."""
        changes = self.model_dump(exclude_none=True)
        return Recipe.model_validate({**recipe.model_dump(), **changes}) if changes else recipe
