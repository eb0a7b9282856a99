"""``spos``: single-path one-shot (Guo et al., ECCV 2020) under a FLOPs budget.

1. The supernet trains with one uniformly sampled candidate per layer per step (weights only, on
   one half of the search split), for ``warmup_epochs + epochs`` epochs: the same epoch budget
   ``danas`` spends, every candidate trained as often as any other.
2. A multi-trial strategy (``searcher``: regularized ``evolution`` by default, or ``random``,
   ``tpe``, ``nsga2``) then queries ``max_trials`` architectures under the budget, each scored by
   its inherited-weight accuracy on the other half (batch norm recalibrated on training batches
   first, see ``InheritedWeightsEvaluator``).
3. The answer is the best-scoring queried architecture, never a sample from a distribution.

Resumable: the supernet checkpoints after every epoch, and the evolution's queries replay from
the queries the run's recorder saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xsearch.core.errors import SettingError
from xsearch.core.registry import call_with_accepted

from ._base import STRATEGIES, SearchResult
from ._differentiable import DifferentiableSearch, Stage, _Context
from ._multi_trial import MultiTrialStrategy


@STRATEGIES.register("spos")
class SinglePathOneShot(DifferentiableSearch):
    """Uniform single-path supernet training, then evolution over inherited-weight accuracy (see module doc)."""

    name = "spos"
    # the base's settings of architecture weights, stages and derivation, which single-path training
    # and the searcher never read: not settings of spos (``search.derive_trials=...`` is refused)
    unused_settings = frozenset({"arch_lr", "arch_weight_decay", "flops_weight", "latency_weight", "path_mode", "derive",
                                 "derive_trials", "prune_score"})

    def __init__(self, max_trials: int = 50, searcher: str = "evolution", population_size: int = 16,
                 sample_size: int = 4, **kwargs: Any) -> None:
        if self.unused_settings & kwargs.keys():
            raise TypeError(f"spos does not use {sorted(self.unused_settings & kwargs.keys())}: it trains single "
                            "paths, then queries search.max_trials architectures with search.searcher")
        super().__init__(**kwargs)
        factory = STRATEGIES.get(searcher)
        if not issubclass(factory, MultiTrialStrategy):  # a bad setting, not a bad type: exit 2
            raise SettingError(
                f"search.searcher must be a multi-trial strategy (random, evolution, tpe, nsga2), got {searcher!r}")
        self.searcher = call_with_accepted(factory, {
            "max_trials": max_trials, "population_size": population_size, "sample_size": sample_size,
            "seed": self.seed, "show_progress": self.show_progress})
        self.max_trials = max_trials

    def stages(self, num_classes: int) -> list[Stage]:
        return []

    def single_path_epochs(self) -> int:
        return self.warmup_epochs + self.epochs

    def finish(self, ctx: _Context, state: dict[str, Any], checkpoint: Path | None) -> SearchResult:
        result = self.query_inherited(ctx, self.searcher, ctx.space, self.name)
        result.metrics.update(supernet_seconds=state["seconds"], epochs=state["epochs"],
                              **self.learning_report(ctx, state, result.metrics.get("score")))
        result.search_seconds += state["seconds"]
        return result
