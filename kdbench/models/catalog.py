"""The model registry: names, static facts (ModelInfo) and ``build_model``.

Besides the models registered one by one, ``MODELS`` resolves names by prefix: ``timm:<name>`` is any timm model
(see ``kdbench.models.timm_adapter``). Such names are accepted everywhere a model name is, but ``model_names()``
lists only kdbench's own models (timm has hundreds).
"""

from __future__ import annotations

import dataclasses
import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from kdbench.registry import Registry, UnknownNameError, closest_match_hint

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
    # Optional ``info_for(**kwargs) -> ModelInfo``: the facts when built with these kwargs (e.g. timm's img_size).
    info_for: Callable[..., ModelInfo] | None = None


class ModelRegistry(Registry[ModelEntry]):
    """The model registry, plus prefix resolvers (``timm:<name>``) and unlisted names.

    A resolver turns any name with its prefix into a ModelEntry (raising UnknownNameError for a bad name);
    unlisted models resolve like registered ones but are left out of ``names()``.
    """

    def __init__(self) -> None:
        super().__init__("model")
        self._resolvers: dict[str, Callable[[str], ModelEntry]] = {}
        self._unlisted: dict[str, ModelEntry] = {}

    def add_resolver(self, prefix: str, resolver: Callable[[str], ModelEntry]) -> None:
        """Resolve every name starting with ``prefix`` (e.g. ``"timm:"``) through ``resolver(name)``."""
        self._resolvers[prefix] = resolver

    def register_unlisted(self, name: str, entry: ModelEntry) -> None:
        """Register ``entry`` under ``name`` without listing it in ``names()``."""
        if name in self._items:
            raise ValueError(f"model '{name}' is already registered as a listed model")
        self._unlisted[name] = entry

    def unlisted_names(self) -> list[str]:
        """Names registered with ``register_unlisted``, sorted."""
        return sorted(self._unlisted)

    def get(self, name: str) -> ModelEntry:
        """The entry for ``name``: registered, unlisted, or resolved by prefix; else UnknownNameError."""
        for prefix, resolver in self._resolvers.items():
            if name.startswith(prefix):
                return resolver(name)
        if name in self._unlisted:
            return self._unlisted[name]
        try:
            return super().get(name)
        except UnknownNameError:
            if not (self._resolvers or self._unlisted):
                raise
        allowed = sorted([*self.names(), *self._unlisted])
        prefixes = "".join(f"; or '{prefix}<name>'" for prefix in self._resolvers)
        raise UnknownNameError(
            f"unknown model '{name}'{closest_match_hint(name, allowed)}; allowed: {', '.join(allowed)}{prefixes}"
        ) from None

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and any(name.startswith(prefix) for prefix in self._resolvers):
            try:
                self.get(name)
            except (KeyError, ValueError):
                return False
            return True
        return name in self._unlisted or super().__contains__(name)


MODELS = ModelRegistry()


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
    """Build the registered model ``name`` (or ``timm:<any timm model>``) with ``num_classes`` outputs."""
    entry = MODELS.get(name)
    if isinstance(num_classes, bool) or not hasattr(num_classes, "__index__") or operator.index(num_classes) < 1:
        raise ValueError(f"model '{name}': num_classes must be a positive int, got {num_classes!r}")
    num_classes = operator.index(num_classes)
    _check_kwargs(name, entry.factory, kwargs)
    return entry.factory(num_classes=num_classes, **kwargs)


def model_names(include_unlisted: bool = False) -> list[str]:
    """All registered model names, sorted (with ``include_unlisted``, also the unlisted ones, e.g. ViT presets).

    Any ``timm:<name>`` (``<name>`` from ``timm.list_models()``) is accepted too but never listed.
    """
    return sorted([*MODELS.names(), *MODELS.unlisted_names()]) if include_unlisted else MODELS.names()


def model_info(name: str, **kwargs: object) -> ModelInfo:
    """Static facts about the model ``name``; with ``kwargs``, about it as ``build_model(name, n, **kwargs)`` builds it.

    kwargs that change the facts: ``input_size``/``in_channels`` for kdbench's models that take them,
    ``img_size``/``in_chans`` for timm models and ViT presets. Unknown kwargs raise TypeError as in build_model.
    """
    entry = MODELS.get(name)
    if not kwargs:
        return entry.info
    _check_kwargs(name, entry.factory, kwargs)
    if entry.info_for is not None:
        return entry.info_for(**kwargs)
    changes = {key: kwargs[key] for key in ("input_size", "in_channels") if key in kwargs}
    return dataclasses.replace(entry.info, **changes) if changes else entry.info
