"""Feature taps: named intermediate features collected by forward hooks.

A tapped model declares, as class or instance attributes:

* ``tap_modules: dict[str, str]`` — tap name → dotted submodule path whose *output* is the tap
  (``stage1`` … ``stageN``, ``pooled``; sometimes ``pre_stageK``, and ``stem`` where the reference code has a
  stem feature not counted as a stage, as VGG's block 0);
* ``tap_inputs: dict[str, str]`` (optional) — tap name → submodule path whose first *input* is the tap
  (used for ``pre_stageK``, the pre-ReLU value of a stage output);
* ``token_source: str | None`` (optional) — the spatial tap whose B×C×H×W map gives ``tokens`` (B×HW×C);
* ``classifier_module: str`` — path of the layer mapping ``pooled`` to the logits.

``logits`` is the model output and always available.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from kdbench.registry import closest_match_hint

LOGITS = "logits"
TOKENS = "tokens"


def _tapped(model: nn.Module) -> nn.Module:
    """The module that declares the taps (unwraps DataParallel/DDP ``.module`` and torch.compile)."""
    for _ in range(4):
        if hasattr(model, "tap_modules"):
            return model
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def _tap_sort_key(name: str) -> tuple[int, int, str]:
    """Order: logits, pooled, stage1…N, pre_stage1…N, others, tokens."""
    if name == LOGITS:
        return (0, 0, name)
    if name == "pooled":
        return (1, 0, name)
    match = re.fullmatch(r"(pre_)?stage(\d+)", name)
    if match:
        return (3 if match.group(1) else 2, int(match.group(2)), name)
    return (5 if name == TOKENS else 4, 0, name)


def _hooked_taps(model: nn.Module) -> dict[str, tuple[str, bool]]:
    """Tap name → (submodule path, from_input) for every hook-based tap the model declares."""
    inner = _tapped(model)
    taps = {name: (path, False) for name, path in getattr(inner, "tap_modules", {}).items()}
    taps.update({name: (path, True) for name, path in getattr(inner, "tap_inputs", {}).items()})
    return taps


def available_taps(model: nn.Module) -> list[str]:
    """Names of every tap ``model`` supports (logits, pooled, stage1…N, pre_stageK, tokens)."""
    names = {LOGITS, *_hooked_taps(model)}
    if getattr(_tapped(model), "token_source", None) in names:
        names.add(TOKENS)
    return sorted(names, key=_tap_sort_key)


def get_classifier(model: nn.Module) -> nn.Module:
    """The layer that maps the ``pooled`` tap to the logits."""
    inner = _tapped(model)
    path = getattr(inner, "classifier_module", None)
    if path is None:
        raise ValueError(f"{type(inner).__name__} declares no classifier_module")
    return inner.get_submodule(path)


def tokens_from_map(feature_map: torch.Tensor) -> torch.Tensor:
    """B×C×H×W map → B×(H·W)×C tokens (a view, no copy)."""
    if feature_map.dim() != 4:
        raise ValueError(f"tokens need a B×C×H×W map, got shape {tuple(feature_map.shape)}")
    return feature_map.flatten(2).transpose(1, 2)


ALL_STAGES = "stage*"


def expand_tap_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Replace the wildcard ``stage*`` by every ``stageK`` of ``model`` (in order); keep other names as given."""
    expanded: list[str] = []
    for name in names:
        if name == ALL_STAGES:
            expanded += [t for t in available_taps(model) if re.fullmatch(r"stage\d+", t)]
        else:
            expanded.append(name)
    return list(dict.fromkeys(expanded))


class FeatureTaps:
    """Forward hooks on ``model`` for the requested taps; ``taps(x)`` returns ``{"logits": …, <tap>: …}``.

    ``stage*`` in ``names`` stands for all of the model's ``stageK`` taps (e.g. for attention transfer).
    """

    def __init__(self, model: nn.Module, names: Iterable[str]) -> None:
        self.model = model
        self.names: list[str] = expand_tap_names(model, names)
        inner = _tapped(model)
        available = available_taps(model)
        for name in self.names:
            if name not in available:
                raise ValueError(
                    f"{type(inner).__name__} has no tap '{name}'{closest_match_hint(name, available)}; "
                    f"available taps: {', '.join(available)}"
                )
        self._token_source: str | None = getattr(inner, "token_source", None) if TOKENS in self.names else None
        hooked = _hooked_taps(model)
        wanted = [n for n in self.names if n in hooked]
        if self._token_source is not None and self._token_source not in wanted:
            wanted.append(self._token_source)
        self._store: dict[str, torch.Tensor] | None = None  # only a dict while __call__ runs
        self._handles: list[RemovableHandle] = []
        self._removed = False
        for name in wanted:
            path, from_input = hooked[name]
            module = inner.get_submodule(path)
            self._handles.append(module.register_forward_hook(self._make_hook(name, from_input)))

    def _make_hook(self, name: str, from_input: bool) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        """A hook that stores a reference to the module's output (or first input) under ``name``.

        The hook holds this object weakly, so a FeatureTaps nobody references is freed and unhooks itself.
        """
        owner = weakref.ref(self)

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            taps = owner()
            if taps is not None and taps._store is not None:
                taps._store[name] = args[0] if from_input else output

        return hook

    def __call__(self, x: Any) -> dict[str, torch.Tensor]:
        """Run ``model(x)``; return the logits and every requested tap."""
        if self._removed:
            raise RuntimeError("this FeatureTaps was removed; create a new one")
        self._store = store = {}
        try:
            logits = self.model(x)
        finally:
            self._store = None
        result: dict[str, torch.Tensor] = {LOGITS: logits}
        for name in self.names:
            if name == LOGITS:
                continue
            source = self._token_source if name == TOKENS else name
            assert source is not None
            if source not in store:
                raise RuntimeError(f"tap '{source}' of {type(_tapped(self.model)).__name__} did not run in forward")
            result[name] = tokens_from_map(store[source]) if name == TOKENS else store[source]
        return result

    def remove(self) -> None:
        """Remove every hook this object registered."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._removed = True

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __del__(self) -> None:
        for handle in getattr(self, "_handles", ()):
            handle.remove()


@torch.no_grad()
def tap_shapes(model: nn.Module, names: Iterable[str], input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes (no batch dim) of the requested taps, from one batch-2 forward in eval mode.

    ``input_shape`` is one sample's shape, e.g. ``(3, 32, 32)``. Each submodule's training flag is restored.
    """
    names = list(names)
    if not names:
        return {}
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = [(m, m.training) for m in model.modules()]
    taps = FeatureTaps(model, names)
    try:
        model.eval()
        out = taps(torch.zeros((2, *input_shape), device=device, dtype=dtype))
        return {name: tuple(out[name].shape[1:]) for name in taps.names}
    finally:
        taps.remove()
        for m, mode in modes:
            m.training = mode
