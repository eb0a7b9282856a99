"""Layers import one way, and no modules import each other in a loop.

The order, bottom to top (docs/design.md): ``xsearch.core`` < ``xsearch.datasets`` <
``xsearch.search_spaces`` (and its blocks) < ``xsearch.supernets`` < ``xsearch.evaluators`` <
``xsearch.strategies`` < the application (the rest of ``xsearch``: config, pipeline, records, CLI,
benchmarks). No module imports a layer above its own, not even inside a function. Every ``.py``
file of the six source folders is read with ``ast``: module-level imports, imports inside functions
and under ``TYPE_CHECKING``, relative imports resolved, and ``importlib.import_module("...")`` with a
literal name. ``from pkg import name`` imports ``pkg.name`` when that is a module, else ``pkg``
(its ``__init__``). A failure lists each offending import as ``file:line``.

Import loops are strongly connected components of that graph, each import an edge as written.
Python running a package's ``__init__`` before any of its submodules is not an edge: were it one,
every package whose ``__init__`` re-exports its submodules (the usual public-API pattern) would be a
loop. So ``pkg/__init__`` importing ``pkg.sub`` is an ordinary edge, and ``pkg.sub`` importing a
name from ``pkg`` itself closes a loop with it when that ``__init__`` imports ``pkg.sub``: import
the name from the module that defines it. A module importing itself is no loop.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (pyproject's package-dir)
FOLDERS = {
    "xsearch": "xsearch",
    "datasets": "xsearch.datasets",
    "search_spaces": "xsearch.search_spaces",
    "supernets": "xsearch.supernets",
    "evaluators": "xsearch.evaluators",
    "strategies": "xsearch.strategies",
}
LAYERS = ["xsearch.core", "xsearch.datasets", "xsearch.search_spaces", "xsearch.supernets", "xsearch.evaluators",
          "xsearch.strategies", "xsearch"]
BLOCKS = "xsearch.search_spaces.blocks"
# Import loops tolerated while a change removes them, each the set of its modules
ALLOWED_CYCLES: set[frozenset[str]] = set()  # none: a loop is fixed, not allowed


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_of(module: str) -> int | None:
    """Index in ``LAYERS`` of the most specific layer holding ``module``; None outside xsearch."""
    for i, package in sorted(enumerate(LAYERS), key=lambda p: -len(p[1])):
        if _within(module, package):
            return i
    return None


def source_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the six source folders."""
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
    assert layer_of("xsearch.core.training") < layer_of("xsearch.datasets.coco.dataset") \
        < layer_of("xsearch.search_spaces.blocks.dynamic") \
        < layer_of("xsearch.supernets") < layer_of("xsearch.evaluators") < layer_of("xsearch.strategies") \
        < layer_of("xsearch.cli")


def test_the_walker_sees_every_kind_of_import(graph):
    """The graph is not vacuous: module-level, relative, in-function and TYPE_CHECKING imports are all found."""
    edges = {(m, t) for m, _, _, t in graph}
    assert ("xsearch.search_spaces.blocks.mbv3", "xsearch.search_spaces.blocks.dynamic") in edges  # in a function
    assert ("xsearch.supernets.fused", "xsearch.supernets.mixed") in edges  # under TYPE_CHECKING
    assert ("xsearch.datasets.coco.fashion_coco", "xsearch.datasets.fashion_mnist") in edges  # from .. import
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


def import_cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (sorted), by Tarjan's algorithm, iteratively."""
    succ: dict[str, list[str]] = {}
    for a, b in edges:
        if a != b:
            succ.setdefault(a, []).append(b)
            succ.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(succ):
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(succ[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(cycles)


def test_the_cycle_finder_finds_loops_and_only_loops():
    edges = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d"), ("f", "f"), ("a", "f")]
    assert import_cycles(edges) == [["a", "b", "c"], ["d", "e"]]
    assert import_cycles([("a", "b"), ("b", "c")]) == []


def test_no_import_cycles(graph):
    """No two modules import each other, directly or through others (see the module docstring for what counts)."""
    found = [c for c in import_cycles((m, t) for m, _, _, t in graph) if frozenset(c) not in ALLOWED_CYCLES]
    report = []
    for cycle in found:
        members = set(cycle)
        report.append(" <-> ".join(cycle) + ":")
        report += sorted({f"  {_where(path, line)}: {module} imports {target}"
                          for module, path, line, target in graph if module in members and target in members})
    assert not found, "import loops (a helper two modules share belongs below both):\n" + "\n".join(report)
