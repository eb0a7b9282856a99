"""Multi-trial search: propose architectures, query the evaluator, keep the best under the budget.

Every strategy here talks to the evaluator through ``Queries``, which
- never queries an architecture over the budget (FLOPs and/or predicted latency; a strategy that tries is a bug);
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
(the replay file is not used).

Multi-fidelity (``pruner=median|successive_halving|hyperband``; ``none``, the default, trains every
query to the end and evaluates nothing per epoch): an evaluator that ``reports_epochs`` scores each
query epoch by epoch (``score(..., report=...)``), and a ``core.fidelity.EarlyStopping`` stops the
queries that score badly: Optuna's pruner over an in-memory study whose trials are the queries
(``launcher=local``), or Ray Tune's ASHA (``launcher=ray``; successive halving and Hyperband only).
A pruned query keeps its last value as its score (the strategy compares it like any other; tpe
tells its sampler the trial PRUNED with its per-epoch values), ``pruned``, ``pruned_epoch`` and
``epoch_scores`` in its metrics; it is recorded as a PRUNED trial of the run's study, replayed on
resume like the others (and fed to the pruner again, so its later decisions are the uninterrupted
search's), and never the result: the answer is the best query that trained to the end. The last
epoch is never pruned. Workers sharing a study (``study=NAME``) cannot prune (refused). Staged and supernet strategies (danas, dnas, spos and their derive
queries) do not claim: workers sharing their study simply record their trials side by side.

Joint search of the training recipe (``search.tune_recipe=true``): each query also carries a recipe
drawn from the ``tune.*`` ranges (``xsearch.core.recipe``; tpe and nsga2 as parameters of the same
Optuna trial, random and evolution from a generator of their own, so their architectures are those
of the search without it). The evaluator trains with it (``score_with_recipe``); the query record,
its study trial (parameters ``train.<key>``), the replay file and ``search.json`` keep it, and the
result's ``metrics["recipe"]`` is the best query's, which the run retrains with and writes as
``recipe.yaml``. An architecture queried with two recipes is two queries. Not with ``study=NAME``.
"""

from __future__ import annotations

import random
import time
import zlib
from abc import abstractmethod
from functools import partial
from pathlib import Path
from typing import Any

from xsearch.core.errors import SettingError, UserError
from xsearch.core.fidelity import EarlyStopping, Pruned, Report, pruned_metrics
from xsearch.core.launch import Launcher, LocalLauncher
from xsearch.core.pruning import PRUNERS, check_pruner
from xsearch.core.recipe import RecipeRanges, check_tunable, recipe_key, with_recipe
from xsearch.core.study import SharedClaims
from xsearch.core.training import TrainingDiverged, progress, resolve_device

from ._base import Constraints, NoEvents, QueryRecord, SearchEvents, SearchResult, Strategy, as_constraints


def score_one(evaluator: Any, space: Any, data: Any, seed: int, arch: dict[str, str],
              report: Report | None = None) -> dict[str, Any]:
    """``evaluator.score`` without the training history: what a launcher runs for one query (in a Ray trial too).

    A candidate whose stand-alone training diverges (``TrainingDiverged``: NaN loss or weights at the
    search's learning rate) is a query like any other, scored 0 (the floor of every evaluator's
    score) with the message under ``diverged``: one unstable network must not end the search, and a
    resumed search replays the recorded 0 instead of diverging again.

    With ``report`` (a pruned search, ``core.fidelity``) the evaluator reports per epoch; the values
    go to ``epoch_scores`` (``[[epoch, value], ...]``), and a ``Pruned`` the evaluator lets through
    becomes the metrics of a pruned query (its last value the score). Without it the call is the plain one.
    """
    try:
        if report is None:
            metrics = evaluator.score(space, arch, data, seed=seed)
        else:
            curve: list[list[float]] = []

            def recorded(epoch: int, value: float) -> None:
                curve.append([int(epoch), float(value)])
                report(epoch, value)

            try:
                metrics = evaluator.score(space, arch, data, seed=seed, report=recorded)
            except Pruned:
                metrics = pruned_metrics(curve)
            if curve:
                metrics = {**metrics, "epoch_scores": curve}
    except TrainingDiverged as exc:
        return {"score": 0.0, "diverged": str(exc)}
    return {k: v for k, v in metrics.items() if k != "history"}


def score_with_recipe(evaluator: Any, space: Any, data: Any, seed: int, item: tuple[dict[str, str], dict[str, Any]],
                      report: Report | None = None) -> dict[str, Any]:
    """``score_one`` of ``item = (arch, recipe)``: the evaluator trains with the recipe (``search.tune_recipe``)."""
    arch, recipe = item
    return score_one(with_recipe(evaluator, recipe), space, data, seed, arch, report)


class StopSearch(Exception):
    """Raised by ``Queries`` when the query or proposal budget is spent."""


def arch_key(space: Any, arch: dict[str, str], recipe: dict[str, Any] | None = None) -> str:
    """What tells queries apart: the architecture's options (and, with ``search.tune_recipe``, its recipe)."""
    return "|".join(arch[c.label] for c in space.choices) + (f"|{recipe_key(recipe)}" if recipe else "")


def worker_seed(seed: int, worker: str) -> int:
    """The proposal seed of a worker sharing a study: ``seed + crc32(worker) mod 2**20``."""
    return seed + zlib.crc32(worker.encode()) % 2**20


class Queries:
    """The evaluator behind a query budget: budget check, cache, replay, events (see module doc)."""

    def __init__(self, prefix: str, space: Any, evaluator: Any, data: Any, seed: int, max_trials: int,
                 max_flops: int | Constraints | None, events: SearchEvents | None = None,
                 max_proposals: int | None = None, prescreen: Any = None, show_progress: bool = True,
                 launcher: Launcher | None = None, pruning: EarlyStopping | None = None) -> None:
        self.prefix, self.space, self.evaluator, self.data, self.seed = prefix, space, evaluator, data, seed
        self.pruning = pruning  # multi-fidelity: which evaluations stop early (None: every one trains to the end)
        self.pruned: dict[str, list[list[float]]] = {}  # key -> per-epoch scores of the pruned queries
        self.launcher: Launcher = launcher if launcher is not None else LocalLauncher()
        self.fresh: dict[str, dict[str, Any]] = {}  # evaluated by ``batch``, not recorded yet
        self.max_trials, self.budget = max_trials, as_constraints(max_flops)
        self.max_flops = self.budget.flops
        self.events: SearchEvents = events if events is not None else NoEvents()
        self.max_proposals = max_proposals or 50 * max_trials
        self.prescreen = prescreen
        shared = getattr(self.events, "shared_study", lambda: None)()
        self.claims = SharedClaims(shared, space, prefix, max_trials, self.budget) if shared is not None else None
        saved, self.saved_seconds = self.events.saved_queries()
        if self.claims is not None:  # the shared study is the resume state (see the module doc)
            saved = []
            if pruning is not None:
                raise UserError("search.pruner does not work with workers sharing a study (study=NAME): the pruner "
                                "would see one worker's trainings only; use search.pruner=none, or one worker")
        self.saved: dict[str, dict[str, Any]] = {arch_key(space, q["arch"], q.get("recipe")): q["metrics"]
                                                 for q in saved}
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
        return self.space.fits(arch, self.budget)

    def __call__(self, arch: dict[str, str], recipe: dict[str, Any] | None = None) -> float:
        """The score of ``arch`` (trained with ``recipe``, if any): cached, replayed from the saved queries, or
        queried from the evaluator."""
        arch = self.space.validate(arch)
        self.propose()
        if not self.within_budget(arch):
            raise RuntimeError(f"strategy {self.prefix!r} queried {arch} over the budget ({self.budget.describe()})")
        key = arch_key(self.space, arch, recipe)
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
            if self.pruning is not None:  # the pruner's history is the uninterrupted search's
                self.pruning.replay(metrics)
        elif key in self.fresh:
            metrics = self.fresh.pop(key)
        else:
            try:
                item = arch if recipe is None else (arch, recipe)
                metrics = self.launcher.map(self.scorer(recipe is not None), [item], label=self.prefix,
                                            **self._early_stop())[0]
            except BaseException:
                if claim is not None:  # free the claim for the other workers
                    self.claims.give_up(claim, "error")
                raise
        metrics = {k: v for k, v in metrics.items() if k != "history"}
        score = float(metrics["score"])
        self.seen[key] = score
        if metrics.get("pruned"):  # its last value, never the best so far (0, the floor, before any finished one)
            self.pruned[key] = metrics.get("epoch_scores") or []
            best = self.history[-1].best_score if self.history else 0.0
        else:
            best = max([score] + [q.best_score for q in self.history[-1:]])
        record = QueryRecord(query=len(self.history) + 1, arch=arch, flops=self.space.flops(arch),
                             params=self.space.params(arch), score=score, best_score=best,
                             proposals=self.proposals, metrics=metrics, source=self.prefix, recipe=recipe)
        self.history.append(record)
        if claim is not None:
            self.claims.finish(claim, record)
        self.events.query(record, self.seconds)
        self.bar.update(1)
        self.bar.set_postfix(best=f"{best:.4g}", refresh=False)
        return score

    def batch(self, archs: list[dict[str, str]], recipes: list[dict[str, Any]] | None = None) -> list[float]:
        """``[self(arch) for arch in archs]``, with every architecture the evaluator must score sent to the launcher at once.

        For proposals that do not depend on each other's scores. Order, budget, cache, replay,
        records and ``StopSearch`` are exactly those of the one-by-one calls; the launcher hands
        each score back as it finishes and the queries are recorded in proposal order as soon as
        every earlier one is (so an interrupted batch loses no recorded query). ``recipes``: each
        architecture's training recipe (``search.tune_recipe``).
        """
        archs = [self.space.validate(arch) for arch in archs]
        recipes = list(recipes) if recipes is not None else [None] * len(archs)
        if self.claims is not None:  # shared-study claims go one by one
            return [self(arch) for arch in archs]
        todo, planned = self._plan(archs, recipes)
        scores: list[float] = []

        def record_ready() -> None:
            while len(scores) < planned and arch_key(self.space, archs[len(scores)], recipes[len(scores)]) not in todo:
                scores.append(self(archs[len(scores)], recipes[len(scores)]))

        keys = list(todo)

        def arrived(index: int, metrics: dict[str, Any]) -> None:
            key = keys[index]
            self.fresh[key] = metrics
            del todo[key]
            record_ready()

        record_ready()
        self.launcher.map(self.scorer(any(r is not None for r in recipes)), list(todo.values()), arrived,
                          label=self.prefix, **self._early_stop())
        record_ready()
        while len(scores) < len(archs):  # past the plan: raises StopSearch (or the budget error) where one-by-one would
            scores.append(self(archs[len(scores)], recipes[len(scores)]))
        return scores

    def scorer(self, recipes: bool = False) -> Any:
        """``score_one`` bound to this search's evaluator, space, data and seed: the launcher's function (with
        ``recipes``: ``score_with_recipe``, whose items are ``(arch, recipe)``)."""
        return partial(score_with_recipe if recipes else score_one, self.evaluator, self.space, self.data, self.seed)

    def _early_stop(self) -> dict[str, Any]:
        """The launcher's ``early_stop`` keyword when this search prunes (none otherwise: the plain call)."""
        return {"early_stop": self.pruning} if self.pruning is not None else {}

    def pruned_curve(self, arch: dict[str, str], recipe: dict[str, Any] | None = None) -> list[list[float]] | None:
        """The per-epoch scores of ``arch`` (with ``recipe``) when its query was pruned, else None."""
        return self.pruned.get(arch_key(self.space, arch, recipe))

    def _plan(self, archs: list[dict[str, str]], recipes: list[Any]) -> tuple[dict[str, Any], int]:
        """What ``[self(a, r) for a, r in zip(archs, recipes)]`` would do: ({key: arch, or (arch, recipe)} the
        evaluator must score, in order; how many of ``archs`` are answered before a call would stop or fail)."""
        proposals, seen, queried = self.proposals, set(self.seen), len(self.history)
        todo: dict[str, Any] = {}
        for n, (arch, recipe) in enumerate(zip(archs, recipes)):
            proposals += 1
            key = arch_key(self.space, arch, recipe)
            if proposals > self.max_proposals or not self.within_budget(arch):
                return todo, n
            if key in seen:
                continue
            if queried >= self.max_trials:
                return todo, n
            queried += 1
            seen.add(key)
            if key not in self.saved:
                todo[key] = arch if recipe is None else (arch, recipe)
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
                 pruner: str = "none", pruner_min_epochs: int = 1, pruner_reduction_factor: int = 4,
                 tune_recipe: bool = False, device: str = "auto", show_progress: bool = True,
                 launcher: Launcher | None = None, recipe_ranges: RecipeRanges | None = None) -> None:
        if max_trials < 1:
            raise SettingError(f"search.max_trials must be at least 1, got {max_trials}")
        self.pruner = check_pruner(pruner)
        if pruner_min_epochs < 1 or pruner_reduction_factor < 2:
            raise SettingError(f"search.pruner_min_epochs must be at least 1 and search.pruner_reduction_factor at "
                               f"least 2, got {pruner_min_epochs} and {pruner_reduction_factor}")
        where = launcher if launcher is not None else LocalLauncher()
        if self.pruner != "none" and self.pruner not in where.pruners:
            raise SettingError(f"search.pruner={self.pruner} does not run under launcher={where.name}; there: "
                               f"{', '.join(where.pruners) or 'none'} (of {', '.join(PRUNERS)}); launcher=ray runs "
                               "Ray Tune's ASHA, and the median pruner runs in this process (launcher=local)")
        self.pruner_min_epochs, self.pruner_reduction_factor = pruner_min_epochs, pruner_reduction_factor
        if prescreen is not None and not self.supports_prescreen:
            raise SettingError(f"search.prescreen is not supported by strategy {self.name!r}; "
                             "use it with strategy=random or strategy=evolution")
        if prescreen_factor < 1:
            raise SettingError(f"search.prescreen_factor must be at least 1, got {prescreen_factor}")
        self.max_trials, self.seed, self.prescreen, self.prescreen_factor = max_trials, seed, prescreen, prescreen_factor
        self.device, self.show_progress = resolve_device(device), show_progress
        self.launcher = launcher  # where queries run (``launcher=``, supplied by the run); None: this process
        # search.tune_recipe: each query also draws a training recipe from these ranges (tune.*, supplied by the run)
        self.tune_recipe, self.recipe_ranges = tune_recipe, recipe_ranges or RecipeRanges()
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

    def recipe_rng(self) -> random.Random:
        """The generator random and evolution draw recipes from: apart from the architectures' (which stay those
        of the search without ``tune_recipe``)."""
        return random.Random(f"{self.seed}-recipe")

    @abstractmethod
    def explore(self, space: Any, queries: Queries) -> None:
        """Propose architectures and call ``queries(arch)`` (or ``queries.batch(archs)`` for proposals that do
        not depend on each other's scores) until it raises ``StopSearch``."""

    def search(self, space: Any, evaluator: Any, data: Any, constraints: Constraints,
               events: SearchEvents | None = None, checkpoint: Path | None = None) -> SearchResult:
        space.check_budget(constraints)
        if evaluator is None:
            raise ValueError(f"strategy {self.name!r} needs an evaluator to query")
        return self.query(space, evaluator, data, constraints, events)

    def early_stopping(self, evaluator: Any) -> EarlyStopping | None:
        """This search's pruning (``search.pruner``), for trainings of ``evaluator.epochs`` epochs; None without one.

        The evaluator must report per epoch (``reports_epochs``, e.g. ``evaluator=classification``).
        """
        if self.pruner == "none":
            return None
        if not getattr(evaluator, "reports_epochs", False):
            name = getattr(evaluator, "name", type(evaluator).__name__)
            raise SettingError(f"search.pruner={self.pruner} stops trainings by their per-epoch scores, and "
                               f"evaluator={name} reports none; use an evaluator that trains epoch by epoch "
                               "(evaluator=classification), or search.pruner=none")
        return EarlyStopping(self.pruner, getattr(evaluator, "epochs", None), self.pruner_min_epochs,
                             self.pruner_reduction_factor)

    def query(self, space: Any, evaluator: Any, data: Any, max_flops: int | Constraints | None,
              events: SearchEvents | None = None, prefix: str | None = None) -> SearchResult:
        """Explore through ``Queries`` until the budget is spent; the best queried architecture is the result.

        ``prefix`` names the queries in the records (default: this strategy's name). There is no
        checkpoint: a resumed search replays ``events.saved_queries()``.
        """
        if self.tune_recipe:
            check_tunable(evaluator)
        queries = Queries(prefix or self.name, space, evaluator, data, self.seed, self.max_trials, max_flops, events,
                          prescreen=self._prescreener, show_progress=self.show_progress, launcher=self.launcher,
                          pruning=self.early_stopping(evaluator))
        if self.tune_recipe and queries.claims is not None:
            raise UserError("search.tune_recipe=true does not work with workers sharing a study (study=NAME) yet; "
                            "run one worker, or tune the found network's recipe afterwards with 'xsearch tune'")
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
        finished = [q for q in queries.history if not q.metrics.get("pruned")]  # a pruned query is never the result
        if not finished:
            raise UserError(f"every one of the {len(queries.history)} queries was pruned (search.pruner="
                            f"{self.pruner}), so no network trained to the end; raise search.pruner_min_epochs or "
                            "search.max_trials, or use search.pruner=none")
        best = max(finished, key=lambda q: q.score)
        if "diverged" in best.metrics:
            raise TrainingDiverged(f"every one of the {len(queries.history)} queries diverged, so there is no "
                                   f"network to choose; the first: {queries.history[0].metrics['diverged']}")
        metrics = {**best.metrics, "queries": len(queries.history), "proposals": queries.proposals,
                   "stopped": stopped, "best_query": best.query, "scorer": scorer,
                   "diverged_queries": sum("diverged" in q.metrics for q in queries.history)}
        if any("train_epochs" in q.metrics for q in queries.history):  # the compute spent: epochs actually trained
            metrics["epochs_trained"] = sum(int(q.metrics.get("train_epochs", 0)) for q in queries.history)
        if queries.pruning is not None:
            metrics.update(pruner=self.pruner, pruned_queries=len(queries.history) - len(finished))
        if best.recipe is not None:  # search.tune_recipe: the recipe the answer was trained with
            metrics["recipe"] = best.recipe
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
