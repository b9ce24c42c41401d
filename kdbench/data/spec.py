"""The dataset part of a run's specification: which data, which long-tailed subset, which validation set."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LongTailSpec(BaseModel):
    """Long-tailed subsampling of a training set (docs/protocol.md: LDAM-DRW construction)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile: Literal["exp", "step"] = "exp"
    imbalance_ratio: float = Field(ge=1.0, description="rho = n_max / n_min; must be >= 1")


class DatasetSpec(BaseModel):
    """Everything that determines the images and labels a run trains, validates and tests on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    root: str | None = Field(default=None, description="local folder; location only, not part of run ids")
    download: bool = Field(default=False, description="let torchvision fetch the data where there is internet")
    split_dir: str | None = Field(default=None, description="imagenet_lt: folder of the split files; default: root")
    image_size: int | None = Field(default=None, ge=8, description="side of the model's input; default: the model's")
    long_tail: LongTailSpec | None = None
    subset_seed: int = Field(default=0, description="seed of the long-tail and validation subsets")
    val_per_class: int = Field(default=10, ge=0, description="long-tailed: balanced validation from discarded images")
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0, description="balanced: stratified held-out share")
    synthetic_classes: int = Field(default=10, ge=2, description="synthetic dataset only")
    synthetic_train_per_class: int = Field(default=50, ge=1, description="synthetic dataset only")
    synthetic_test_per_class: int = Field(default=20, ge=1, description="synthetic dataset only")

    @property
    def variant(self) -> str:
        """Short human label of the dataset variant, e.g. 'cifar100', 'cifar100-lt-exp-100'."""
        if self.long_tail is None:
            return self.name
        ratio = self.long_tail.imbalance_ratio
        ratio_text = f"{ratio:g}"
        return f"{self.name}-lt-{self.long_tail.profile}-{ratio_text}"
