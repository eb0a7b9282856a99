"""Strategies: how to search. ``STRATEGIES.get("danas")(**knobs).search(space, evaluator, data, constraints, events)``."""

from __future__ import annotations

from ._base import (
    STRATEGIES,
    Constraints,
    NoEvents,
    QueryRecord,
    SearchEvents,
    SearchResult,
    SharedStudy,
    StageRecord,
    Strategy,
)
from ._derive import best_under_budget
from ._differentiable import DifferentiableSearch, Stage, prune
from ._multi_trial import MultiTrialStrategy, Queries, StopSearch
from .danas import ProgressiveDataAdaptedPruning
from .dnas import DifferentiableNAS
from .evolution import RegularizedEvolution, mutate
from .hand import HandDesigned
from .optuna_samplers import NSGA2Search, TPESearch
from .random_search import RandomSearch
from .spos import SinglePathOneShot

__all__ = [
    "STRATEGIES",
    "Constraints",
    "DifferentiableNAS",
    "DifferentiableSearch",
    "HandDesigned",
    "MultiTrialStrategy",
    "NSGA2Search",
    "NoEvents",
    "ProgressiveDataAdaptedPruning",
    "Queries",
    "QueryRecord",
    "RandomSearch",
    "RegularizedEvolution",
    "SearchEvents",
    "SearchResult",
    "SharedStudy",
    "SinglePathOneShot",
    "Stage",
    "StageRecord",
    "StopSearch",
    "Strategy",
    "TPESearch",
    "best_under_budget",
    "list_strategies",
    "mutate",
    "prune",
]


def list_strategies() -> list[str]:
    return STRATEGIES.names()
