"""Plugins named by a grid: Python files or modules imported so that their methods register (this runs code)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from kdbench.config_errors import ConfigError, format_value


def import_plugins(plugins: Any, base_dir: Path) -> list[str]:
    """Import each plugin (a Python file relative to ``base_dir``, or a module name) so it can register.

    Returns the plugins with files made absolute, so that worker processes can import them again.
    """
    if not plugins:
        return []
    if not isinstance(plugins, list):
        raise ConfigError(f"plugins = {format_value(plugins)}: must be a list of Python files or module names")
    resolved = []
    for index, plugin in enumerate(plugins):
        try:
            if str(plugin).endswith(".py"):
                path = (base_dir / os.path.expanduser(str(plugin))).resolve()
                if not path.is_file():
                    raise ConfigError(f"plugins[{index}] = '{plugin}': no such file ({path})")
                resolved.append(str(path))
                module_name = f"kdbench_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
                if module_name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(module_name, path)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                resolved.append(str(plugin))
                importlib.import_module(str(plugin))
        except ConfigError:
            raise
        except Exception as error:  # a plugin's own failure must still be one clear line
            reason = f"{type(error).__name__}: {error}"
            raise ConfigError(f"plugins[{index}] = '{plugin}': import failed: {reason}") from None
    return resolved
