"""The model registry: names, static facts (ModelInfo) and ``build_model``."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from kdbench.registry import Registry, closest_match_hint

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a registered model: family and the input it expects by default."""

    name: str
    family: str
    input_size: int
    in_channels: int
    description: str


@dataclass(frozen=True)
class ModelEntry:
    """What the registry stores for one model name: its facts and its factory."""

    info: ModelInfo
    factory: ModelFactory


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    name: str, *, family: str, description: str, input_size: int = 32, in_channels: int = 3
) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(num_classes, **kwargs) -> nn.Module`` under ``name`` (decorator)."""

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in MODELS:
            old = MODELS.get(name).factory
            if (old.__module__, old.__qualname__) != (factory.__module__, factory.__qualname__):
                raise ValueError(f"model '{name}' is already registered by {old.__module__}.{old.__qualname__}")
        info = ModelInfo(name, family, input_size, in_channels, description)
        MODELS.register(name)(ModelEntry(info, factory))
        return factory

    return decorator


def _check_kwargs(name: str, factory: ModelFactory, kwargs: dict[str, object]) -> None:
    """Raise TypeError naming the model and any keyword argument its factory does not take."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    allowed = [p_name for p_name, p in params.items() if p_name != "num_classes" and p.kind in named]
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        bad = unknown[0]
        raise TypeError(
            f"model '{name}' got unexpected keyword argument '{bad}'{closest_match_hint(bad, allowed)}; "
            f"allowed: {', '.join(allowed) if allowed else '(none besides num_classes)'}"
        )


def build_model(name: str, num_classes: int, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` with ``num_classes`` outputs."""
    entry = MODELS.get(name)
    if isinstance(num_classes, bool) or not hasattr(num_classes, "__index__") or operator.index(num_classes) < 1:
        raise ValueError(f"model '{name}': num_classes must be a positive int, got {num_classes!r}")
    num_classes = operator.index(num_classes)
    _check_kwargs(name, entry.factory, kwargs)
    return entry.factory(num_classes=num_classes, **kwargs)


def model_names() -> list[str]:
    """All registered model names, sorted."""
    return MODELS.names()


def model_info(name: str) -> ModelInfo:
    """Static facts about the registered model ``name``."""
    return MODELS.get(name).info
