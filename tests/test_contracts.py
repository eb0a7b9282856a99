"""The contracts every registered strategy and evaluator keeps, parametrised over the registries.

A new strategy or evaluator is tested here as soon as it is registered (with its config file):
- a strategy keeps the FLOPs budget, gives the same result for the same seed, and a run killed
  mid-search resumes (``xsearch run resume=``) to the result of an uninterrupted run;
- an evaluator reports ``test_accuracy`` from ``evaluate`` (when ``reports_accuracy``) and ``score``
  from ``score``.
Strategies that need images search a small ``mbv3`` on scikit-learn digits; the others query the
synthetic NAS-Bench-Macro table (tests/data/synthetic_macro.py), so every contract runs in any clone.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from xsearch.cli import main
from xsearch.config import build_data, build_evaluator, build_space, build_strategy, compose, validate
from xsearch.evaluators import EVALUATORS
from xsearch.strategies import STRATEGIES, Constraints

# smoke-size knobs, each applied where a strategy's configuration has that key
SMOKE_SEARCH = {"epochs": 3, "warmup_epochs": 1, "train_samples": 300, "batch_size": 50, "max_trials": 8,
                "population_size": 3, "sample_size": 2, "n_startup_trials": 3, "val_samples": 100,
                "recalibration_batches": 2}
SMOKE_TRAIN = {"train.epochs": 1, "train.train_samples": 300, "train.test_samples": 200, "train.val_samples": 100}
DOWNSTREAM_TRAIN = {"train.train_images": 16, "train.holdout_images": 4, "train.channels": 16, "train.head_convs": 0,
                    "train.batch_size": 8}
ON_IMAGES = ["data=digits", "budget=smoke", "space=mbv3", "space.num_layers=4", "space.width_mult=0.5",
             *(f"{k}={v}" for k, v in SMOKE_TRAIN.items())]
TABLE_BUDGET = 40_000_000
NO_SEARCH = {"hand"}  # strategies that return a fixed design: no history, nothing to checkpoint or resume
ABSENT = object()


def overrides(name: str, table: Path) -> list[str]:
    """The settings strategy ``name`` is checked with: on digits when it needs images, else on the table."""
    search = compose([f"strategy={name}"])["search"]
    knobs = [f"search.{k}={v}" for k, v in SMOKE_SEARCH.items() if k in search]
    strategy = build_strategy(validate(compose([f"strategy={name}", *knobs, "progress=false"])))
    where = ON_IMAGES if strategy.needs_data else ["space=nasbench_macro", "evaluator=tabular",
                                                   f"evaluator.table={table}"]
    return [f"strategy={name}", *where, *knobs, "progress=false"]


class Setting:
    """Strategy ``name``'s configuration, with its space, data, evaluator and FLOPs budget."""

    def __init__(self, name: str, table: Path) -> None:
        self.overrides = overrides(name, table)
        self.cfg = validate(compose(self.overrides))
        strategy = build_strategy(self.cfg)
        evaluator = build_evaluator(self.cfg)
        self.data = build_data(self.cfg) if strategy.needs_data or evaluator.needs_data else None
        self.space = build_space(self.cfg, self.data)
        low, high = self.space.min_flops(), self.space.max_flops()
        self.budget = TABLE_BUDGET if self.data is None else low + (high - low) // 3
        self.overrides.append(f"constraints.flops={self.budget}")

    def search(self, seed: int = 0) -> Any:
        strategy = build_strategy({**self.cfg, "seed": seed})
        return strategy.search(self.space, build_evaluator(self.cfg), self.data, Constraints(self.budget), None)


_settings: dict[str, Setting] = {}
_results: dict[str, Any] = {}


def setting_for(name: str, table: Path) -> Setting:
    """Strategy ``name``'s setting, made once per test session."""
    if name not in _settings:
        _settings[name] = Setting(name, table)
    return _settings[name]


def reference(name: str, table: Path) -> Any:
    """Strategy ``name``'s search with seed 0, run once and shared by the tests."""
    if name not in _results:
        _results[name] = setting_for(name, table).search(seed=0)
    return _results[name]


def plain(obj: Any) -> Any:
    """``obj`` as JSON data without wall-clock fields (seconds, timestamps), which differ between equal runs."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    data = json.loads(json.dumps(obj, default=str))

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if "seconds" not in k and k != "recorded_at"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return strip(data)


def flops_in(rows: Any) -> list[int]:
    """Every ``flops`` / ``derived_flops`` value in a result's history: what each query or stage chose."""
    found = []
    if isinstance(rows, dict):
        found += [v for k, v in rows.items() if k in ("flops", "derived_flops") and isinstance(v, int)]
        rows = list(rows.values())
    if isinstance(rows, list):
        for r in rows:
            found += flops_in(r)
    return found


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_keeps_the_flops_budget(name, synthetic_macro_table):
    setting = setting_for(name, synthetic_macro_table)
    result = reference(name, synthetic_macro_table)
    assert result.flops <= setting.budget and setting.space.flops(result.arch) == result.flops
    assert setting.space.params(result.arch) == result.params
    history = flops_in(plain(result)["history"])
    assert (history or name in NO_SEARCH) and max(history, default=0) <= setting.budget


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_is_deterministic_for_a_seed(name, synthetic_macro_table):
    again = setting_for(name, synthetic_macro_table).search(seed=0)
    assert plain(again) == plain(reference(name, synthetic_macro_table))


class KillAfterWrite:
    """``os.replace`` that records every atomic write and raises KeyboardInterrupt after the ``at``-th one."""

    def __init__(self) -> None:
        self.writes: list[Path] = []
        self.at: int | None = None
        self.replace = os.replace

    def __call__(self, src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        self.replace(src, dst, *args, **kwargs)
        self.writes.append(Path(dst))
        if len(self.writes) == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_killed_run_resumes_to_the_uninterrupted_result(name, synthetic_macro_table, tmp_path, monkeypatch):
    """Killed right after a file is written mid-search (a kill between two checkpoints), then resumed."""
    if name in NO_SEARCH:
        pytest.skip(f"{name} does not search: there is nothing to interrupt")
    setting = setting_for(name, synthetic_macro_table)
    runs = [*setting.overrides, f"runs_root={tmp_path}", f"storage=sqlite:///{tmp_path / 'xsearch.db'}"]
    kill = KillAfterWrite()
    monkeypatch.setattr(os, "replace", kill)
    assert main(["run", *runs, f"run_dir={tmp_path / 'reference'}"]) == 0
    written = [p.name for p in kill.writes if p.is_relative_to(tmp_path / "reference")]
    during_search = written.index("search.json")  # what is written before it, the search wrote
    assert during_search >= 3, f"{name} writes no checkpoint during its search ({written}): a kill loses it all"

    kill.writes, kill.at = [], during_search // 2 + 1
    assert main(["run", *runs, f"run_dir={tmp_path / 'killed'}"]) == 130
    assert not (tmp_path / "killed" / "search.json").exists()
    kill.at = None
    assert main(["run", f"resume={tmp_path / 'killed'}"]) == 0
    resumed, uninterrupted = (json.loads((tmp_path / d / "search.json").read_text()) for d in ("killed", "reference"))
    assert plain(resumed) == plain(uninterrupted)


@pytest.mark.parametrize("name", EVALUATORS.names())
def test_evaluator_reports_its_metrics(name, digits, synthetic_macro_table, fashion_coco):
    defaults = compose([f"evaluator={name}"])
    downstream = OmegaConf.select(defaults, "train.train_images", default=ABSENT) is not ABSENT
    smoke = {"evaluator.table": synthetic_macro_table, **SMOKE_TRAIN, **DOWNSTREAM_TRAIN}
    settings = [f"evaluator={name}", "progress=false"]
    settings += (["space=mbv3", "space.num_layers=4", "space.width_mult=0.5", "data=coco", f"data.root={fashion_coco}"]
                 if downstream else ["space=nasbench_macro", "data=digits"])
    settings += [f"{k}={v}" for k, v in smoke.items() if OmegaConf.select(defaults, k, default=ABSENT) is not ABSENT]
    cfg = validate(compose(settings))
    evaluator = build_evaluator(cfg)
    data = (build_data(cfg) if downstream else digits) if evaluator.needs_data else None
    space = build_space(cfg, data)  # sized for the images, or the table's own network
    evaluator.check(space)
    evaluator.check_data(data)
    arch = space.sample(seed=0)
    if evaluator.reports_accuracy:
        metrics = evaluator.evaluate(space, arch, data, seed=0)
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
    if downstream:  # COCOeval's fractions
        metrics = evaluator.evaluate(space, arch, data, seed=0)
        assert 0.0 <= metrics["score"] <= 1.0 and metrics["score"] == metrics[evaluator.task.metric]
    score = evaluator.score(space, arch, data, seed=0)["score"]
    assert isinstance(score, float) and math.isfinite(score)
    assert evaluator.score(space, arch, data, seed=0)["score"] == score  # the same answer when asked again
