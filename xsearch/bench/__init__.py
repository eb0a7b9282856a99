"""The benchmarks behind ``xsearch bench NAME [overrides] [out=FILE.json]``, one module each.

Each is a function ``bench_<name>(overrides)`` that prints a Markdown table (the README's) and
writes its JSON rows to ``out=`` (``docs/bench/*.json``); ``_harness`` holds what they share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .blocks import bench_blocks
from .data import bench_data
from .downstream import bench_downstream
from .ranking import bench_ranking
from .ray_overhead import bench_ray
from .search import bench_search
from .strategies import bench_strategies
from .supernet import bench_supernet
from .throughput import bench_throughput

__all__ = ["BENCHMARKS", "bench_blocks", "bench_data", "bench_downstream", "bench_ranking", "bench_ray", "bench_search", "bench_strategies", "bench_supernet",
           "bench_throughput"]

BENCHMARKS: dict[str, Callable[[list[str]], Any]] = {
    "search": bench_search, "strategies": bench_strategies, "ranking": bench_ranking, "blocks": bench_blocks,
    "throughput": bench_throughput, "supernet": bench_supernet,
    "downstream": bench_downstream, "ray": bench_ray, "data": bench_data}
