"""Strategies: how to search. ``STRATEGIES.get("danas")(**knobs).search(space, evaluator, data, constraints, study)``."""

from __future__ import annotations

from ._base import STRATEGIES, Constraints, SearchResult, Strategy, record_trial
from ._derive import best_under_budget
from ._differentiable import DifferentiableSearch, Stage, prune
from .danas import ProgressiveDataAdaptedPruning
from .dnas import DifferentiableNAS
from .random_search import RandomSearch

__all__ = ["STRATEGIES", "Constraints", "DifferentiableNAS", "DifferentiableSearch", "ProgressiveDataAdaptedPruning",
           "RandomSearch", "SearchResult", "Stage", "Strategy", "best_under_budget", "list_strategies", "prune",
           "record_trial"]


def list_strategies() -> list[str]:
    return STRATEGIES.names()
