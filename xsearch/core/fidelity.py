"""Multi-fidelity trials: per-epoch scores, and stopping the trainings that score badly early (``search.pruner``).

A training evaluator's ``score(space, arch, data, seed, report=...)`` calls ``report(epoch, value)``
after every training epoch (epoch counted from 1) with the held-out score of the network at that
point; ``report`` may raise ``Pruned`` (Optuna's ``TrialPruned``), which stops the training. The
evaluator then *returns* (does not raise) its metrics with ``pruned`` set (see ``pruned_metrics``).

The metrics of a query that reported per epoch hold:

- ``score``: the last value reported (for a finished training, its final score);
- ``epoch_scores``: ``[[epoch, value], ...]``, every value reported, in order;
- when the training was stopped early: ``pruned: True``, ``pruned_epoch`` and ``train_epochs``
  (both the last epoch trained).

``EarlyStopping`` is one search's pruning: in this process (``launcher=local``) every evaluation
is a trial of an in-memory Optuna study with the pruner (``core.pruning.make_pruner``: ``median``:
``MedianPruner``; ``successive_halving``: ``SuccessiveHalvingPruner``; ``hyperband``: ``HyperbandPruner``); under
``launcher=ray`` Ray Tune's ``ASHAScheduler`` decides instead (``xsearch.core.launch``). The last
epoch is never pruned: its training is spent already, and a finished training is a result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna

from .pruning import check_pruner, make_pruner

Pruned = optuna.TrialPruned  # what ``report`` raises to stop a training (the same class Optuna's own code raises)
Report = Callable[[int, float], None]
_STUDY = "xsearch-pruning"  # a fixed name: Optuna's Hyperband assigns trials to brackets by study name and number



def pruned_metrics(curve: list[list[float]], **extra: Any) -> dict[str, Any]:
    """The metrics of a training stopped after the last entry of ``curve`` (``[[epoch, value], ...]``)."""
    epoch, value = curve[-1]
    return {"score": float(value), **extra, "pruned": True, "pruned_epoch": int(epoch), "train_epochs": int(epoch),
            "epoch_scores": [[int(e), float(v)] for e, v in curve]}


def hyperband_brackets(min_epochs: int, max_epochs: int, reduction_factor: int) -> int:
    """Hyperband's number of brackets for trainings of ``min_epochs`` to ``max_epochs`` (Optuna's formula)."""
    return math.floor(math.log(max(max_epochs, min_epochs) / min_epochs, reduction_factor) + 1e-9) + 1


class EarlyStopping:
    """One search's pruning (``search.pruner``): which evaluations stop early, decided from their per-epoch scores.

    ``max_epochs``: the epochs of a full training (the evaluator's ``epochs``; None when unknown),
    never pruned at; ``min_epochs``: every training runs at least this many epochs;
    ``reduction_factor``: successive halving keeps one in ``reduction_factor`` at each rung.

    The launcher that runs the evaluations drives it: ``run`` in this process, ``ray_scheduler``
    under Ray. ``replay`` gives it a query a resumed search answers from its records, so the
    pruner's history (and hence its decisions) is that of the uninterrupted search.
    """

    def __init__(self, pruner: str, max_epochs: int | None, min_epochs: int = 1, reduction_factor: int = 4) -> None:
        if check_pruner(pruner) == "none":
            raise ValueError("EarlyStopping needs a pruner; search.pruner=none means no EarlyStopping")
        self.pruner, self.max_epochs = pruner, max_epochs
        self.min_epochs, self.reduction_factor = min_epochs, reduction_factor
        self._study: optuna.Study | None = None
        self._scheduler: Any = None
        self._replayed: list[dict[str, Any]] = []

    def may_prune(self, epoch: int) -> bool:
        """Whether a training may stop after ``epoch`` (never after the last one)."""
        return self.max_epochs is None or epoch < self.max_epochs

    # --- in this process: an Optuna study with the pruner -------------------------------
    def study(self) -> optuna.Study:
        """The in-memory study whose trials are this search's evaluations (made on first use)."""
        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            pruner = make_pruner(self.pruner, self.max_epochs, self.min_epochs, self.reduction_factor)
            self._study = optuna.create_study(study_name=_STUDY, direction="maximize", pruner=pruner,
                                              sampler=optuna.samplers.RandomSampler(seed=0))
            for metrics in self._replayed:
                self._replay_trial(metrics)
        return self._study

    def run(self, fn: Callable[[Any, Report], Any], item: Any) -> Any:
        """``fn(item, report)`` as a trial of the study: ``report`` raises ``Pruned`` when the pruner says so."""
        study = self.study()
        trial = study.ask()
        stopped = []

        def report(epoch: int, value: float) -> None:
            trial.report(float(value), int(epoch))
            if self.may_prune(epoch) and trial.should_prune():
                stopped.append(epoch)
                raise Pruned(f"pruned after epoch {epoch} by {self.pruner}")

        try:
            result = fn(item, report)
        except BaseException as exc:  # a Pruned that ``fn`` lets through is still a pruned trial
            study.tell(trial, state=optuna.trial.TrialState.PRUNED if isinstance(exc, Pruned) and stopped
                       else optuna.trial.TrialState.FAIL)
            raise
        self._tell(trial, result, bool(stopped))
        return result

    def _tell(self, trial: optuna.Trial, metrics: Any, stopped: bool = False) -> None:
        """Finish ``trial`` as its metrics say: PRUNED, COMPLETE with its score, or FAIL (no per-epoch score)."""
        study = self.study()
        metrics = metrics if isinstance(metrics, dict) else {}
        if stopped or metrics.get("pruned"):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif metrics.get("epoch_scores") and "diverged" not in metrics:
            study.tell(trial, float(metrics["score"]))
        else:  # diverged, or an evaluator that reports no epochs: nothing for the pruner to compare
            study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _replay_trial(self, metrics: dict[str, Any]) -> None:
        trial = self._study.ask()
        for epoch, value in metrics.get("epoch_scores") or []:
            trial.report(float(value), int(epoch))
            if self.may_prune(epoch):
                trial.should_prune()  # the pruner's own bookkeeping (successive halving's rungs), as when it ran
        self._tell(trial, metrics)

    def replay(self, metrics: dict[str, Any]) -> None:
        """A query answered from a resumed search's records: into the pruner's history, as if it had just run."""
        self._replayed.append(metrics)
        if self._study is not None:
            self._replay_trial(metrics)
        if self._scheduler is not None:
            self._replay_asha(metrics, len(self._replayed))

    # --- under Ray: one ASHA scheduler for every batch of the search ----------------------
    def ray_scheduler(self, metric: str, time_attr: str) -> Any:
        """Ray Tune's ``ASHAScheduler`` for this search (made on first use, then the same object for every batch,
        so later trials are compared with earlier ones): ``successive_halving`` one bracket, ``hyperband`` as many
        as Hyperband has (asynchronous Hyperband). ``median`` has no ASHA form (refused by the launcher)."""
        if self._scheduler is None:
            from ray.tune.schedulers import ASHAScheduler

            max_t = self.max_epochs or 100
            grace = min(self.min_epochs, max_t)
            brackets = hyperband_brackets(grace, max_t, self.reduction_factor) if self.pruner == "hyperband" else 1
            self._scheduler = ASHAScheduler(time_attr=time_attr, metric=metric, mode="max", max_t=max_t,
                                            grace_period=grace, reduction_factor=self.reduction_factor,
                                            brackets=brackets)
            self._asha_keys = (metric, time_attr)
            for n, metrics in enumerate(self._replayed, 1):
                self._replay_asha(metrics, n)
        return self._scheduler

    def _replay_asha(self, metrics: dict[str, Any], n: int) -> None:
        from types import SimpleNamespace

        metric, time_attr = self._asha_keys
        trial = SimpleNamespace(trial_id=f"xsearch-replayed-{n}")  # ASHA reads only the trial's id
        self._scheduler.on_trial_add(None, trial)
        for epoch, value in metrics.get("epoch_scores") or []:
            if self.may_prune(epoch):
                self._scheduler.on_trial_result(None, trial, {time_attr: int(epoch), metric: float(value)})
        self._scheduler.on_trial_remove(None, trial)

    def stopped(self, curve: list[list[float]]) -> dict[str, Any]:
        """The metrics of an evaluation Ray Tune stopped after ``curve`` (its per-epoch reports)."""
        return pruned_metrics(curve)
