"""Where evaluations run: in this process (``launcher=local``) or as Ray Tune trials (``launcher=ray``).

A launcher maps a function over a batch of items. ``map(fn, items, on_result)`` returns the
results in the items' order and calls ``on_result(index, result)`` on the driver as each item
finishes, so the caller can record results while the others still run (the run's recorder writes
the Optuna study and the run folder; nothing here writes either).

- ``LocalLauncher`` calls ``fn`` on each item in turn, in this process (the default).
- ``RayLauncher`` runs each item as one Ray Tune trial: one ``tune.Tuner`` per batch (a grid over
  the items' indices), ``tune.with_resources`` for ``cpus_per_trial`` / ``gpus_per_trial``,
  ``TuneConfig(max_concurrent_trials=...)``, actors reused between trials, trial folders under
  ``storage_path`` (the run folder's ``ray/``). Ray starts once per process: a local Ray with the
  machine's CPUs, or the cluster at ``address`` (``auto``, ``HOST:PORT``, ``ray://HOST:10001``).
  ``fn`` and the items travel through Ray's object store (``tune.with_parameters``), so they must
  be picklable (cloudpickle); this is checked before a trial starts.

Multi-fidelity (``search.pruner``): with ``early_stop`` (a ``core.fidelity.EarlyStopping``) ``map``
calls ``fn(item, report)``, and ``report(epoch, value)`` after each training epoch may stop the
evaluation. In this process the search's in-memory Optuna study with the pruner decides
(``EarlyStopping.run``); under Ray, Ray Tune's ``ASHAScheduler`` (one per search, kept across its
batches): each epoch's value is a Tune result (``xsearch_epoch``, ``xsearch_value``), and a trial the
scheduler stops comes back as ``EarlyStopping.stopped(curve)``, the metrics of a pruned query.

Ray is imported only inside this module's functions: ``launcher=local`` never loads it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    from .fidelity import EarlyStopping

OnResult = Callable[[int, Any], None]
CLUSTER_HINT = ("start one with 'ray start --head' and pass ray.address=auto on that machine, or "
                "ray.address=ray://HOST:10001 from another one; leave ray.address unset (null) for a local Ray")
_CONNECTED: dict[str, Any] = {}  # the Ray this process started or joined: {"address": ..., "client": bool}


class Launcher(ABC):
    """Runs ``fn(item)`` for every item of a batch; ``Queries.batch`` and the top-k retraining call it."""

    name = ""
    storage_path: Path | None = None  # where trial folders go (Ray Tune's); the pipeline sets the run folder's ray/
    pruners: tuple[str, ...] = ()  # the search.pruner values its map(early_stop=...) supports

    def connect(self) -> None:
        """Get ready to run trials (start or join Ray); a no-op in this process."""

    def check(self, obj: Any, what: str) -> None:
        """Raise UserError when ``obj`` cannot go where the trials run (a no-op in this process)."""

    @abstractmethod
    def map(self, fn: Callable[..., Any], items: Sequence[Any], on_result: OnResult | None = None,
            label: str = "trials", early_stop: EarlyStopping | None = None) -> list[Any]:
        """``[fn(item) for item in items]``, calling ``on_result(i, result)`` on the driver as item ``i`` finishes.

        ``label`` names the batch (Ray Tune's experiment folder). An exception of ``fn`` (or of
        ``on_result``) propagates; results already handed to ``on_result`` stay handed. With
        ``early_stop``: ``fn(item, report)``, each evaluation stopped early as the module doc says.
        """

    def describe(self) -> str:
        return self.name


class LocalLauncher(Launcher):
    """Every item in this process, one after the other (``launcher=local``)."""

    name = "local"
    pruners = ("median", "successive_halving", "hyperband")  # Optuna's pruners, in this process

    def map(self, fn: Callable[..., Any], items: Sequence[Any], on_result: OnResult | None = None,
            label: str = "trials", early_stop: EarlyStopping | None = None) -> list[Any]:
        results = []
        for i, item in enumerate(items):
            results.append(fn(item) if early_stop is None else early_stop.run(fn, item))
            if on_result is not None:
                on_result(i, results[-1])
        return results


class RayLauncher(Launcher):
    """Each item one Ray Tune trial, on local Ray or a cluster (``launcher=ray``; see the module doc)."""

    name = "ray"
    pruners = ("successive_halving", "hyperband")  # Ray Tune's ASHA (asynchronous successive halving / Hyperband)

    def __init__(self, address: str | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                 max_concurrent: int | None = None, storage_path: str | Path | None = None) -> None:
        if not cpus_per_trial > 0 or gpus_per_trial < 0:
            raise UserError(f"ray.cpus_per_trial must be above 0 and ray.gpus_per_trial at least 0, got "
                            f"{cpus_per_trial} and {gpus_per_trial}")
        if max_concurrent is not None and max_concurrent < 1:
            raise UserError(f"ray.max_concurrent must be at least 1 (or null: as many as the resources allow), "
                            f"got {max_concurrent}")
        self.address = None if address in (None, "", "local") else str(address)
        check_address(self.address)
        self.cpus_per_trial, self.gpus_per_trial, self.max_concurrent = cpus_per_trial, gpus_per_trial, max_concurrent
        self.storage_path = Path(storage_path) if storage_path is not None else None
        self.batches = 0

    def describe(self) -> str:
        where = self.address or "local Ray"
        return (f"ray ({where}; {self.cpus_per_trial:g} CPU, {self.gpus_per_trial:g} GPU per trial, "
                f"{self.max_concurrent or 'as many as fit'} at once)")

    def connect(self) -> None:
        """Start (or join) Ray for this process; an unreachable cluster is a UserError."""
        start_ray(self.address)

    def check(self, obj: Any, what: str) -> None:
        check_picklable(obj, what)

    def map(self, fn: Callable[..., Any], items: Sequence[Any], on_result: OnResult | None = None,
            label: str = "trials", early_stop: EarlyStopping | None = None) -> list[Any]:
        items = list(items)
        if not items:
            return []
        check_picklable(fn, "the function the trials run (evaluator, space and data)")
        self.connect()
        from ray import tune

        self.batches += 1
        client = bool(_CONNECTED.get("client"))
        # Tune's driver-side callbacks run where the Tuner runs: with Ray Client that is the cluster,
        # so results are handed over when the batch ends instead of as each trial ends
        forward = _Forward(len(items), on_result, early_stop.stopped if early_stop is not None else None)
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no TensorBoard/CSV per trial
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        from ray.tune.logger import JsonLoggerCallback

        resources = {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}
        if early_stop is None:
            trainable = tune.with_resources(tune.with_parameters(_trial, fn=fn, items=items), resources)
            scheduler = None
        else:  # per-epoch results; ASHA stops the trials that score badly (one scheduler for the whole search)
            trainable = tune.with_resources(tune.with_parameters(_reporting_trial, fn=fn, items=items,
                                                                 last_epoch=early_stop.max_epochs), resources)
            scheduler = early_stop.ray_scheduler(metric="xsearch_value", time_attr="xsearch_epoch")
        storage = None if client or self.storage_path is None else str(Path(self.storage_path).resolve())
        name = f"{label}-{time.strftime('%Y%m%d-%H%M%S')}-{self.batches}"
        tuner = tune.Tuner(
            trainable,
            param_space={"index": tune.grid_search(list(range(len(items))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=self.max_concurrent, reuse_actors=True,
                                        scheduler=scheduler),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0, stop=forward.stopper(),
                                      callbacks=[] if client else [forward.callback, JsonLoggerCallback()],
                                      failure_config=tune.FailureConfig(max_failures=0, fail_fast=True)),
        )
        grid = tuner.fit()
        if forward.error is not None:  # on_result failed (or was interrupted): the trials were stopped
            raise forward.error
        by_index: dict[int, Any] = {}
        for result in grid:
            if result.error is not None:
                raise trial_error(result.error, label)
            if result.metrics and "xsearch_result" in result.metrics:
                by_index[int(result.metrics["xsearch_index"])] = result.metrics["xsearch_result"]
            elif result.metrics and forward.stopped_early(result.metrics):
                by_index[int(result.metrics["xsearch_index"])] = forward.stopped(result.metrics["xsearch_curve"])
        missing = [i for i in range(len(items)) if i not in by_index]
        if missing:  # stopped before every trial finished (Ctrl-C stops Tune gracefully)
            raise KeyboardInterrupt(f"{len(missing)} of {len(items)} Ray Tune trials did not finish")
        for i in range(len(items)):
            forward.deliver(i, by_index[i])  # those not handed over yet (all of them with Ray Client)
        return [by_index[i] for i in range(len(items))]


def _trial(config: dict[str, Any], fn: Callable[[Any], Any], items: Sequence[Any]) -> None:
    """One Ray Tune trial: ``fn`` on item ``config["index"]``, reported back as its only result."""
    from ray import tune

    index = int(config["index"])
    tune.report({"xsearch_index": index, "xsearch_result": fn(items[index])})


def _reporting_trial(config: dict[str, Any], fn: Callable[..., Any], items: Sequence[Any],
                     last_epoch: int | None) -> None:
    """One Ray Tune trial that reports per epoch: ``fn(item, report)``; each epoch's value is a result ASHA judges.

    The last epoch's value travels with the trial's result (one report: nothing is left to stop).
    When ASHA stops the trial, Tune ends this thread inside ``tune.report`` (``SystemExit``).
    """
    from ray import tune

    index = int(config["index"])
    curve: list[list[float]] = []

    def report(epoch: int, value: float) -> None:
        curve.append([int(epoch), float(value)])
        if last_epoch is None or epoch < last_epoch:
            tune.report({"xsearch_index": index, "xsearch_epoch": int(epoch), "xsearch_value": float(value),
                         "xsearch_curve": [list(c) for c in curve]})

    result = fn(items[index], report)
    last = {"xsearch_epoch": curve[-1][0], "xsearch_value": curve[-1][1]} if curve else {}
    tune.report({"xsearch_index": index, **last, "xsearch_result": result})


class _Forward:
    """Tune callback on the driver: hands each finished trial's result to ``on_result`` once, in any order."""

    def __init__(self, n: int, on_result: OnResult | None,
                 stopped: Callable[[list[list[float]]], Any] | None = None) -> None:
        from ray.tune import Callback, Stopper

        self.on_result, self.delivered, self.error = on_result, [False] * n, None
        self.stopped = stopped  # the result of a trial the scheduler stopped, from its per-epoch curve
        outer = self

        class _Callback(Callback):
            def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
                if outer.error is not None or "xsearch_index" not in result:
                    return
                try:
                    if "xsearch_result" in result:
                        outer.deliver(int(result["xsearch_index"]), result["xsearch_result"])
                    elif outer.stopped_early(result):
                        outer.deliver(int(result["xsearch_index"]), outer.stopped(result["xsearch_curve"]))
                except BaseException as exc:  # noqa: BLE001 - re-raised by map once Tune has stopped
                    outer.error = exc

        class _Stop(Stopper):
            def __call__(self, trial_id: str, result: dict) -> bool:
                return outer.error is not None

            def stop_all(self) -> bool:
                return outer.error is not None

        self.callback, self._stopper = _Callback(), _Stop()

    def stopper(self) -> Any:
        return self._stopper

    def stopped_early(self, result: dict) -> bool:
        """Whether ``result`` is the last one of a trial the scheduler stopped (Tune marks it ``done`` before the
        callbacks see it; a trial stopped for another error is not: ``error`` is set then)."""
        return (self.stopped is not None and self.error is None and bool(result.get("done"))
                and "xsearch_curve" in result and "xsearch_result" not in result)

    def deliver(self, index: int, result: Any) -> None:
        if not self.delivered[index]:
            self.delivered[index] = True
            if self.on_result is not None:
                self.on_result(index, result)


def trial_error(error: BaseException, label: str) -> BaseException:
    """The exception to raise on the driver for a failed trial: the user's own error when it is one."""
    cause = error
    for _ in range(5):  # TuneError -> RayTaskError -> the evaluator's exception
        inner = getattr(cause, "cause", None) or cause.__cause__
        if inner is None or inner is cause:
            break
        cause = inner
    if isinstance(cause, (UserError, KeyboardInterrupt)):
        return cause
    first = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    return RuntimeError(f"a Ray Tune trial of {label!r} failed: {type(cause).__name__}: {first}")


def check_address(address: str | None) -> None:
    """Refuse a ``ray.address`` that is not null, ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``."""
    if address is None or address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"ray.address={address!r} is not an address; use auto, HOST:PORT (e.g. 10.0.0.5:6379) or "
                        f"ray://HOST:10001; {CLUSTER_HINT}")


def start_ray(address: str | None = None) -> None:
    """``ray.init`` once per process: a local Ray (``address`` None) or the cluster at ``address``.

    An address nobody answers at (a closed port, a host that is not there) is a UserError after at
    most a few seconds, before any work; so is ``auto`` with no Ray running on this machine.
    """
    check_address(address)
    if address not in (None, "auto"):
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise UserError(f"ray.address={address!r}: nothing answers at {host}:{port} ({exc}); {CLUSTER_HINT}") from None
    if _CONNECTED:
        if _CONNECTED["address"] != address:
            raise UserError(f"this process already uses Ray at {_CONNECTED['address'] or 'a local Ray'}; "
                            f"ray.address={address!r} needs a new process")
        return
    import ray

    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if address is None:
            kwargs["num_cpus"] = os.cpu_count()
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"ray.address={address!r}: cannot connect to Ray ({first}); {CLUSTER_HINT}") from None
    _CONNECTED.update(address=address, client=bool(address and address.startswith("ray://")))


def check_picklable(obj: Any, what: str) -> None:
    """Raise UserError when ``obj`` cannot travel to a Ray worker (cloudpickle, as Ray sends it)."""
    from ray import cloudpickle

    try:
        cloudpickle.dumps(obj)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means the same to the user
        raise UserError(f"launcher=ray sends {what} to Ray workers, but it cannot be pickled "
                        f"({type(exc).__name__}: {exc}); use launcher=local") from None


def make_launcher(name: str, address: str | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                  max_concurrent: int | None = None, storage_path: str | Path | None = None) -> Launcher:
    """The launcher called ``name`` (local or ray), its settings checked; ``connect()`` starts Ray."""
    if name == "local":
        return LocalLauncher()
    if name != "ray":
        raise UserError(f"launcher={name!r} is not valid; use local or ray")
    return RayLauncher(address, cpus_per_trial, gpus_per_trial, max_concurrent, storage_path)
