"""Optuna studies: opening them, their metric names, the trials a run adds, and the claims of workers sharing one.

The one module that talks to an Optuna storage, below everything that uses a study: the run
recorder (``xsearch.records``) adds the search's trials, the dashboard module its notes, plots and
the final studies, and the multi-trial strategies claim architectures through ``SharedClaims``
when several workers share a study (``study=NAME``). It imports nothing of the project above
``xsearch.core``; the spaces, strategies, evaluators and records it reads are passed in.

Every study has two values: a score (higher is better; ``search_metric`` and ``final_metric``
name it) and the network's ``FLOPS`` (lower is better). Every trial xsearch adds carries the user
attrs ``record_id`` (once per id: a resumed run never adds a trial twice), ``flops``, ``params``,
``recorded_at`` and, in a shared study, ``worker``.
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from .errors import UserError

FLOPS = "FLOPs"
_STORAGE_URLS = "sqlite:///runs/xsearch.db or postgresql://user:pass@host/db"


# --- storages and studies ---------------------------------------------------------------
def open_storage(storage: str, heartbeat: int | None = None) -> optuna.storages.BaseStorage:
    """The Optuna storage at URL ``storage``, or a UserError: the object ``optuna.create_study(storage=URL)`` makes.

    ``heartbeat`` (seconds; for a study several workers share): the storage keeps Optuna's heartbeats,
    so a claim whose worker has been silent for ``4 * heartbeat`` seconds can be failed and freed.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if not heartbeat:
            return optuna.storages.get_storage(storage)
        with warnings.catch_warnings():  # heartbeat_interval is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=heartbeat, grace_period=4 * heartbeat)
        return optuna.storages.get_storage(rdb)
    except (ValueError, ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"cannot open Optuna storage {storage!r}: {exc}. Use an Optuna storage URL such as "
                        f"{_STORAGE_URLS}") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors: bad URL, unreachable server
        raise UserError(f"cannot open Optuna storage {storage!r}: {type(exc).__name__}: {exc}") from None


def open_study(storage: str | optuna.storages.BaseStorage, name: str, metric_names: list[str] | None = None,
               heartbeat: int | None = None) -> optuna.Study:
    """A study with two objectives (score up, FLOPs down), created or loaded; ``metric_names`` names them for
    the dashboard (e.g. ``["inherited accuracy", "FLOPs"]``).

    ``storage``: a URL (opened with ``open_storage``, ``heartbeat`` included) or a storage ``open_storage`` made.
    """
    where = f"storage {storage!r}" if isinstance(storage, str) else f"study {name!r}"
    if isinstance(storage, str):
        storage = open_storage(storage, heartbeat)
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"],
                                    load_if_exists=True)
        if metric_names:
            set_metric_names(study, metric_names)
        return study
    except (ValueError, ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"cannot open Optuna {where}: {exc}. Use an Optuna storage URL such as "
                        f"{_STORAGE_URLS}") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors: bad URL, unreachable server
        raise UserError(f"cannot open Optuna {where}: {type(exc).__name__}: {exc}") from None


def check_storage(storage: str, attempts: int = 8) -> None:
    """Refuse (UserError) a storage URL Optuna cannot open (bad URL, no driver, no server), before any work.

    Workers started at once on a new database race to create Optuna's tables: the losers' integrity
    or duplicate-table errors are retried after a random back-off (the winner has made the tables).
    """
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fix = "use an Optuna storage URL such as sqlite:///runs/xsearch.db or postgresql://USER@HOST:PORT/DATABASE"
    try:
        for attempt in range(attempts):
            try:
                optuna.storages.RDBStorage(storage)
                break
            except sqlalchemy.exc.DBAPIError as exc:
                racing = isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)) or any(
                    words in str(exc) for words in ("already exists", "database is locked"))
                if not racing or attempt == attempts - 1:
                    raise
                time.sleep(random.uniform(0.2, 1.0))
    except (ValueError, ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"cannot open Optuna storage {storage!r}: {exc}; {fix}") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors: bad URL, unreachable server, bad password
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"cannot open Optuna storage {storage!r}: {type(exc).__name__}: {first}; is the server "
                        f"running and the URL right? {fix}") from None


def sqlite_path(storage: str) -> Path | None:
    """The file of a ``sqlite:///`` storage URL (None for other URLs and in-memory SQLite)."""
    if not storage.startswith("sqlite:///"):
        return None
    path = storage[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


# --- metric names -----------------------------------------------------------------------
def set_metric_names(study: optuna.Study, names: list[str]) -> None:
    """Name the study's values (shown on the dashboard's axes and tables), unless they already are so named."""
    if study.metric_names == names:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def search_metric(strategy: Any, evaluator: Any) -> str:
    """The name of a run study's first value: what its search trials are valued by.

    A strategy with ``inherited_scores`` values its stages and derivation queries with the supernet's
    weights; the others value their queries by the evaluator's ``score_name``.
    """
    if getattr(strategy, "inherited_scores", False):
        return f"inherited {evaluator.metric_name}"
    return evaluator.score_name


def final_metric(evaluator: Any) -> str:
    """The name of a final study's first value (the run's found network, retrained or looked up)."""
    return evaluator.result_name


def final_study_name(kind: str, space: str, data: str | None, evaluator: Any) -> str:
    """``retrained/<space>/<data>/<evaluator label>`` (``evaluated/...`` when nothing is trained)."""
    return f"{kind}/{space}/{data or 'table'}/{evaluator.label}"


# --- trials -----------------------------------------------------------------------------
def distributions(space: Any) -> dict[str, optuna.distributions.CategoricalDistribution]:
    """The parameters of a trial of ``space``: one categorical distribution per choice."""
    return {c.label: optuna.distributions.CategoricalDistribution(c.options) for c in space.choices}


def compatible_space(study: optuna.Study, distributions: dict[str, Any]) -> bool:
    """Whether trials with ``distributions`` can join ``study``: Optuna refuses a parameter name whose
    categorical choices differ from those already recorded (``CategoricalDistribution does not support
    dynamic value space``)."""
    seen: dict[str, Any] = {}
    for trial in study.get_trials(deepcopy=False):
        for name, dist in trial.distributions.items():
            seen.setdefault(name, dist)
    return all(seen.get(name, dist) == dist for name, dist in distributions.items())


def find_trial(study: optuna.Study, record_id: str, worker: str | None = None) -> optuna.trial.FrozenTrial | None:
    """The latest trial of ``study`` with user attrs ``record_id`` and ``worker`` (None: a trial without one)."""
    return next((t for t in reversed(study.get_trials(deepcopy=False))
                 if t.user_attrs.get("record_id") == record_id and t.user_attrs.get("worker") == worker), None)


def trial_attrs(record_id: str, flops: int, params: int, worker: str | None = None,
                attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The user attrs of a trial xsearch adds: its id, FLOPs, parameters, time, ``worker`` (shared studies), then
    ``attrs`` (which win)."""
    return {"record_id": record_id, "flops": flops, "params": params, "recorded_at": time.time(),
            **({"worker": worker} if worker else {}), **(attrs or {})}


def query_attrs(record: Any) -> dict[str, Any]:
    """What a query's trial says of it (a ``QueryRecord``): kind, query number, score and the scalar metrics."""
    scalars = {k: v for k, v in record.metrics.items() if isinstance(v, (int, float, str)) and k != "score"}
    return {"kind": "query", "query": record.query, "score": record.score, **scalars}


# --- workers sharing a study ------------------------------------------------------------
class SharedClaims:
    """The claim protocol of workers that share one study (``study=NAME``; ``xsearch.strategies``' multi-trial doc).

    ``shared`` holds the study and this worker's id (a ``SharedStudy``). Before it evaluates an
    architecture a worker *claims* it: ``study.ask()`` with the architecture as the trial's
    parameters, then the user attr ``arch_key`` (committed), and only then it reads every trial of
    the study. A claim is *live* while it is RUNNING and not ``yielded``, or once it is COMPLETE.
    The worker yields (user attr ``yielded``: ``duplicate of trial N`` or ``budget``, then the trial
    is told FAIL, then a short random back-off) when another live claim holds the same ``arch_key``,
    or when the study holds more than ``max_trials`` live claims. Write-then-check: of two racing
    claimers the later reader sees the earlier writer, so at most one of them goes on (both may
    yield; they retry after random back-offs), and the last claimer to go on has seen every other
    that went on, so no architecture is evaluated twice and at most ``max_trials`` are evaluated.

    The claim that goes on is evaluated and told COMPLETE with values (score, FLOPs) and the user
    attrs the recorder writes for a query, so the recorder, finding its ``record_id`` for this
    worker, adds no second trial. While a worker evaluates, a thread records Optuna heartbeats on
    its claim (when the storage keeps them: ``open_storage(url, heartbeat)``); a worker killed
    outright leaves its claim RUNNING, and once its heartbeat is older than the storage's grace
    period the other workers fail it (``optuna.storages.fail_stale_trials``). A study that already
    holds another search's claims (another space or FLOPs budget) is refused. Only public Optuna
    API: the storage that keeps the heartbeats is the one of the claim's live ``Trial``.
    """

    def __init__(self, shared: Any, space: Any, prefix: str, max_trials: int, budget: Any) -> None:
        self.study, self.worker = shared.study, shared.worker
        self.space, self.prefix, self.max_trials = space, prefix, max_trials
        self.tag = {"space": space.name, "flops_budget": getattr(budget, "flops", budget),
                     "latency_budget": getattr(budget, "latency", None)}
        self.distributions = distributions(space)
        self.fixed = optuna.samplers.PartialFixedSampler  # pins a claim's parameters to the proposal
        self.backoff = random.Random()  # back-off only: the strategy's proposals never see it
        self.beating: dict[int, threading.Event] = {}  # claim number -> stops its heartbeat thread
        self.check_compatible()
        self.release_stale()

    # --- reading the study --------------------------------------------------------------
    def claims(self) -> list[Any]:
        """RUNNING and COMPLETE claims of this search (trials with an ``arch_key``), by number."""
        states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE)
        return [t for t in self.study.get_trials(deepcopy=False, states=states)
                if "arch_key" in t.user_attrs and t.user_attrs.get("kind") == "query"]

    @staticmethod
    def live(trial: Any) -> bool:
        return trial.state.name == "COMPLETE" or "yielded" not in trial.user_attrs

    def completed(self) -> list[Any]:
        return [t for t in self.claims() if t.state.name == "COMPLETE"]

    def check_compatible(self) -> None:
        for t in self.claims():
            theirs = {k: t.user_attrs.get(k) for k in self.tag}
            if theirs != self.tag:
                raise UserError(f"study {self.study.study_name!r} holds another search (trial {t.number}: "
                                f"space {theirs['space']!r}, FLOPs budget {theirs['flops_budget']}, latency budget "
                                f"{theirs['latency_budget']}), not this one (space {self.tag['space']!r}, FLOPs budget "
                                f"{self.tag['flops_budget']}, latency budget {self.tag['latency_budget']}); give every "
                                "worker the same space, constraints.flops and constraints.latency, or choose another "
                                "study=NAME")

    def release_stale(self) -> None:
        """Fail this worker's RUNNING claims: left by an earlier process of the same run (killed, now resumed)."""
        for t in self.claims():
            if t.state.name == "RUNNING" and t.user_attrs.get("worker") == self.worker:
                self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)

    def fail_dead(self) -> None:
        """Fail other workers' claims whose heartbeat is older than the storage's grace period (killed workers);
        nothing when the storage keeps no heartbeats."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    @staticmethod
    def _trial_id(trial: Any) -> int:
        """The storage's id of a live ``trial`` (public API: by study name and trial number)."""
        storage = trial.storage
        return storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(trial.study.study_name), trial.number)

    def beat(self, trial: Any) -> None:
        """Record heartbeats on ``trial`` (this worker's claim) until ``finish`` or ``give_up``."""
        storage = trial.storage
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        if not interval:
            return
        trial_id, stop = self._trial_id(trial), threading.Event()
        storage.record_heartbeat(trial_id)

        def run() -> None:
            while not stop.wait(interval):
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as exc:  # noqa: BLE001 - a lost beat only risks the claim being freed
                    warnings.warn(f"heartbeat of claim {trial.number} not recorded: {exc}", stacklevel=1)

        self.beating[trial.number] = stop
        threading.Thread(target=run, name=f"xsearch-heartbeat-{trial.number}", daemon=True).start()

    def stop_beat(self, trial: Any) -> None:
        stop = self.beating.pop(trial.number, None)
        if stop is not None:
            stop.set()

    def arch(self, trial: Any) -> dict[str, str]:
        return {c.label: trial.params[c.label] for c in self.space.choices}

    def wait(self, attempt: int) -> None:
        time.sleep(min(2.0, 0.02 * 2 ** min(attempt, 7)) * self.backoff.uniform(0.5, 1.5))

    # --- claiming -----------------------------------------------------------------------
    def claim(self, arch: dict[str, str], key: str) -> tuple[Any, Any, str]:
        """Claim ``arch``: ``("done", trial, "")`` another worker finished it; ``("mine", trial, "")`` evaluate
        it and ``finish`` the trial; ``("stop", None, why)`` the study holds ``max_trials`` finished queries."""
        attempt = 0
        while True:
            self.fail_dead()
            claims = self.claims()
            done = [t for t in claims if t.state.name == "COMPLETE"]
            same = [t for t in done if t.user_attrs["arch_key"] == key]
            if same:
                return "done", same[0], ""
            if len(done) >= self.max_trials:
                return "stop", None, f"{self.max_trials} queries made in study {self.study.study_name!r}"
            busy = [t for t in claims if t.user_attrs["arch_key"] == key and self.live(t)]
            if busy or sum(self.live(t) for t in claims) >= self.max_trials:
                self.wait(attempt)  # another worker is evaluating it, or the last claims are out: wait for them
                attempt += 1
                continue
            trial = self.ask(arch, key)
            claims = self.claims()  # write-then-check: read only after our arch_key is committed
            rival = [t for t in claims if t.number != trial.number and t.user_attrs["arch_key"] == key and self.live(t)]
            over = sum(self.live(t) for t in claims) > self.max_trials
            if not rival and not over:
                self.beat(trial)
                return "mine", trial, ""
            self.give_up(trial, f"duplicate of trial {rival[0].number}" if rival else "budget")
            self.wait(attempt)
            attempt += 1

    def ask(self, arch: dict[str, str], key: str) -> Any:
        sampler = self.study.sampler
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.sampler = self.fixed(fixed_params=arch, base_sampler=optuna.samplers.RandomSampler())
        try:
            with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize": beat does it
                warnings.filterwarnings("ignore", message=".*[Hh]eartbeat.*")
                trial = self.study.ask(fixed_distributions=self.distributions)
        finally:
            self.study.sampler = sampler
        for name, value in {"kind": "query", "worker": self.worker, "search": self.prefix, **self.tag}.items():
            trial.set_user_attr(name, value)
        trial.set_user_attr("arch_key", key)  # the claim: committed before any read
        return trial

    def give_up(self, trial: Any, why: str) -> None:
        self.stop_beat(trial)
        trial.set_user_attr("yielded", why)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def finish(self, trial: Any, record: Any) -> None:
        """The claim becomes the query's trial (``record``: its ``QueryRecord``), with the attrs the recorder
        writes for a query (``trial_attrs``, ``query_attrs``) and its ``metrics``."""
        attrs = {**trial_attrs(record.record_id, record.flops, record.params, attrs=query_attrs(record)),
                 "metrics": record.metrics}
        self.stop_beat(trial)
        if trial.storage.get_trial(self._trial_id(trial)).state.is_finished():
            # freed by another worker while this one stalled past the grace period: the recorder adds
            # the query as a trial of its own (the architecture may have been claimed again meanwhile)
            warnings.warn(f"claim {trial.number} was freed as stale before its result came; recording it apart",
                          stacklevel=1)
            return
        for name, value in attrs.items():
            trial.set_user_attr(name, value)
        self.study.tell(trial, [record.score, float(record.flops)])
