"""Training recipes as search parameters: the ranges ``xsearch tune`` and ``search.tune_recipe=true`` draw from.

A *recipe* is a plain dict of the training evaluator's ``train.*`` settings that tuning changes:
``optimizer`` (``sgd`` or ``adamw``), then with SGD ``lr`` (per 256 images) and ``weight_decay``, with
AdamW ``adamw_lr`` and ``adamw_weight_decay`` (the two optimizers' rates and decays differ by orders of
magnitude, so each has its own range and a recipe holds only its optimizer's pair), ``label_smoothing``,
``batch_size`` and ``augment`` (the augmentation's strength). ``RecipeRanges`` holds the ranges (the
``tune.*`` settings); its methods suggest a recipe to an Optuna trial (parameters named ``train.<key>``),
draw one at random, mutate one, and give the Optuna distributions of one. ``with_recipe`` gives an
evaluator that trains with a recipe. This module imports nothing of the project above ``xsearch.core``
and no torch, so the configuration's schema can hold ``RecipeRanges``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from typing import Any

from .errors import SettingError, UserError

OPTIMIZERS = ("sgd", "adamw")
# the keys each optimizer's recipe holds besides the shared ones, log-scaled
_RATES = {"sgd": ("lr", "weight_decay"), "adamw": ("adamw_lr", "adamw_weight_decay")}
_LINEAR = ("label_smoothing", "augment")
PARAM_PREFIX = "train."  # the Optuna parameter of recipe key k is "train.k" (never a space's choice label)


@dataclasses.dataclass
class RecipeRanges:
    """The ranges of a tuned training recipe (``tune.*``): [low, high] for numbers, the choices for the rest.

    A one-value range (``tune.augment=[1.0,1.0]``, ``tune.optimizer=[sgd]``) keeps that setting fixed.
    """

    optimizer: list[str] = dataclasses.field(default_factory=lambda: list(OPTIMIZERS))
    lr: list[float] = dataclasses.field(default_factory=lambda: [0.02, 1.0])  # SGD, per 256 images; log scale
    weight_decay: list[float] = dataclasses.field(default_factory=lambda: [1e-6, 1e-3])  # SGD; log scale
    adamw_lr: list[float] = dataclasses.field(default_factory=lambda: [2e-4, 2e-2])  # log scale
    adamw_weight_decay: list[float] = dataclasses.field(default_factory=lambda: [1e-3, 0.3])  # log scale
    label_smoothing: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.3])
    batch_size: list[int] = dataclasses.field(default_factory=lambda: [64, 128, 256])
    augment: list[float] = dataclasses.field(default_factory=lambda: [0.0, 2.0])  # 1: the data's own crop and flip

    def __post_init__(self) -> None:
        """Refuse ranges that cannot be drawn from (SettingError naming the ``tune.*`` key)."""
        bad = [o for o in self.optimizer if o not in OPTIMIZERS]
        if not self.optimizer or bad or len(set(self.optimizer)) != len(self.optimizer):
            raise SettingError(f"tune.optimizer={list(self.optimizer)} must list distinct optimizers of "
                               f"{', '.join(OPTIMIZERS)}; e.g. tune.optimizer=[sgd]")
        for key in (*_RATES["sgd"], *_RATES["adamw"], *_LINEAR):
            low_high = getattr(self, key)
            if len(low_high) != 2 or not all(math.isfinite(v) for v in low_high) or low_high[0] > low_high[1]:
                default = {f.name: f for f in dataclasses.fields(RecipeRanges)}[key].default_factory()
                raise SettingError(f"tune.{key}={list(low_high)} must be [low, high] with low <= high, e.g. the "
                                   f"default tune.{key}=[{default[0]:g},{default[1]:g}]")
            if key not in _LINEAR and low_high[0] <= 0:
                raise SettingError(f"tune.{key}={list(low_high)} is searched on a log scale: both ends must be above 0")
            if key in _LINEAR and low_high[0] < 0:
                raise SettingError(f"tune.{key}={list(low_high)} must not go below 0")
        if self.label_smoothing[1] >= 1:
            raise SettingError(f"tune.label_smoothing={list(self.label_smoothing)} must stay below 1")
        sizes = list(self.batch_size)
        if not sizes or any(b < 1 for b in sizes) or len(set(sizes)) != len(sizes):
            raise SettingError(f"tune.batch_size={list(self.batch_size)} must list distinct batch sizes of at least 1")

    @property
    def keys(self) -> tuple[str, ...]:
        """Every recipe key these ranges can set (a recipe holds its optimizer's pair only)."""
        pairs = [k for o in self.optimizer for k in _RATES[o]]
        return ("optimizer", *pairs, "label_smoothing", "batch_size", "augment")

    # --- drawing recipes -----------------------------------------------------------------
    def suggest(self, trial: Any) -> dict[str, Any]:
        """A recipe from Optuna ``trial`` (its parameters named ``train.<key>``; the rates only of its optimizer)."""
        optimizer = trial.suggest_categorical(PARAM_PREFIX + "optimizer", list(self.optimizer))
        recipe: dict[str, Any] = {"optimizer": optimizer}
        for key in _RATES[optimizer]:
            recipe[key] = trial.suggest_float(PARAM_PREFIX + key, *getattr(self, key), log=True)
        recipe["label_smoothing"] = trial.suggest_float(PARAM_PREFIX + "label_smoothing", *self.label_smoothing)
        recipe["batch_size"] = trial.suggest_categorical(PARAM_PREFIX + "batch_size", list(self.batch_size))
        recipe["augment"] = trial.suggest_float(PARAM_PREFIX + "augment", *self.augment)
        return recipe

    def _draw(self, key: str, rng: random.Random) -> Any:
        if key == "optimizer":
            return rng.choice(list(self.optimizer))
        if key == "batch_size":
            return rng.choice(list(self.batch_size))
        low, high = getattr(self, key)
        if key in _LINEAR:
            return rng.uniform(low, high)
        return math.exp(rng.uniform(math.log(low), math.log(high)))

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A recipe drawn uniformly (the rates log-uniformly) with ``rng``."""
        optimizer = self._draw("optimizer", rng)
        keys = (*_RATES[optimizer], "label_smoothing", "batch_size", "augment")
        return {"optimizer": optimizer, **{key: self._draw(key, rng) for key in keys}}

    def mutate(self, recipe: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """``recipe`` with one setting drawn again (a new optimizer brings its own rates, drawn too)."""
        child = dict(recipe)
        key = rng.choice(list(recipe))
        child[key] = self._draw(key, rng)
        if key == "optimizer" and child["optimizer"] != recipe["optimizer"]:
            for old in _RATES[recipe["optimizer"]]:
                child.pop(old, None)
            child.update({new: self._draw(new, rng) for new in _RATES[child["optimizer"]]})
        return child

    # --- checking and recording ------------------------------------------------------------
    def distributions(self, recipe: dict[str, Any]) -> dict[str, Any]:
        """The Optuna distributions of ``recipe``'s parameters (``train.<key>``), to record it as a trial's params."""
        import optuna

        dists: dict[str, Any] = {}
        for key in recipe:
            if key in ("optimizer", "batch_size"):
                dists[PARAM_PREFIX + key] = optuna.distributions.CategoricalDistribution(list(getattr(self, key)))
            else:
                dists[PARAM_PREFIX + key] = optuna.distributions.FloatDistribution(*getattr(self, key),
                                                                                   log=key not in _LINEAR)
        return dists

    def outside(self, recipe: dict[str, Any]) -> list[str]:
        """The settings of ``recipe`` these ranges cannot draw, as ``tune.*`` fixes (empty: it lies within them)."""
        problems = []
        for key, value in recipe.items():
            allowed = getattr(self, key)
            if key in ("optimizer", "batch_size"):
                if value not in allowed:
                    problems.append(f"train.{key}={value} is not among tune.{key}={list(allowed)}")
            elif not allowed[0] <= value <= allowed[1]:
                problems.append(f"train.{key}={value:g} lies outside tune.{key}={list(allowed)}")
        return problems


def params(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` as Optuna trial parameters: ``{"train.lr": 0.2, ...}``."""
    return {PARAM_PREFIX + key: value for key, value in recipe.items()}


def from_params(trial_params: dict[str, Any]) -> dict[str, Any]:
    """The recipe among a trial's parameters (those named ``train.<key>``)."""
    return {k[len(PARAM_PREFIX):]: v for k, v in trial_params.items() if k.startswith(PARAM_PREFIX)}


def recipe_key(recipe: dict[str, Any] | None) -> str:
    """A stable text key of ``recipe`` ("" for none), to tell queries of one architecture with two recipes apart."""
    return ",".join(f"{k}={recipe[k]!r}" for k in sorted(recipe)) if recipe else ""


def check_tunable(evaluator: Any) -> None:
    """Refuse (UserError) an evaluator whose training a recipe cannot set (a table, a proxy, a detector)."""
    keys = ("optimizer", *_RATES["sgd"], *_RATES["adamw"], *_LINEAR, "batch_size")
    missing = [k for k in keys if not hasattr(evaluator, k)]
    if not getattr(evaluator, "trains", False) or missing:
        raise UserError(f"evaluator {getattr(evaluator, 'name', evaluator)!r} has no training recipe to tune "
                        f"({', '.join('train.' + k for k in missing) or 'it trains nothing'}); use "
                        "evaluator=classification")


def default_recipe(evaluator: Any, space: Any) -> dict[str, Any]:
    """The recipe ``evaluator`` trains with now (``optimizer=auto`` resolved as the space asks)."""
    optimizer = evaluator.optimizer if evaluator.optimizer != "auto" else getattr(space, "optimizer", "sgd")
    keys = (*_RATES[optimizer], "label_smoothing", "batch_size", "augment")
    return {"optimizer": optimizer, **{key: getattr(evaluator, key) for key in keys}}


def with_recipe(evaluator: Any, recipe: dict[str, Any] | None) -> Any:
    """A copy of ``evaluator`` that trains with ``recipe`` (``evaluator`` itself when there is none)."""
    if not recipe:
        return evaluator
    unknown = [k for k in recipe if not hasattr(evaluator, k)]
    if unknown:
        raise UserError(f"evaluator {getattr(evaluator, 'name', evaluator)!r} has no setting "
                        f"{', '.join('train.' + k for k in unknown)}; a tuned recipe needs evaluator=classification")
    tuned = copy.copy(evaluator)
    for key, value in recipe.items():
        setattr(tuned, key, value)
    return tuned
