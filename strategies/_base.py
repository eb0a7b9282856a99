"""The strategy contract and the records every strategy writes."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna

from xsearch.core.registry import Registry

STRATEGIES: Registry = Registry("strategy")


@dataclass
class SearchResult:
    """What a search hands back: the architecture, its FLOPs and metrics, and the history."""

    arch: dict[str, str]
    flops: int
    params: int
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    search_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Constraints:
    """Hard limits on the found network (MACs for one image); None means unconstrained."""

    flops: int | None = None


class Strategy(ABC):
    """How to search. ``search`` is called once per run; with ``checkpoint`` it saves there and resumes."""

    name = ""
    needs_data = True  # False: it only queries an evaluator (which says for itself whether it needs images)

    @abstractmethod
    def search(self, space: Any, evaluator: Any, data: Any, constraints: Constraints,
               study: optuna.Study | None, checkpoint: Path | None = None) -> SearchResult:
        """Find the best architecture of ``space`` under ``constraints`` on ``data``; record trials in ``study``."""


def record_trial(study: optuna.Study | None, space: Any, arch: dict[str, str], accuracy: float,
                 record_id: str, user_attrs: dict[str, Any] | None = None) -> None:
    """Add ``arch`` to ``study`` as a finished trial with values (accuracy, FLOPs), once per ``record_id``.

    ``record_id`` makes recording idempotent, so a resumed search never duplicates a trial.
    """
    if study is None:
        return
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("record_id") == record_id:
            return
    distributions = {c.label: optuna.distributions.CategoricalDistribution(c.options) for c in space.choices}
    attrs = {"record_id": record_id, "flops": space.flops(arch), "params": space.params(arch),
             "recorded_at": time.time(), **(user_attrs or {})}
    trial = optuna.trial.create_trial(params=dict(arch), distributions=distributions,
                                      values=[float(accuracy), float(space.flops(arch))], user_attrs=attrs)
    study.add_trial(trial)
