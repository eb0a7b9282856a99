"""Multi-trial strategies (random, evolution, tpe, nsga2) against the NAS-Bench-Macro table."""

from __future__ import annotations

import json

import optuna
import pytest

from xsearch.cli import main
from xsearch.core.errors import UserError
from xsearch.evaluators import TabularEvaluator
from xsearch.records import RunRecorder
from xsearch.search_spaces import get_space
from xsearch.strategies import STRATEGIES, Constraints, mutate

MULTI = ["random", "evolution", "tpe", "nsga2"]
KNOBS = {"random": {}, "evolution": {"population_size": 6, "sample_size": 3}, "tpe": {"n_startup_trials": 5},
         "nsga2": {"population_size": 6}}


@pytest.fixture(scope="module")
def space():
    return get_space("nasbench_macro")


@pytest.fixture(scope="module")
def tabular(macro_table):
    return TabularEvaluator(str(macro_table))


def make(name, seed=0, max_trials=20, **extra):
    return STRATEGIES.get(name)(max_trials=max_trials, seed=seed, show_progress=False, **KNOBS[name], **extra)


def study():
    return optuna.create_study(directions=["maximize", "minimize"])


def test_tabular_answers_hand_picked_entries(space, tabular):
    best = tabular.evaluate(space, space.arch_from_key("22212220"))
    assert best["benchmark_key"] == "22212220" and best["test_accuracy"] == pytest.approx(0.9313, abs=1e-4)
    worst = tabular.evaluate(space, space.arch_from_key("00000000"))
    assert worst["test_accuracy"] == pytest.approx(0.4536, abs=1e-4)
    entry = tabular.table["02012100"]
    got = tabular.evaluate(space, space.arch_from_key("02012100"))
    assert got["table_mean_acc"] == entry["mean_acc"] and got["table_flops"] == space.flops(space.arch_from_key("02012100"))
    assert tabular.best_under(space, None) == ("22212220", pytest.approx(93.13, abs=0.01))


def test_tabular_errors_are_clear(tmp_path, space):
    with pytest.raises(UserError, match="does not exist"):
        TabularEvaluator(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"acc": 3}}')
    with pytest.raises(UserError, match="mean_acc"):
        TabularEvaluator(str(bad))
    with pytest.raises(ValueError, match="evaluator.table"):
        TabularEvaluator(None)


@pytest.mark.parametrize("name", MULTI)
def test_strategy_is_seeded_keeps_the_budget_and_records_every_query(name, space, tabular, tmp_path):
    budget = 30_000_000
    s1 = study()
    a = make(name, seed=3).search(space, tabular, None, Constraints(budget), RunRecorder(tmp_path, space, s1))
    b = make(name, seed=3).search(space, tabular, None, Constraints(budget), None)
    assert [h.arch for h in a.history] == [h.arch for h in b.history]  # deterministic given the seed
    assert len(a.history) == 20 and len({json.dumps(h.arch) for h in a.history}) == 20  # distinct queries
    assert all(h.flops <= budget for h in a.history) and a.flops <= budget
    assert a.metrics["score"] == max(h.score for h in a.history)
    assert a.metrics["test_accuracy"] == pytest.approx(tabular.evaluate(space, a.arch)["test_accuracy"])
    assert [h.best_score for h in a.history] == sorted(h.best_score for h in a.history)
    trials = s1.get_trials()
    assert len(trials) == 20 and all(t.values[1] <= budget for t in trials)
    assert {t.user_attrs["benchmark_key"] for t in trials} == {space.benchmark_key(h.arch) for h in a.history}
    c = make(name, seed=4).search(space, tabular, None, Constraints(budget), None)
    assert [h.arch for h in c.history] != [h.arch for h in a.history]


def test_evolution_and_tpe_beat_random_on_average(space, tabular):
    budget = 50_000_000

    def mean_best(name):
        return sum(make(name, seed=s, max_trials=60).search(space, tabular, None, Constraints(budget)).metrics["score"]
                   for s in range(4)) / 4

    random_best = mean_best("random")
    assert mean_best("evolution") >= random_best - 0.001
    assert mean_best("tpe") >= random_best - 0.001


def test_mutation_changes_one_layer_within_budget(space):
    import random

    rng = random.Random(0)
    parent = space.arch_from_key("10101010")  # 29.3M MACs
    for _ in range(50):
        child = mutate(space, parent, rng, 40_000_000)
        assert sum(child[k] != parent[k] for k in parent) == 1 and space.flops(child) <= 40_000_000
    # no single change of this 53M parent fits 40M: a fresh sample under the budget instead
    assert space.flops(mutate(space, space.arch_from_key("11111111"), rng, 40_000_000)) <= 40_000_000


class Interrupting:
    """An evaluator that is killed (KeyboardInterrupt) at its n-th call, else asks the table."""

    def __init__(self, table, after=None):
        self.table, self.after, self.calls = table, after, 0

    def score(self, space, arch, data, seed=0):
        self.calls += 1
        if self.after is not None and self.calls > self.after:
            raise KeyboardInterrupt
        return self.table.score(space, arch, data, seed)


@pytest.mark.parametrize("name", ["evolution", "tpe"])
def test_resume_neither_repeats_nor_loses_trials(name, space, tabular, tmp_path):
    budget = Constraints(45_000_000)
    reference = make(name, max_trials=25).search(space, tabular, None, budget, None)
    s = study()
    with pytest.raises(KeyboardInterrupt):
        make(name, max_trials=25).search(space, Interrupting(tabular, after=11), None, budget,
                                         RunRecorder(tmp_path, space, s))
    assert len(json.loads((tmp_path / "search_trials.json").read_text())["queries"]) == 11
    resumed_eval = Interrupting(tabular)  # a new recorder over the same folder, as after a restart
    resumed = make(name, max_trials=25).search(space, resumed_eval, None, budget, RunRecorder(tmp_path, space, s))
    assert resumed_eval.calls == 14  # only the missing queries are asked
    assert [h.arch for h in resumed.history] == [h.arch for h in reference.history]
    ids = [t.user_attrs["record_id"] for t in s.get_trials()]
    assert len(ids) == 25 == len(set(ids))


class Diverging:
    """An evaluator whose training diverges for every third architecture it is asked, else asks the table."""

    def __init__(self, table):
        self.table, self.calls = table, 0

    def score(self, space, arch, data, seed=0):
        from xsearch.core.training import TrainingDiverged

        self.calls += 1
        if self.calls % 3 == 0:
            raise TrainingDiverged(f"training diverged in \"query {self.calls}\": the loss is nan. Lower train.lr.")
        return self.table.score(space, arch, data, seed)


@pytest.mark.parametrize("name", ["random", "tpe"])
def test_a_diverged_candidate_scores_zero_and_the_search_goes_on(name, space, tabular, tmp_path):
    s = study()
    result = make(name, max_trials=12).search(space, Diverging(tabular), None, Constraints(45_000_000),
                                              RunRecorder(tmp_path, space, s))
    assert len(result.history) == 12 and result.metrics["diverged_queries"] == 4
    diverged = [h for h in result.history if "diverged" in h.metrics]
    assert [h.query for h in diverged] == [3, 6, 9, 12] and all(h.score == 0.0 for h in diverged)
    assert "Lower train.lr" in diverged[0].metrics["diverged"]
    assert result.metrics["score"] > 0 and "diverged" not in result.metrics  # the answer trained fine
    assert sum("diverged" in t.user_attrs for t in s.get_trials()) == 4  # in the study, for the dashboard
    resumed_eval = Diverging(tabular)  # resume replays the recorded zeros: nothing is trained again
    again = make(name, max_trials=12).search(space, resumed_eval, None, Constraints(45_000_000),
                                             RunRecorder(tmp_path, space, s))
    assert resumed_eval.calls == 0 and [h.arch for h in again.history] == [h.arch for h in result.history]


def test_a_search_where_every_candidate_diverges_says_so(space, tabular):
    from xsearch.core.training import TrainingDiverged

    class AlwaysDiverging:
        def score(self, space, arch, data, seed=0):
            raise TrainingDiverged("training diverged: the loss is nan. Lower train.lr.")

    evaluator = AlwaysDiverging()
    with pytest.raises(TrainingDiverged, match="every one of the 5 queries diverged.*Lower train.lr"):
        make("random", max_trials=5).search(space, evaluator, None, Constraints(45_000_000), None)


def test_prescreen_with_a_proxy_picks_its_favourite(space, tabular):
    plain = make("random", max_trials=10).search(space, tabular, None, Constraints(60_000_000))
    screened = make("random", max_trials=10, prescreen="flops", prescreen_factor=4).search(
        space, tabular, None, Constraints(60_000_000))
    mean = lambda r: sum(h.flops for h in r.history) / len(r.history)
    assert mean(screened) > mean(plain)  # the flops proxy prefers the biggest of four candidates
    with pytest.raises(ValueError, match="prescreen"):
        make("tpe", prescreen="synflow")


def test_multi_trial_with_training_scores_on_held_out_training_images(digits):
    from xsearch.evaluators import ClassificationEvaluator

    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4, width_mult=0.5)
    evaluator = ClassificationEvaluator(epochs=1, batch_size=64, val_samples=200, show_progress=False)
    train_idx, val_idx = evaluator.holdout(digits, seed=0)
    assert len(set(train_idx.tolist()) & set(val_idx.tolist())) == 0 and len(val_idx) == 200
    strategy = STRATEGIES.get("evolution")(max_trials=3, population_size=2, sample_size=1, show_progress=False)
    result = strategy.search(space, evaluator, digits, Constraints(None), None)
    assert len(result.history) == 3
    assert all(0.0 <= h.metrics["val_accuracy"] <= 1.0 and h.metrics["val_samples"] == 200 for h in result.history)
    assert "test_accuracy" not in result.metrics  # the search never looked at the test split


def test_cli_run_on_the_table_records_key_and_accuracy(tmp_path, macro_table, capsys):
    args = ["run", "space=nasbench_macro", "strategy=evolution", "evaluator=tabular", f"evaluator.table={macro_table}",
            "constraints.flops=40M", "search.max_trials=30", f"runs_root={tmp_path}", "run_dir=" + str(tmp_path / "r"),
            "progress=false"]
    assert main(args) == 0
    record = json.loads((tmp_path / "r" / "arch.json").read_text())
    table = json.loads(macro_table.read_text())
    key = record["metrics"]["benchmark_key"]
    assert record["metrics"]["test_accuracy"] == pytest.approx(table[key]["mean_acc"] / 100)
    assert record["flops"] == table[key]["flops"] <= 40_000_000
    assert (tmp_path / "r" / "trials.csv").is_file() and (tmp_path / "r" / "search.png").is_file()
    assert "benchmark table, key" in capsys.readouterr().out
    storage = f"sqlite:///{tmp_path / 'xsearch.db'}"
    trials = optuna.load_study(study_name="r", storage=storage).get_trials()
    assert len([t for t in trials if t.user_attrs["kind"] == "query"]) == 30


def test_cli_table_errors(tmp_path, capsys):
    assert main(["run", "space=nasbench_macro", "strategy=tpe", "evaluator=tabular", f"runs_root={tmp_path}"]) == 2
    assert "evaluator.table" in capsys.readouterr().err
    assert main(["run", "space=nasbench_macro", "strategy=tpe", "evaluator=tabular",
                 f"evaluator.table={tmp_path}/nope.json", f"runs_root={tmp_path}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_table_with_a_space_it_does_not_describe_is_refused_before_any_run(tmp_path, macro_table, capsys):
    table = f"evaluator.table={macro_table}"
    assert main(["run", "space=mbv3", "strategy=tpe", "evaluator=tabular", table, f"runs_root={tmp_path}"]) == 2
    assert "has no benchmark table" in capsys.readouterr().err
    # danas trains on images, so the space is sized for Fashion-MNIST's 1x28x28, not the table's network
    assert main(["run", "space=nasbench_macro", "strategy=danas", "evaluator=tabular", table, "data=digits",
                 f"runs_root={tmp_path}"]) == 2
    assert "is not the table's network" in capsys.readouterr().err
    assert not any(tmp_path.glob("*-nasbench_macro-*"))


def test_bench_strategies_reports_regret(tmp_path, macro_table, capsys):
    out = tmp_path / "strategies.json"
    assert main(["bench", "strategies", f"evaluator.table={macro_table}", "bench.table_seeds=2", "bench.budgets=[40M]",
                 "bench.queries=[5,20]", f"out={out}"]) == 0
    rows = json.loads(out.read_text())
    assert [r["strategy"] for r in rows] == MULTI
    for r in rows:
        assert r["regret@20"] <= r["regret@5"] and r["regret@20"] >= 0
        assert r["table_best"] == pytest.approx(91.51, abs=0.01)
    assert "| 40M |" in capsys.readouterr().out
