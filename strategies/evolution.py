"""``evolution``: regularized (aging) evolution, Real et al., AAAI 2019.

A population of ``population_size`` architectures starts from random samples under the budget.
Each cycle draws ``sample_size`` members at random, mutates the best of them (one layer changes to
another of its options; mutations over the budget are redrawn without a query), queries the child
and appends it, and removes the *oldest* member, so a lucky early score cannot dominate forever.

The initial population is queried as one batch (under ``launcher=ray``: trials at once). With
``parallel_queries=k`` each cycle breeds ``k`` children from the population as it stands, queries
them together, then appends each and removes as many of the oldest (k=1: the algorithm above).
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from xsearch.core.errors import SettingError

from ._base import STRATEGIES, Constraints
from ._multi_trial import MultiTrialStrategy, Queries


def mutate(space: Any, arch: dict[str, str], rng: random.Random, max_flops: int | Constraints | None,
           attempts: int = 100) -> dict[str, str]:
    """``arch`` with one layer switched to a different option, within ``max_flops`` (a FLOPs budget or ``Constraints``)."""
    mutable = [c for c in space.choices if len(c.options) > 1]
    if not mutable:
        return dict(arch)
    for _ in range(attempts):
        choice = rng.choice(mutable)
        child = dict(arch)
        child[choice.label] = rng.choice([o for o in choice.options if o != arch[choice.label]])
        if space.fits(child, max_flops):
            return child
    return space.sample(seed=rng.getrandbits(63), max_flops=max_flops)


@STRATEGIES.register("evolution")
class RegularizedEvolution(MultiTrialStrategy):
    """Aging evolution under a FLOPs budget (see module doc)."""

    name = "evolution"

    def __init__(self, max_trials: int = 20, population_size: int = 20, sample_size: int = 5,
                 parallel_queries: int = 1, **kwargs: Any) -> None:
        if population_size < 2 or not 1 <= sample_size <= population_size:
            raise SettingError(f"need population_size >= 2 and 1 <= sample_size <= population_size, got "
                             f"population_size={population_size}, sample_size={sample_size}")
        if parallel_queries < 1:
            raise SettingError(f"search.parallel_queries must be at least 1, got {parallel_queries}")
        super().__init__(max_trials=max_trials, **kwargs)
        self.population_size, self.sample_size, self.parallel_queries = population_size, sample_size, parallel_queries
        self.initial: list[dict[str, str]] = []  # architectures queried first (e.g. a derivation's seeds)

    def explore(self, space: Any, queries: Queries) -> None:
        rng = random.Random(self.seed)
        first = list(self.initial[: self.population_size])
        while len(first) < self.population_size:
            candidates = [space.sample(seed=rng.getrandbits(63), max_flops=queries.budget)
                          for _ in range(self.candidates_per_proposal)]
            first.append(queries.pick(candidates))
        # search.tune_recipe: each member has a recipe too, drawn and mutated with a generator of its own
        recipe_rng = self.recipe_rng()
        recipes = [self.recipe_ranges.sample(recipe_rng) if self.tune_recipe else None for _ in first]
        population: deque[tuple[dict[str, str], float, dict[str, Any] | None]] = deque(
            zip(first, queries.batch(first, recipes if self.tune_recipe else None), recipes))
        while True:
            children, child_recipes = [], []
            for _ in range(self.parallel_queries):
                parent, _, recipe = max(rng.sample(list(population), self.sample_size), key=lambda member: member[1])
                if recipe is not None and recipe_rng.random() < self.recipe_share(space, recipe):
                    children.append(dict(parent))  # one recipe setting changes instead of one layer
                    child_recipes.append(self.recipe_ranges.mutate(recipe, recipe_rng))
                    continue
                mutants = [mutate(space, parent, rng, queries.budget) for _ in range(self.candidates_per_proposal)]
                children.append(queries.pick(mutants))
                child_recipes.append(recipe)
            scores = queries.batch(children, child_recipes if self.tune_recipe else None)
            for child, score, recipe in zip(children, scores, child_recipes):
                population.append((child, score, recipe))
                population.popleft()

    @staticmethod
    def recipe_share(space: Any, recipe: dict[str, Any]) -> float:
        """The chance that a mutation changes the recipe rather than a layer: its share of all the genes."""
        layers = sum(len(c.options) > 1 for c in space.choices)
        return len(recipe) / (len(recipe) + layers)
