"""Deferred package initialisation: import a light submodule without its package's heavy ``__init__``.

``kdbench.data.spec`` (DatasetSpec, a pydantic model) needs nothing but pydantic, yet importing it runs
``kdbench/data/__init__.py``, which registers every dataset and so imports torch (seconds). Commands that only
read a grid (``kdbench status``) call :func:`defer_package_init` first: the package's module object is created
without running its ``__init__``; the ``__init__`` runs, into that same module object, the moment anything else
of the package is used (an attribute of the package, or any submodule besides the light ones), so every other
caller sees the package exactly as a normal import leaves it: same module objects, registries filled.
(Editing ``kdbench/data/__init__.py`` instead would change the training-code digest of kdbench.codeid and mark
every finished run stale.)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any


class _AlreadyLoaded(importlib.abc.Loader):
    """Hands the import system a submodule the package's ``__init__`` has just imported, instead of a second copy."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.spec = module.__spec__  # restored by exec_module

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        """The existing module."""
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run; give the module back its own spec (the import system set this loader's)."""
        module.__spec__ = self.spec


class _Deferred(importlib.abc.MetaPathFinder):
    """Runs the deferred package's ``__init__`` before any of its submodules but the light ones is imported."""

    def __init__(self, module: ModuleType, spec: importlib.machinery.ModuleSpec, light: frozenset[str]) -> None:
        self.module, self.spec, self.light = module, spec, light
        self.done = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        """Initialise the package when a heavy submodule is asked for; then let the usual finders find it (or
        hand over the copy the ``__init__`` imported)."""
        if self.done or fullname in self.light or not fullname.startswith(self.module.__name__ + "."):
            return None
        self.initialise()
        loaded = sys.modules.get(fullname)
        if loaded is None or loaded.__spec__ is None:
            return None
        found = loaded.__spec__
        spec = importlib.machinery.ModuleSpec(fullname, _AlreadyLoaded(loaded), origin=found.origin,
                                              is_package=found.submodule_search_locations is not None)
        spec.submodule_search_locations = found.submodule_search_locations
        spec.has_location = found.has_location
        loaded.__spec__ = spec  # the import system takes an already imported module's own spec over ours
        return spec

    def initialise(self) -> None:
        """Run the package's ``__init__`` into its module object (once)."""
        if self.done:
            return
        self.done = True  # stays in sys.meta_path, inert: removing a finder while the import system walks the
        self.module.__dict__.pop("__getattr__", None)  # list would make it skip the next one
        assert self.spec.loader is not None
        self.spec.loader.exec_module(self.module)


def defer_package_init(package: str, light: tuple[str, ...]) -> None:
    """Make ``package`` importable without running its ``__init__`` until something beyond ``light`` is used.

    A no-op when the package is already imported.
    """
    if package in sys.modules:
        return
    parent_name, _, child = package.rpartition(".")
    parent = importlib.import_module(parent_name) if parent_name else None
    spec = importlib.util.find_spec(package)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)
    deferred = _Deferred(module, spec, frozenset(light))

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module-level hook's name)
        deferred.initialise()
        return getattr(module, name)

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules[package] = module
    if parent is not None:
        setattr(parent, child, module)
    sys.meta_path.insert(0, deferred)
