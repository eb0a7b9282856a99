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


def make_pruner(name: str | None, max_epochs: int) -> optuna.pruners.BasePruner:
    """The pruner ``search.pruner=name`` means, for trials of ``max_epochs`` epochs reported as steps 1..max_epochs.

    ``median``: stop a trial whose value at an epoch is below the median of earlier trials' at that
    epoch, once 5 trials have finished (Optuna's ``MedianPruner``). ``successive_halving`` and
    ``hyperband``: asynchronous successive halving (one rung per factor 3 of epochs from epoch 1), and
    Hyperband's brackets of it up to ``max_epochs``. ``none``: every trial trains to the end.
    """
    name = check_pruner(name)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()
