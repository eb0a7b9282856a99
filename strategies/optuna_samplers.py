"""``tpe`` and ``nsga2``: Optuna's samplers over the space's choices, with the budget (FLOPs, latency) as Optuna constraints.

Each layer is a categorical parameter. An architecture over the budget is told to the sampler as
infeasible (constraint value ``flops / budget - 1 > 0``, and likewise ``latency / budget - 1``) without a query, so the sampler learns
where the budget lies and the evaluator is never asked about a network that could not be shipped.
A repeated proposal is told its cached score without a query (TPE re-proposes its favourites once
it converges; telling keeps its model honest, and only distinct architectures cost a query).
Infeasible and repeated proposals count toward ``50 x max_trials`` proposals, after which the
search stops with what it has. With tight budgets (4 % of NAS-Bench-Macro fits 30M) TPE makes
thousands of proposals for 100 queries; each costs milliseconds, not a training run.
``nsga2`` optimizes (score up, FLOPs down) jointly; its answer is the best score under the budget.
With ``pruner=...`` a pruned query is told to TPE as a PRUNED trial with its per-epoch values, and to
NSGA-II (which ignores pruned trials) as its last value (``OptunaSearch.tell``).
With ``parallel_queries=k`` the sampler is asked for ``k`` feasible architectures before any of them
is told (TPE then uses Optuna's constant liar for the pending ones); they are queried together
(under ``launcher=ray``: trials at once) and told in order. k=1 is the one-at-a-time loop.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from xsearch.core.errors import SettingError

from ._base import STRATEGIES
from ._multi_trial import MultiTrialStrategy, Queries


class OptunaSearch(MultiTrialStrategy):
    """Ask/tell loop over an in-memory study; subclasses choose the sampler and the objectives."""

    supports_prescreen = False
    directions: tuple[str, ...] = ("maximize",)

    def __init__(self, max_trials: int = 20, parallel_queries: int = 1, **kwargs: Any) -> None:
        if parallel_queries < 1:
            raise SettingError(f"search.parallel_queries must be at least 1, got {parallel_queries}")
        super().__init__(max_trials=max_trials, **kwargs)
        self.parallel_queries = parallel_queries

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def explore(self, space: Any, queries: Queries) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(directions=list(self.directions), sampler=self.make_sampler())
            while True:
                pending: list[tuple[Any, dict[str, str], int, dict[str, Any] | None]] = []
                while len(pending) < self.parallel_queries:
                    trial = study.ask()
                    arch = {c.label: trial.suggest_categorical(c.label, list(c.options)) for c in space.choices}
                    flops = space.flops(arch)
                    limits = queries.budget.limits() or {"flops": None}
                    for kind, limit in limits.items():  # feasible when every value is at most 0
                        trial.set_constraint(kind, space.cost(kind, arch) / limit - 1.0 if limit else -1.0)
                    if not space.fits(arch, queries.budget):
                        queries.propose()
                        study.tell(trial, [0.0, float(flops)][: len(self.directions)])
                    else:  # search.tune_recipe: the recipe's settings are parameters of the same trial
                        recipe = self.recipe_ranges.suggest(trial) if self.tune_recipe else None
                        pending.append((trial, arch, flops, recipe))
                scores = queries.batch([arch for _, arch, _, _ in pending],
                                       [recipe for *_, recipe in pending] if self.tune_recipe else None)
                for (trial, arch, flops, recipe), score in zip(pending, scores):
                    self.tell(study, trial, score, flops, queries.pruned_curve(arch, recipe))

    def tell(self, study: optuna.Study, trial: optuna.Trial, score: float, flops: int,
             pruned: list[list[float]] | None) -> None:
        """Tell the sampler a query's outcome. A pruned query (``search.pruner``; ``pruned``: its per-epoch scores)
        is told PRUNED with those values when there is one objective (TPE then ranks it below every finished
        query, deeper-trained first); NSGA-II ignores pruned trials, so it is told its last value, which ranks
        it as the partly trained network it is."""
        if pruned and len(self.directions) == 1:
            for epoch, value in pruned:
                trial.report(float(value), int(epoch))
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, [score, float(flops)][: len(self.directions)])


@STRATEGIES.register("tpe")
class TPESearch(OptunaSearch):
    """Tree-structured Parzen estimator (multivariate), ``n_startup_trials`` random proposals first."""

    name = "tpe"

    def __init__(self, max_trials: int = 20, n_startup_trials: int = 10, **kwargs: Any) -> None:
        super().__init__(max_trials=max_trials, **kwargs)
        self.n_startup_trials = n_startup_trials

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        # group: the recipe's optimizer decides which rate parameters a trial has (search.tune_recipe)
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=self.n_startup_trials, multivariate=True,
                                          constant_liar=self.parallel_queries > 1, group=self.tune_recipe)


@STRATEGIES.register("nsga2")
class NSGA2Search(OptunaSearch):
    """NSGA-II over (score, FLOPs) with constrained domination for the budget."""

    name = "nsga2"
    directions = ("maximize", "minimize")

    def __init__(self, max_trials: int = 20, population_size: int = 20, **kwargs: Any) -> None:
        if population_size < 2:
            raise SettingError(f"search.population_size must be at least 2, got {population_size}")
        super().__init__(max_trials=max_trials, **kwargs)
        self.population_size = population_size

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        return optuna.samplers.NSGAIISampler(seed=self.seed, population_size=self.population_size)
