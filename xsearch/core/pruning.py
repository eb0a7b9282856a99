"""Optuna pruners by name (``search.pruner=none|median|successive_halving|hyperband``), for per-epoch trials.

A trial that trains reports one value per epoch (epochs counted from 1, the value higher-is-better
held-out accuracy); the pruner decides after each report whether the trial stops early, and a
stopped trial is recorded as PRUNED, never as a result. One function builds the pruner for every
user of the names (``xsearch tune``; the multi-trial strategies), so a name means one thing.
"""

from __future__ import annotations

import optuna

from .errors import UserError

PRUNERS = ("none", "median", "successive_halving", "hyperband")


def check_pruner(name: str | None) -> str:
    """``name`` when it is a pruner's (None means ``none``), else a UserError listing them."""
    name = name or "none"
    if name not in PRUNERS:
        raise UserError(f"search.pruner={name!r} is not a pruner; valid: {', '.join(PRUNERS)} (none trains every "
                        "trial to the end)")
    return name


def make_pruner(name: str | None, max_epochs: int | None, min_epochs: int = 1,
                reduction_factor: int = 4) -> optuna.pruners.BasePruner:
    """The Optuna pruner ``search.pruner=name`` means, for trainings of ``max_epochs`` epochs reported as steps from 1.

    ``median``: stop a training whose value at an epoch is below the median of earlier trainings' at that
    epoch, once 5 have finished (Optuna's ``MedianPruner``); ``successive_halving``: asynchronous successive
    halving, keeping one in ``reduction_factor`` at each rung from ``min_epochs``; ``hyperband``: Hyperband's
    brackets of it up to ``max_epochs`` (None: Optuna's "auto"); ``none``: every training runs to the end.
    Whoever reports never prunes after the last epoch (its training is spent, and a finished one is a result).
    """
    name = check_pruner(name)
    if name == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=min_epochs - 1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=reduction_factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_epochs, max_resource=max_epochs or "auto",
                                              reduction_factor=reduction_factor)
    return optuna.pruners.NopPruner()
