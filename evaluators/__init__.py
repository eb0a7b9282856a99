"""Evaluators: how good an architecture is. ``EVALUATORS.get("classification")(epochs=...)``."""

from __future__ import annotations

from ._base import EVALUATORS, Evaluator
from .classification import ClassificationEvaluator

__all__ = ["EVALUATORS", "ClassificationEvaluator", "Evaluator", "list_evaluators"]


def list_evaluators() -> list[str]:
    return EVALUATORS.names()
