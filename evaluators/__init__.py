"""Evaluators: how good an architecture is. ``EVALUATORS.get("classification")(epochs=...)``."""

from __future__ import annotations

from ._base import EVALUATORS, Evaluator
from .classification import ClassificationEvaluator
from .detection import DetectionEvaluator, DetectionTask, KeypointEvaluator, SegmentationEvaluator
from .inherited import InheritedWeightsEvaluator
from .proxy import ProxyEvaluator, proxy_score
from .semantic import SemanticSegmentationEvaluator, SemanticTask
from .tabular import TabularEvaluator, load_table
from .tasks import CLASSIFICATION, ClassificationTask, Task, task_of

__all__ = ["CLASSIFICATION", "EVALUATORS", "ClassificationEvaluator", "ClassificationTask", "DetectionEvaluator",
           "DetectionTask", "Evaluator", "InheritedWeightsEvaluator", "KeypointEvaluator", "ProxyEvaluator",
           "SegmentationEvaluator", "SemanticSegmentationEvaluator", "SemanticTask", "TabularEvaluator", "Task",
           "list_evaluators", "load_table", "proxy_score", "task_of"]


def list_evaluators() -> list[str]:
    return EVALUATORS.names()
