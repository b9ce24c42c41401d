"""One small registry type: register by decorator, look up with a helpful error, load entry points."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered; the message names the closest match and the allowed names."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


def closest_match_hint(name: str, allowed: list[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest allowed name, or ''."""
    lowered = {a.lower(): a for a in allowed}
    if name.lower() in lowered:
        return f" (did you mean '{lowered[name.lower()]}'?)"
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Named objects of one kind (methods, models, datasets)."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers an object under ``name``."""

        def decorator(obj: T) -> T:
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                same_origin = getattr(existing, "__qualname__", None) == getattr(obj, "__qualname__", None)
                if not same_origin:
                    raise ValueError(f"{self.kind} '{name}' is already registered by {existing!r}")
            self._items[name] = obj
            return obj

        return decorator

    def load_entry_points(self) -> None:
        """Import third-party plugins registered under the entry-point group (once)."""
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for entry_point in entry_points(group=self.entry_point_group):
            entry_point.load()

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; raise UnknownNameError naming the closest match."""
        if name not in self._items:
            self.load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            allowed = self.names()
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{closest_match_hint(name, allowed)}; "
                f"allowed: {', '.join(allowed)}"
            ) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self.load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self.load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
