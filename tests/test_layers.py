"""Layers import one way: no module imports a layer above its own, not even inside a function.

The order, bottom to top (docs: DESIGN.md): ``xsearch.core`` < ``xsearch.search_spaces`` (and its
blocks) < ``xsearch.supernets`` < ``xsearch.evaluators`` < ``xsearch.strategies`` < the application
(the rest of ``xsearch``: config, pipeline, records, CLI, benchmarks). Every ``.py`` file of the
five source folders is read with ``ast``: module-level imports, imports inside functions and under
``TYPE_CHECKING``, relative imports resolved, and ``importlib.import_module("...")`` with a literal
name. A failure lists each offending import as ``file:line``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject's package-dir)
FOLDERS = {
    "xsearch": "xsearch",
    "search_spaces": "xsearch.search_spaces",
    "supernets": "xsearch.supernets",
    "evaluators": "xsearch.evaluators",
    "strategies": "xsearch.strategies",
}
LAYERS = ["xsearch.core", "xsearch.search_spaces", "xsearch.supernets", "xsearch.evaluators",
          "xsearch.strategies", "xsearch"]
BLOCKS = "xsearch.search_spaces.blocks"


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_of(module: str) -> int | None:
    """Index in ``LAYERS`` of the most specific layer holding ``module``; None outside xsearch."""
    for i, package in sorted(enumerate(LAYERS), key=lambda p: -len(p[1])):
        if _within(module, package):
            return i
    return None


def source_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the five source folders."""
    modules = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``path``, relative ones resolved against ``module``."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in known else target))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "import_module" and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


@pytest.fixture(scope="module")
def graph() -> list[tuple[str, Path, int, str]]:
    """(importing module, its file, line, imported module) for every import of an xsearch module."""
    modules = source_modules()
    known = set(modules)
    return [(module, path, line, target) for module, path in modules.items()
            for line, target in imports_of(module, path, known) if layer_of(target) is not None]


def test_every_source_file_is_in_a_layer():
    modules = source_modules()
    assert len(modules) > 40 and all(layer_of(m) is not None for m in modules)
    assert layer_of("xsearch.core.training") < layer_of("xsearch.search_spaces.blocks.dynamic") \
        < layer_of("xsearch.supernets") < layer_of("xsearch.evaluators") < layer_of("xsearch.strategies") \
        < layer_of("xsearch.cli")


def test_the_walker_sees_every_kind_of_import(graph):
    """The graph is not vacuous: module-level, relative and in-function imports are all found."""
    edges = {(m, t) for m, _, _, t in graph}
    assert ("xsearch.supernets.fused", "xsearch.search_spaces.blocks") in edges  # absolute
    assert ("xsearch.supernets.supernet", "xsearch.supernets.fused") in edges  # relative
    assert ("xsearch.search_spaces", "xsearch.search_spaces.mbv3") in edges  # from . import submodule


def test_no_module_imports_a_layer_above_its_own(graph):
    wrong = [f"{_where(path, line)}: {module} ({LAYERS[layer_of(module)]}) imports {target} "
             f"({LAYERS[layer_of(target)]})"
             for module, path, line, target in graph if layer_of(target) > layer_of(module)]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_blocks_import_only_blocks_and_core(graph):
    """Blocks know nothing of supernets, nor of the spaces built from them."""
    wrong = [f"{_where(path, line)}: {module} imports {target}"
             for module, path, line, target in graph
             if _within(module, BLOCKS) and not (_within(target, BLOCKS) or _within(target, "xsearch.core"))]
    assert not wrong, "blocks importing outside blocks and core:\n" + "\n".join(wrong)
