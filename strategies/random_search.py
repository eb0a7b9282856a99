"""``random``: architectures drawn uniformly under the budget; the baseline a search must beat."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ._base import STRATEGIES, Constraints, SearchResult, Strategy, record_trial


@STRATEGIES.register("random")
class RandomSearch(Strategy):
    """Draw ``max_trials`` architectures under the FLOPs budget; with one trial no evaluation is spent.

    With more than one trial each is scored by the evaluator and the best is returned.
    """

    def __init__(self, max_trials: int = 1, seed: int = 0) -> None:
        self.max_trials, self.seed = max_trials, seed

    def search(self, space: Any, evaluator: Any, data: Any, constraints: Constraints,
               study: Any = None, checkpoint: Path | None = None) -> SearchResult:
        t0 = time.time()
        space.check_budget(constraints.flops)
        history = []
        for i in range(self.max_trials):
            arch = space.sample(seed=self.seed * 100_003 + i, max_flops=constraints.flops)
            metrics = evaluator.evaluate(space, arch, data, seed=self.seed) if self.max_trials > 1 else {}
            acc = metrics.get("test_accuracy", float("nan"))
            history.append({"trial": i, "arch": arch, "flops": space.flops(arch), "metrics": metrics})
            if self.max_trials > 1:
                record_trial(study, space, arch, acc, f"random{i}", {"kind": "sampled"})
        best = max(history, key=lambda h: h["metrics"].get("test_accuracy", 0.0))
        arch = best["arch"]
        return SearchResult(arch=arch, flops=space.flops(arch), params=space.params(arch),
                            metrics=best["metrics"], history=history, search_seconds=time.time() - t0)
