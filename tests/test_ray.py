"""Ray Tune trials (``launcher=ray``): the same trials as in-process, clear errors, retrain_top, resume."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from xsearch.cli import main
from xsearch.core.errors import UserError
from xsearch.core.launch import LocalLauncher, RayLauncher, check_picklable, start_ray
from xsearch.evaluators import TabularEvaluator
from xsearch.records import RunRecorder
from xsearch.search_spaces import get_space
from xsearch.strategies import STRATEGIES, Constraints

BUDGET = Constraints(45_000_000)


@pytest.fixture(scope="module")
def space():
    return get_space("nasbench_macro")


@pytest.fixture(scope="module")
def tabular(synthetic_macro_table):
    return TabularEvaluator(str(synthetic_macro_table))


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for this module: 2 CPUs, so 2 trials at a time with 1 CPU each."""
    start_ray(None)
    return RayLauncher(cpus_per_trial=1, max_concurrent=2)


def trials(result):
    return [(h.query, h.arch, h.score, h.proposals) for h in result.history]


def recorder(folder: Path, space, study):
    folder.mkdir(parents=True, exist_ok=True)
    return RunRecorder(folder, space, study)


def search(name, launcher, evaluator, space, events=None, **knobs):
    strategy = STRATEGIES.get(name)(seed=5, show_progress=False, launcher=launcher, **knobs)
    return strategy.search(space, evaluator, None, BUDGET, events)


def same_trials_both_ways(knobs, space, tabular, ray_local, tmp_path):
    ray_local.storage_path = tmp_path / "ray"
    for name, k in knobs.items():
        studies = {m: optuna.create_study(directions=["maximize", "minimize"]) for m in ("local", "ray")}
        local = search(name, LocalLauncher(), tabular, space, recorder(tmp_path / f"{name}-l", space, studies["local"]),
                       **k)
        ray = search(name, ray_local, tabular, space, recorder(tmp_path / f"{name}-r", space, studies["ray"]), **k)
        assert trials(ray) == trials(local) and len(local.history) == k["max_trials"]
        assert ray.arch == local.arch
        ids = {m: sorted((t.user_attrs["record_id"], t.values[0]) for t in s.get_trials()) for m, s in studies.items()}
        assert ids["ray"] == ids["local"] and len(ids["ray"]) == k["max_trials"]
        # the in-process reference the batching must not change: one query at a time, as before launchers
        one_by_one = search(name, None, tabular, space, **k)
        assert trials(one_by_one) == trials(local)
    assert any((tmp_path / "ray").iterdir())  # Ray Tune's trial folders went where they were told


def test_ray_trials_equal_in_process_trials(space, tabular, ray_local, tmp_path):
    """A seeded random search on 2 Ray workers gives the same queries (order, architectures, scores) and study trials."""
    same_trials_both_ways({"random": {"max_trials": 4}}, space, tabular, ray_local, tmp_path)


@pytest.mark.slow
def test_ray_trials_equal_in_process_trials_for_batched_strategies(space, tabular, ray_local, tmp_path):
    """Evolution (initial population, then 3 children at a time) and tpe (3 asks at a time): the same trials."""
    same_trials_both_ways({"evolution": {"max_trials": 7, "population_size": 4, "sample_size": 2, "parallel_queries": 3},
                           "tpe": {"max_trials": 6, "n_startup_trials": 3, "parallel_queries": 3}},
                          space, tabular, ray_local, tmp_path)


def test_parallel_queries_change_only_the_batching(space, tabular):
    """tpe with parallel_queries=3 asks three before it tells; the search is still seeded and within budget."""
    a = search("tpe", LocalLauncher(), tabular, space, max_trials=9, n_startup_trials=3, parallel_queries=3)
    b = search("tpe", None, tabular, space, max_trials=9, n_startup_trials=3, parallel_queries=3)
    assert trials(a) == trials(b) and len(a.history) == 9
    assert all(h.flops <= BUDGET.flops for h in a.history)


class FailingAt:
    """Scores from the table, but raises at call ``fail_at`` (calls counted in a file: trials run in other processes)."""

    def __init__(self, table, counter: Path, fail_at=None):
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
        self.table, self.counter, self.fail_at = table, str(counter), fail_at
        self.name, self.reports_accuracy, self.needs_data = "failing", True, False

    def score(self, space, arch, data, seed=0):
        with open(self.counter, "a") as f:
            f.write(space.benchmark_key(arch) + "\n")
        calls = len(Path(self.counter).read_text().split())
        if self.fail_at is not None and calls >= self.fail_at:
            raise UserError(f"evaluation {calls} refused on purpose")
        return self.table.score(space, arch, data, seed)


@pytest.mark.slow
def test_resumed_ray_search_repeats_nothing_and_loses_nothing(space, tabular, ray_local, tmp_path):
    """A trial fails mid-batch: the user's error comes back; the resume queries only what was not recorded."""
    launcher = RayLauncher(cpus_per_trial=1, max_concurrent=1, storage_path=tmp_path / "ray")
    reference = search("random", None, tabular, space, max_trials=8)
    study = optuna.create_study(directions=["maximize", "minimize"])
    first = FailingAt(tabular, tmp_path / "calls1", fail_at=4)
    with pytest.raises(UserError, match="refused on purpose"):
        search("random", launcher, first, space, recorder(tmp_path / "run", space, study), max_trials=8)
    saved = json.loads((tmp_path / "run" / "search_trials.json").read_text())["queries"]
    assert len(saved) == 3  # one at a time: the three before the failure were recorded as they finished
    again = FailingAt(tabular, tmp_path / "calls2")
    resumed = search("random", launcher, again, space, recorder(tmp_path / "run", space, study), max_trials=8)
    assert len((tmp_path / "calls2").read_text().split()) == 5  # only the missing queries
    assert trials(resumed) == trials(reference)
    ids = [t.user_attrs["record_id"] for t in study.get_trials()]
    assert len(ids) == 8 == len(set(ids))


class Curves:
    """Scores from the table, reported per epoch as ``final * (0.5 + 0.5 e / 4)`` (epoch 4 is the score)."""

    name, reports_accuracy, needs_data, reports_epochs, epochs = "curves", True, False, True, 4

    def __init__(self, table):
        from ray import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
        self.table = table

    def score(self, space, arch, data, seed=0, report=None):
        final = self.table.score(space, arch, data, seed)["score"]
        for epoch in range(1, self.epochs + 1):
            if report is not None:
                report(epoch, final * (0.5 + 0.5 * epoch / self.epochs))
        return {"score": final, "train_epochs": self.epochs}


def test_asha_stops_bad_trials_and_they_are_recorded_pruned(space, tabular, ray_local, tmp_path):
    """search.pruner under launcher=ray: Ray Tune's ASHA stops trials; they become pruned queries and PRUNED trials."""
    launcher = RayLauncher(cpus_per_trial=1, max_concurrent=1, storage_path=tmp_path / "ray")  # one at a time: seeded
    study = optuna.create_study(directions=["maximize", "minimize"])
    result = search("random", launcher, Curves(tabular), space, recorder(tmp_path / "run", space, study), max_trials=8,
                    pruner="successive_halving")
    pruned = [h for h in result.history if h.metrics.get("pruned")]
    assert pruned and result.metrics["pruned_queries"] == len(pruned) and not result.metrics.get("pruned")
    for h in pruned:  # stopped at ASHA's first rung (epoch 1 of 4), its last report kept as its score
        assert h.metrics["pruned_epoch"] == 1 and h.metrics["epoch_scores"] == [[1, h.score]]
    assert result.metrics["epochs_trained"] == 8 * 4 - 3 * len(pruned)
    states = [t.state.name for t in study.get_trials()]
    assert states.count("PRUNED") == len(pruned) and states.count("COMPLETE") == 8 - len(pruned)
    # evolution queries its children one per batch (one Tuner each): the one ASHA of the search still compares them
    evolution = search("evolution", launcher, Curves(tabular), space, max_trials=6, population_size=3, sample_size=2,
                       pruner="successive_halving")
    assert any(h.metrics.get("pruned") for h in evolution.history[3:])
    with pytest.raises(UserError, match="search.pruner=median does not run under launcher=ray"):
        STRATEGIES.get("random")(max_trials=4, launcher=launcher, pruner="median")


def test_retrain_top_records_each_and_keeps_the_best(tmp_path, synthetic_macro_table, capsys):
    table = TabularEvaluator(str(synthetic_macro_table)).table
    args = ["run", "space=nasbench_macro", "strategy=random", "evaluator=tabular",
            f"evaluator.table={synthetic_macro_table}", "search.max_trials=6", "constraints.flops=45M",
            "retrain_top=3", f"runs_root={tmp_path}", f"run_dir={tmp_path / 'top'}", "progress=false"]
    assert main(args) == 0
    run = tmp_path / "top"
    metrics = json.loads((run / "metrics.json").read_text())["retrain"]
    rows = metrics["retrain_top"]
    assert [r["rank"] for r in rows] == [1, 2, 3] and len({json.dumps(r["arch"]) for r in rows}) == 3
    search_result = json.loads((run / "search.json").read_text())
    assert rows[0]["arch"] == search_result["arch"]  # the search's answer is always retrained
    space = get_space("nasbench_macro")
    truth = [table[space.benchmark_key(r["arch"])]["mean_acc"] / 100 for r in rows]
    assert [r["value"] for r in rows] == pytest.approx(truth)  # each one really evaluated
    arch = json.loads((run / "arch.json").read_text())["arch"]
    assert space.benchmark_key(arch) == space.benchmark_key(rows[truth.index(max(truth))]["arch"])
    storage = f"sqlite:///{tmp_path / 'xsearch.db'}"
    search_study = optuna.load_study(study_name="top", storage=storage)
    assert not any("retrain" in t.user_attrs.get("kind", "") for t in search_study.get_trials())  # kept apart
    final_name = search_study.user_attrs["final_study"]
    final = optuna.load_study(study_name=final_name, storage=storage)
    ids = {t.user_attrs["record_id"] for t in final.get_trials()}
    assert {f"{run.resolve()}#retrain-top{i}" for i in (1, 2, 3)} <= ids  # beside the run's final network
    assert str(run.resolve()) in ids


def run_cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_bad_launcher_inputs_exit_2_before_any_work(tmp_path, synthetic_macro_table, capsys):
    base = ["run", "space=nasbench_macro", "strategy=random", "evaluator=tabular",
            f"evaluator.table={synthetic_macro_table}", f"runs_root={tmp_path}", "progress=false"]
    code, err = run_cli([*base, "launcher=slurm"], capsys)
    assert code == 2 and "launcher='slurm' is not valid" in err and "local or ray" in err
    t0 = time.time()
    code, err = run_cli([*base, "launcher=ray", "ray.address=127.0.0.1:1"], capsys)
    assert code == 2 and "nothing answers at 127.0.0.1:1" in err and "ray start --head" in err
    assert time.time() - t0 < 30
    code, err = run_cli([*base, "launcher=ray", "ray.address=ray://nowhere"], capsys)
    assert code == 2 and "is not an address" in err
    code, err = run_cli([*base, "launcher=ray", "ray.cpus_per_trial=0"], capsys)
    assert code == 2 and "ray.cpus_per_trial" in err
    code, err = run_cli([*base, "retrain_top=-1"], capsys)
    assert code == 2 and "retrain_top" in err
    assert not list(tmp_path.glob("*-nasbench_macro-random"))  # no run folder was made
    assert not (tmp_path / "xsearch.db").exists()


def test_unpicklable_evaluator_is_refused():
    class Locked:
        lock = None

    evaluator = Locked()
    evaluator.lock = threading.Lock()
    with pytest.raises(UserError, match="cannot be pickled"):
        check_picklable(evaluator, "the evaluator")
    LocalLauncher().check(evaluator, "the evaluator")  # in-process nothing travels
