"""Packaging: every folder of shipped files is a configured package, so installing prints no setuptools warning."""

from __future__ import annotations

import tomllib

from tests_support import REPO


def test_every_folder_with_shipped_files_is_a_configured_package():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    folders = {"kdbench." + ".".join(path.parent.relative_to(REPO / "kdbench").parts) if path.parent != REPO / "kdbench"
               else "kdbench" for path in (REPO / "kdbench").rglob("*")
               if path.is_file() and "__pycache__" not in path.parts}
    assert folders - packages == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    for package, patterns in config.get("package-data", {}).items():
        folder = REPO / "kdbench" / package.removeprefix("kdbench").strip(".").replace(".", "/")
        assert all(any(folder.glob(pattern)) for pattern in patterns), (package, patterns)
