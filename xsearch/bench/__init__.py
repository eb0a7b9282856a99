"""The benchmarks behind ``xsearch bench NAME [overrides] [out=FILE.json]``, one module each.

Each is a function ``bench_<name>(overrides)`` that prints a Markdown table (the README's) and
writes its JSON rows to ``out=`` (``docs/bench/*.json``); ``_harness`` holds what they share and
``settings`` their ``bench.*`` settings. A benchmark's module is imported when it is first looked
up in ``BENCHMARKS``: the modules import ``xsearch.config``, which takes ``BenchConfig`` from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .settings import BenchConfig

__all__ = ["BENCHMARKS", "BenchConfig"]

# benchmark name -> the module of this package that defines bench_<name>
_MODULES = {"search": "search", "strategies": "strategies", "ranking": "ranking", "blocks": "blocks",
            "throughput": "throughput", "supernet": "supernet", "downstream": "downstream", "ray": "ray_overhead",
            "data": "data", "latency": "latency", "recipe": "recipe",
            "fidelity": "fidelity"}


class _Benchmarks(Mapping[str, Callable[[list[str]], Any]]):
    """``{name: bench_<name>}``, in the order ``xsearch`` lists them; a module is imported on first look-up."""

    def __getitem__(self, name: str) -> Callable[[list[str]], Any]:
        module = importlib.import_module(f"{__name__}.{_MODULES[name]}")
        return getattr(module, f"bench_{name}")

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


BENCHMARKS: Mapping[str, Callable[[list[str]], Any]] = _Benchmarks()


def __getattr__(name: str) -> Any:
    """``xsearch.bench.bench_search`` and the like, imported on first use."""
    if name.startswith("bench_") and name[len("bench_"):] in _MODULES:
        return BENCHMARKS[name[len("bench_"):]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
