"""The evaluator contract: how good an architecture is on one task, under a budget."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from xsearch._registry import Registry

EVALUATORS: Registry = Registry("evaluator")


class Evaluator(ABC):
    """Trains and/or scores an architecture; strategies and the ``run``/``train`` commands call ``evaluate``."""

    name = ""

    @abstractmethod
    def evaluate(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0,
                 workdir: Path | None = None) -> dict[str, Any]:
        """Metrics of ``arch`` (at least ``test_accuracy``). With ``workdir`` it checkpoints there and resumes."""
