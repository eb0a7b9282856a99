"""Evaluators: how good an architecture is. ``EVALUATORS.get("classification")(epochs=...)``."""

from __future__ import annotations

from ._base import EVALUATORS, Evaluator
from .classification import ClassificationEvaluator
from .inherited import InheritedWeightsEvaluator
from .proxy import ProxyEvaluator, proxy_score
from .tabular import TabularEvaluator, load_table

__all__ = ["EVALUATORS", "ClassificationEvaluator", "Evaluator", "InheritedWeightsEvaluator", "ProxyEvaluator", "TabularEvaluator", "list_evaluators",
           "load_table", "proxy_score"]


def list_evaluators() -> list[str]:
    return EVALUATORS.names()
