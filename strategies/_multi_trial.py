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

Several workers, one search (``study=NAME storage=URL``, Optuna's distributed pattern). When the
events hand over a ``SharedStudy``, ``xsearch.core.study.SharedClaims`` coordinates the worker
processes (on one machine or many) through that study alone; nothing else is shared:
- each worker keeps its own run folder and its own strategy, whose proposals are seeded with
  ``seed + crc32(worker id) mod 2**20`` so the workers explore different architectures (the
  evaluator keeps ``seed``, so every worker scores an architecture the same way);
- before it evaluates an architecture a worker claims it in the study (``SharedClaims``: write the
  claim, then read every other; yield to a rival claim of the same architecture or when the study
  holds ``max_trials`` live claims), so no architecture is evaluated twice and at most
  ``max_trials`` are evaluated;
- the claim that goes on is evaluated and told COMPLETE with values (score, FLOPs) and the user
  attrs the recorder writes for a query (``record_id``, ``kind=query``, ``metrics``...), so the
  recorder, finding its ``record_id`` for this worker, adds no second trial;
- a proposal another worker has already COMPLETED returns that worker's score without a query
  (as a repeated proposal of one's own does); one another worker is still evaluating is waited for;
- a worker stops when the study holds ``max_trials`` COMPLETE queries; its result is the best of
  the whole study (its history keeps only its own queries), and its run folder is finished as
  usual: with a training evaluator every worker retrains that same best in its own folder;
- a study that already holds another search's claims (another space or FLOPs budget) is refused;
- an evaluation that raises (or Ctrl-C) tells its claim FAIL before the error goes on. While a
  worker evaluates, a thread records Optuna heartbeats on its claim (when the storage keeps them,
  which the application sets up from ``heartbeat=``); a worker killed outright leaves its claim
  RUNNING, and once its heartbeat is older than the storage's grace period the other workers fail
  it and go on. ``resume=`` of the killed worker's run folder fails its own stale claims at once.
The study is the resume state of a worker: a resumed worker finds its own finished queries there
(the replay file is not used). Staged and supernet strategies (danas, dnas, spos and their derive
queries) do not claim: workers sharing their study simply record their trials side by side.
"""

from __future__ import annotations

import time
import zlib
from abc import abstractmethod
from functools import partial
from pathlib import Path
from typing import Any

from xsearch.core.errors import SettingError
from xsearch.core.launch import Launcher, LocalLauncher
from xsearch.core.study import SharedClaims
from xsearch.core.training import TrainingDiverged, progress, resolve_device

from ._base import Constraints, NoEvents, QueryRecord, SearchEvents, SearchResult, Strategy


def score_one(evaluator: Any, space: Any, data: Any, seed: int, arch: dict[str, str]) -> dict[str, Any]:
    """``evaluator.score`` without the training history: what a launcher runs for one query (in a Ray trial too).

    A candidate whose stand-alone training diverges (``TrainingDiverged``: NaN loss or weights at the
    search's learning rate) is a query like any other, scored 0 (the floor of every evaluator's
    score) with the message under ``diverged``: one unstable network must not end the search, and a
    resumed search replays the recorded 0 instead of diverging again.
    """
    try:
        metrics = evaluator.score(space, arch, data, seed=seed)
    except TrainingDiverged as exc:
        return {"score": 0.0, "diverged": str(exc)}
    return {k: v for k, v in metrics.items() if k != "history"}


class StopSearch(Exception):
    """Raised by ``Queries`` when the query or proposal budget is spent."""


def arch_key(space: Any, arch: dict[str, str]) -> str:
    return "|".join(arch[c.label] for c in space.choices)


def worker_seed(seed: int, worker: str) -> int:
    """The proposal seed of a worker sharing a study: ``seed + crc32(worker) mod 2**20``."""
    return seed + zlib.crc32(worker.encode()) % 2**20


class Queries:
    """The evaluator behind a query budget: budget check, cache, replay, events (see module doc)."""

    def __init__(self, prefix: str, space: Any, evaluator: Any, data: Any, seed: int, max_trials: int,
                 max_flops: int | None, events: SearchEvents | None = None,
                 max_proposals: int | None = None, prescreen: Any = None, show_progress: bool = True,
                 launcher: Launcher | None = None) -> None:
        self.prefix, self.space, self.evaluator, self.data, self.seed = prefix, space, evaluator, data, seed
        self.launcher: Launcher = launcher if launcher is not None else LocalLauncher()
        self.fresh: dict[str, dict[str, Any]] = {}  # evaluated by ``batch``, not recorded yet
        self.max_trials, self.max_flops = max_trials, max_flops
        self.events: SearchEvents = events if events is not None else NoEvents()
        self.max_proposals = max_proposals or 50 * max_trials
        self.prescreen = prescreen
        shared = getattr(self.events, "shared_study", lambda: None)()
        self.claims = SharedClaims(shared, space, prefix, max_trials, max_flops) if shared is not None else None
        saved, self.saved_seconds = self.events.saved_queries()
        if self.claims is not None:  # the shared study is the resume state (see the module doc)
            saved = []
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
        claim = None
        if self.claims is not None:
            outcome, claim, why = self.claims.claim(arch, key)
            if outcome == "stop":
                raise StopSearch(why)
            if outcome == "done":  # another worker's query: its score, no query spent
                self.seen[key] = float(claim.values[0])
                return self.seen[key]
        if key in self.saved:
            metrics = self.saved[key]
        elif key in self.fresh:
            metrics = self.fresh.pop(key)
        else:
            try:
                metrics = self.launcher.map(self.scorer(), [arch], label=self.prefix)[0]
            except BaseException:
                if claim is not None:  # free the claim for the other workers
                    self.claims.give_up(claim, "error")
                raise
        metrics = {k: v for k, v in metrics.items() if k != "history"}
        score = float(metrics["score"])
        self.seen[key] = score
        best = max([score] + [q.best_score for q in self.history[-1:]])
        record = QueryRecord(query=len(self.history) + 1, arch=arch, flops=self.space.flops(arch),
                             params=self.space.params(arch), score=score, best_score=best,
                             proposals=self.proposals, metrics=metrics, source=self.prefix)
        self.history.append(record)
        if claim is not None:
            self.claims.finish(claim, record)
        self.events.query(record, self.seconds)
        self.bar.update(1)
        self.bar.set_postfix(best=f"{best:.4g}", refresh=False)
        return score

    def batch(self, archs: list[dict[str, str]]) -> list[float]:
        """``[self(arch) for arch in archs]``, with every architecture the evaluator must score sent to the launcher at once.

        For proposals that do not depend on each other's scores. Order, budget, cache, replay,
        records and ``StopSearch`` are exactly those of the one-by-one calls; the launcher hands
        each score back as it finishes and the queries are recorded in proposal order as soon as
        every earlier one is (so an interrupted batch loses no recorded query).
        """
        archs = [self.space.validate(arch) for arch in archs]
        if self.claims is not None:  # shared-study claims go one by one
            return [self(arch) for arch in archs]
        todo, planned = self._plan(archs)
        scores: list[float] = []

        def record_ready() -> None:
            while len(scores) < planned and arch_key(self.space, archs[len(scores)]) not in todo:
                scores.append(self(archs[len(scores)]))

        keys = list(todo)

        def arrived(index: int, metrics: dict[str, Any]) -> None:
            key = keys[index]
            self.fresh[key] = metrics
            del todo[key]
            record_ready()

        record_ready()
        self.launcher.map(self.scorer(), list(todo.values()), arrived, label=self.prefix)
        record_ready()
        while len(scores) < len(archs):  # past the plan: raises StopSearch (or the budget error) where one-by-one would
            scores.append(self(archs[len(scores)]))
        return scores

    def scorer(self) -> Any:
        """``score_one`` bound to this search's evaluator, space, data and seed: the launcher's function."""
        return partial(score_one, self.evaluator, self.space, self.data, self.seed)

    def _plan(self, archs: list[dict[str, str]]) -> tuple[dict[str, dict[str, str]], int]:
        """What ``[self(a) for a in archs]`` would do: ({key: arch} the evaluator must score, in order;
        how many of ``archs`` are answered before a call would stop or fail)."""
        proposals, seen, queried = self.proposals, set(self.seen), len(self.history)
        todo: dict[str, dict[str, str]] = {}
        for n, arch in enumerate(archs):
            proposals += 1
            key = arch_key(self.space, arch)
            if proposals > self.max_proposals or not self.within_budget(arch):
                return todo, n
            if key in seen:
                continue
            if queried >= self.max_trials:
                return todo, n
            queried += 1
            seen.add(key)
            if key not in self.saved:
                todo[key] = arch
        return todo, len(archs)

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
                 device: str = "auto", show_progress: bool = True, launcher: Launcher | None = None) -> None:
        if max_trials < 1:
            raise SettingError(f"search.max_trials must be at least 1, got {max_trials}")
        if prescreen is not None and not self.supports_prescreen:
            raise SettingError(f"search.prescreen is not supported by strategy {self.name!r}; "
                             "use it with strategy=random or strategy=evolution")
        if prescreen_factor < 1:
            raise SettingError(f"search.prescreen_factor must be at least 1, got {prescreen_factor}")
        self.max_trials, self.seed, self.prescreen, self.prescreen_factor = max_trials, seed, prescreen, prescreen_factor
        self.device, self.show_progress = resolve_device(device), show_progress
        self.launcher = launcher  # where queries run (``launcher=``, supplied by the run); None: this process
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
        """Propose architectures and call ``queries(arch)`` (or ``queries.batch(archs)`` for proposals that do
        not depend on each other's scores) until it raises ``StopSearch``."""

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
                          prescreen=self._prescreener, show_progress=self.show_progress, launcher=self.launcher)
        stopped = "max_trials"
        seed = self.seed
        if queries.claims is not None:  # this worker's own proposals (see the module doc)
            self.seed = worker_seed(seed, queries.claims.worker)
        try:
            self.explore(space, queries)
        except StopSearch as exc:
            stopped = str(exc)
        finally:
            self.seed = seed
            queries.close()
        scorer = getattr(evaluator, "name", type(evaluator).__name__)
        if queries.claims is not None:
            return self.shared_result(space, queries, stopped, scorer)
        if not queries.history:
            raise RuntimeError(f"strategy {self.name!r} made no query")
        best = max(queries.history, key=lambda q: q.score)
        if "diverged" in best.metrics:
            raise TrainingDiverged(f"every one of the {len(queries.history)} queries diverged, so there is no "
                                   f"network to choose; the first: {queries.history[0].metrics['diverged']}")
        metrics = {**best.metrics, "queries": len(queries.history), "proposals": queries.proposals,
                   "stopped": stopped, "best_query": best.query, "scorer": scorer,
                   "diverged_queries": sum("diverged" in q.metrics for q in queries.history)}
        return SearchResult(arch=best.arch, flops=best.flops, params=best.params,
                            metrics=metrics, history=list(queries.history), search_seconds=queries.seconds)

    def shared_result(self, space: Any, queries: Queries, stopped: str, scorer: str) -> SearchResult:
        """The best query of the whole shared study; the history holds this worker's own queries."""
        claims = queries.claims
        done = claims.completed()
        if not done:
            raise RuntimeError(f"strategy {self.name!r}: study {claims.study.study_name!r} holds no finished query")
        best = max(done, key=lambda t: (t.values[0], -t.number))
        arch = claims.arch(best)
        metrics = {**best.user_attrs["metrics"], "queries": len(done), "worker_queries": len(queries.history),
                   "proposals": queries.proposals, "stopped": stopped, "best_query": done.index(best) + 1,
                   "best_trial": best.number,
                   "best_worker": best.user_attrs["worker"], "worker": claims.worker,
                   "diverged_queries": sum("diverged" in t.user_attrs.get("metrics", {}) for t in done),
                   "study": claims.study.study_name, "scorer": scorer}
        return SearchResult(arch=arch, flops=space.flops(arch), params=space.params(arch), metrics=metrics,
                            history=list(queries.history), search_seconds=queries.seconds)
