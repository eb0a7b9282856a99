"""``random``: architectures drawn uniformly under the budget; the baseline every search must beat."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ._base import STRATEGIES, Constraints, SearchEvents, SearchResult
from ._multi_trial import MultiTrialStrategy, Queries


@STRATEGIES.register("random")
class RandomSearch(MultiTrialStrategy):
    """Query ``max_trials`` distinct architectures drawn uniformly under the FLOPs budget; keep the best.

    With ``max_trials=1`` it returns one random network: the "is the search worth anything" baseline.
    """

    name = "random"

    def __init__(self, max_trials: int = 1, **kwargs: Any) -> None:
        super().__init__(max_trials=max_trials, **kwargs)

    def explore(self, space: Any, queries: Queries) -> None:
        rng, recipes = random.Random(self.seed), self.recipe_rng()
        while True:  # proposals never depend on scores: each batch covers the queries left (under launcher=ray at once)
            proposals = []
            for _ in range(max(1, queries.max_trials - len(queries.history))):
                candidates = [space.sample(seed=rng.getrandbits(63), max_flops=queries.budget)
                              for _ in range(self.candidates_per_proposal)]
                proposals.append(queries.pick(candidates))
            # search.tune_recipe: a recipe drawn for each proposal, from a generator of its own
            queries.batch(proposals, [self.recipe_ranges.sample(recipes) for _ in proposals] if self.tune_recipe
                          else None)

    def search(self, space: Any, evaluator: Any, data: Any, constraints: Constraints,
               events: SearchEvents | None = None, checkpoint: Path | None = None) -> SearchResult:
        if self.max_trials > 1:
            return super().search(space, evaluator, data, constraints, events, checkpoint)
        space.check_budget(constraints)  # one random network: nothing to compare, so no query
        arch = space.sample(seed=random.Random(self.seed).getrandbits(63), max_flops=constraints)
        return SearchResult(arch=arch, flops=space.flops(arch), params=space.params(arch),
                            metrics={"queries": 0}, history=[])
