"""The ``xsearch bench`` settings (``bench.*`` keys): one dataclass, part of the run configuration's schema.

It imports nothing of xsearch above ``xsearch.core``, so ``xsearch.config`` can build its schema from it while the
benchmark modules (which import ``xsearch.config``) load only when one runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from xsearch.core.errors import UserError


@dataclasses.dataclass
class BenchConfig:
    """The ``xsearch bench`` settings (``bench.*``); ``xsearch run`` ignores them."""

    seeds: int = 3  # bench search (and blocks): retraining seeds per found network; bench fidelity: search seeds
    # bench search: strategies or named variants (bench.search.VARIANTS), each searched at every budget
    strategies: list[str] = dataclasses.field(default_factory=lambda: ["danas", "danas_legacy", "dnas", "spos",
                                                                       "hand"])
    search_budgets: list[str] = dataclasses.field(default_factory=lambda: ["5M", "8M"])  # bench search
    search_seeds: int = 3  # bench search: search seeds 0..n-1 per searching strategy and budget
    random_archs: int = 8  # bench search: uniform architectures under each budget, retrained too (0: none)
    multi_trial: list[str] = dataclasses.field(default_factory=lambda: ["random", "evolution", "tpe", "nsga2"])
    budgets: list[str] = dataclasses.field(default_factory=lambda: ["30M", "40M", "50M", "60M"])  # bench strategies
    table_seeds: int = 10  # bench strategies: search seeds per strategy and budget
    queries: list[int] = dataclasses.field(default_factory=lambda: [25, 50, 100])  # regret after these many queries
    ranking_archs: int = 15  # bench ranking: architectures scored both ways
    ranking_epochs: int = 2  # bench ranking: stand-alone training epochs per architecture
    ranking_train_samples: int = 10000  # bench ranking: stand-alone training images
    blocks_spaces: list[str] = dataclasses.field(default_factory=lambda: ["mbv3", "mbv3-dynamic", "micronet",
                                                                          "focalnet"])
    blocks_budgets: list[str] = dataclasses.field(default_factory=lambda: ["5M", "10M"])  # every space must fit
    throughput_rounds: int = 5  # bench blocks / throughput: timed rounds of 20 batches per network (the best counts)
    supernet_batch: int = 128  # bench supernet: images per training step
    ray_repeats: int = 2  # bench ray: timed searches per mode (in-process, Ray Tune trials)
    supernet_steps: int = 5  # bench supernet: timed steps (median reported)
    supernet_warmup: int = 1  # bench supernet: untimed steps first
    downstream_budget: str = "5M"  # bench downstream: the backbones' FLOPs budget (Fashion-MNIST size)
    downstream_tasks: list[str] = dataclasses.field(default_factory=lambda: ["detection", "segmentation",
                                                                             "keypoints", "semantic_segmentation"])
    downstream_arch: str | None = None  # bench downstream: an arch.json danas found (null: search one)
    head_budget: str = "auto"  # bench downstream: the DyHead search's budget (auto: halfway none -> fixed)
    head_search: list[str] = dataclasses.field(default_factory=list)  # bench downstream: search.* for the DyHead
    # bench downstream: `bench search` rows files (out= of bench search); each gives one budget's danas, spos, random
    # and hand backbones (search seed 0), instead of bench.downstream_budget's search. [] : search one.
    downstream_searches: list[str] = dataclasses.field(default_factory=list)
    downstream_heads: bool = True  # bench downstream: also the DyHead part (a head search on space=dyhead)
    latency_spaces: list[str] = dataclasses.field(default_factory=lambda: ["mbv3", "mbv3-dynamic", "micronet"])
    latency_budget: str = "auto"  # bench latency: the search part's budget (3ms, 500us; auto: from the table)
    recipe_arch: str | None = None  # bench recipe: the arch.json to tune (null: the space's hand design)
    fidelity_pruner: str = "successive_halving"  # bench fidelity: the pruned arm's search.pruner


def check_bench(bench: dict[str, Any]) -> None:
    """Refuse (UserError) ``bench.*`` values their types allow but the benchmarks cannot use."""
    if int(bench.get("throughput_rounds", 1)) < 1:
        raise UserError(f"bench.throughput_rounds={bench['throughput_rounds']} must be at least 1 (timed "
                        "rounds of 20 batches per network; the default is 5)")
