"""Griffe extension for the API reference: load ``xsearch.search_spaces`` etc. from their own folders.

The component packages install through setuptools' ``package-dir`` (``xsearch.search_spaces`` ->
``search_spaces/``), which Python follows through the editable install's import finder but Griffe's
static loader does not: it looks for ``xsearch/search_spaces/``. When Griffe has loaded ``xsearch``,
this extension loads each remapped folder as that package's submodule, read from pyproject.toml so
the mapping is written once. mkdocs.yml names it (``extensions: [docs/package_dir.py:PackageDir]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import griffe

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, which pytest (the dev extra) installs there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _remapped_packages() -> dict[str, Path]:
    """``{"xsearch.search_spaces": ROOT / "search_spaces", ...}``: package-dir entries below ``xsearch``."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        package_dir = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: ROOT / folder for name, folder in package_dir.items()
            if name.startswith("xsearch.") and name.count(".") == 1}


class PackageDir(griffe.Extension):
    """Attach every remapped ``xsearch.<name>`` folder to the loaded ``xsearch`` package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "xsearch":
            return
        for dotted, folder in _remapped_packages().items():
            name = dotted.split(".", 1)[1]
            if name in pkg.members or not (folder / "__init__.py").is_file():
                continue
            # Griffe has no public call to load a folder as a submodule of a loaded package;
            # _load_module(name, path, parent=...) is what its own loader does for each submodule
            module = loader._load_module(name, folder / "__init__.py", submodules=True, parent=pkg)
            pkg.set_member(name, module)
            loader.expand_exports(module)
            loader.expand_wildcards(module, external=False)

    def on_package_loaded(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """The same event under its Griffe 1 name (Griffe 2 calls ``on_package``)."""
        self.on_package(pkg=pkg, loader=loader, **kwargs)
