"""Multi-trial search: propose architectures, query the evaluator, keep the best under the budget.

Every strategy here talks to the evaluator through ``Queries``, which
- never queries an architecture over the FLOPs budget (a strategy that tries is a bug);
- counts a query once per distinct architecture (a repeated proposal returns the cached score);
- stops the strategy after ``max_trials`` queries (``StopSearch``), or after ``max_proposals``
  proposals when a strategy keeps proposing what it has already seen;
- reports each query to the search's events (the run's recorder writes the study trial and the
  replay file).

Resume is a replay: a strategy's proposals depend only on its seed and the scores it has seen, so
a resumed search runs from the start with the recorder's saved queries as a cache, reaches the
point where it stopped without spending a query, and goes on. The result is identical to an
uninterrupted search, and no trial is repeated or lost.

Optional pre-screening (``prescreen=synflow`` etc., random and evolution only): each proposal
draws ``prescreen_factor`` candidates and queries the one a zero-cost proxy likes best.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from pathlib import Path
from typing import Any

from xsearch.core.training import progress, resolve_device

from ._base import Constraints, NoEvents, QueryRecord, SearchEvents, SearchResult, Strategy


class StopSearch(Exception):
    """Raised by ``Queries`` when the query or proposal budget is spent."""


def arch_key(space: Any, arch: dict[str, str]) -> str:
    return "|".join(arch[c.label] for c in space.choices)


class Queries:
    """The evaluator behind a query budget: budget check, cache, replay, events (see module doc)."""

    def __init__(self, prefix: str, space: Any, evaluator: Any, data: Any, seed: int, max_trials: int,
                 max_flops: int | None, events: SearchEvents | None = None,
                 max_proposals: int | None = None, prescreen: Any = None, show_progress: bool = True) -> None:
        self.prefix, self.space, self.evaluator, self.data, self.seed = prefix, space, evaluator, data, seed
        self.max_trials, self.max_flops = max_trials, max_flops
        self.events: SearchEvents = events if events is not None else NoEvents()
        self.max_proposals = max_proposals or 50 * max_trials
        self.prescreen = prescreen
        saved, self.saved_seconds = self.events.saved_queries()
        self.saved: dict[str, dict[str, Any]] = {arch_key(space, q["arch"]): q["metrics"] for q in saved}
        self.seen: dict[str, float] = {}
        self.history: list[QueryRecord] = []
        self.proposals = 0
        self.proxy_cache: dict[str, float] = {}
        self.t0 = time.time()
        self.bar = progress(None, max_trials, f"{prefix} queries", show_progress)

    @property
    def seconds(self) -> float:
        """Search time spent, including the time before a resume."""
        return self.saved_seconds + time.time() - self.t0

    def propose(self) -> None:
        """Count a proposal (queried or not); stops a strategy that only proposes what it has seen."""
        self.proposals += 1
        if self.proposals > self.max_proposals:
            raise StopSearch(f"{self.max_proposals} proposals without reaching {self.max_trials} distinct queries")

    def within_budget(self, arch: dict[str, str]) -> bool:
        return self.max_flops is None or self.space.flops(arch) <= self.max_flops

    def __call__(self, arch: dict[str, str]) -> float:
        """The score of ``arch``: cached, replayed from the saved queries, or queried from the evaluator."""
        arch = self.space.validate(arch)
        self.propose()
        if not self.within_budget(arch):
            raise RuntimeError(f"strategy {self.prefix!r} queried {arch} over the FLOPs budget")
        key = arch_key(self.space, arch)
        if key in self.seen:
            return self.seen[key]
        if len(self.history) >= self.max_trials:
            raise StopSearch(f"{self.max_trials} queries made")
        if key in self.saved:
            metrics = self.saved[key]
        else:
            metrics = self.evaluator.score(self.space, arch, self.data, seed=self.seed)
        metrics = {k: v for k, v in metrics.items() if k != "history"}
        score = float(metrics["score"])
        self.seen[key] = score
        best = max([score] + [q.best_score for q in self.history[-1:]])
        record = QueryRecord(query=len(self.history) + 1, arch=arch, flops=self.space.flops(arch),
                             params=self.space.params(arch), score=score, best_score=best,
                             proposals=self.proposals, metrics=metrics, source=self.prefix)
        self.history.append(record)
        self.events.query(record, self.seconds)
        self.bar.update(1)
        self.bar.set_postfix(best=f"{best:.4g}", refresh=False)
        return score

    def pick(self, candidates: list[dict[str, str]]) -> dict[str, str]:
        """The candidate to query: the first, or with pre-screening the proxy's favourite."""
        if self.prescreen is None or len(candidates) == 1:
            return candidates[0]

        def proxy(arch: dict[str, str]) -> float:
            key = arch_key(self.space, arch)
            if key not in self.proxy_cache:
                self.proxy_cache[key] = float(self.prescreen.evaluate(self.space, arch, self.data, seed=self.seed)["score"])
            return self.proxy_cache[key]

        return max(candidates, key=proxy)

    def close(self) -> None:
        self.bar.close()


class MultiTrialStrategy(Strategy):
    """Base of the strategies that query an evaluator ``max_trials`` times (see module doc)."""

    supports_prescreen = True

    def __init__(self, max_trials: int = 20, seed: int = 0, prescreen: str | None = None, prescreen_factor: int = 4,
                 device: str = "auto", show_progress: bool = True) -> None:
        if max_trials < 1:
            raise ValueError(f"search.max_trials must be at least 1, got {max_trials}")
        if prescreen is not None and not self.supports_prescreen:
            raise ValueError(f"search.prescreen is not supported by strategy {self.name!r}; "
                             "use it with strategy=random or strategy=evolution")
        if prescreen_factor < 1:
            raise ValueError(f"search.prescreen_factor must be at least 1, got {prescreen_factor}")
        self.max_trials, self.seed, self.prescreen, self.prescreen_factor = max_trials, seed, prescreen, prescreen_factor
        self.device, self.show_progress = resolve_device(device), show_progress
        self._prescreener = None
        if prescreen is not None:
            from xsearch.evaluators import EVALUATORS

            self._prescreener = EVALUATORS.get("proxy")(proxy=prescreen, device=str(self.device))

    @property
    def needs_data(self) -> bool:
        return self._prescreener is not None and self._prescreener.needs_data

    @property
    def candidates_per_proposal(self) -> int:
        return self.prescreen_factor if self._prescreener is not None else 1

    @abstractmethod
    def explore(self, space: Any, queries: Queries) -> None:
        """Propose architectures and call ``queries(arch)`` until it raises ``StopSearch``."""

    def search(self, space: Any, evaluator: Any, data: Any, constraints: Constraints,
               events: SearchEvents | None = None, checkpoint: Path | None = None) -> SearchResult:
        space.check_budget(constraints.flops)
        if evaluator is None:
            raise ValueError(f"strategy {self.name!r} needs an evaluator to query")
        return self.query(space, evaluator, data, constraints.flops, events)

    def query(self, space: Any, evaluator: Any, data: Any, max_flops: int | None,
              events: SearchEvents | None = None, prefix: str | None = None) -> SearchResult:
        """Explore through ``Queries`` until the budget is spent; the best queried architecture is the result.

        ``prefix`` names the queries in the records (default: this strategy's name). There is no
        checkpoint: a resumed search replays ``events.saved_queries()``.
        """
        queries = Queries(prefix or self.name, space, evaluator, data, self.seed, self.max_trials, max_flops, events,
                          prescreen=self._prescreener, show_progress=self.show_progress)
        stopped = "max_trials"
        try:
            self.explore(space, queries)
        except StopSearch as exc:
            stopped = str(exc)
        finally:
            queries.close()
        if not queries.history:
            raise RuntimeError(f"strategy {self.name!r} made no query")
        best = max(queries.history, key=lambda q: q.score)
        metrics = {**best.metrics, "queries": len(queries.history), "proposals": queries.proposals,
                   "stopped": stopped, "best_query": best.query,
                   "scorer": getattr(evaluator, "name", type(evaluator).__name__)}
        return SearchResult(arch=best.arch, flops=best.flops, params=best.params,
                            metrics=metrics, history=list(queries.history), search_seconds=queries.seconds)
