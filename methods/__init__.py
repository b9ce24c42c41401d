"""KD methods, one module each; importing this package registers every method in it."""

from __future__ import annotations

import importlib
import pkgutil

from kdbench.loss import METHODS


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_all()

__all__ = ["METHODS"]
