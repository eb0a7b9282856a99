"""Multi-fidelity trials: per-epoch reports of the classification evaluator, pruned queries (``search.pruner``)."""

from __future__ import annotations

import json

import optuna
import pytest

from xsearch.cli import main
from xsearch.core.errors import UserError
from xsearch.core.fidelity import EarlyStopping, Pruned
from xsearch.evaluators import ClassificationEvaluator, TabularEvaluator
from xsearch.records import RunRecorder
from xsearch.search_spaces import get_space
from xsearch.strategies import STRATEGIES, Constraints

BUDGET = Constraints(45_000_000)
EPOCHS = 4
TINY_TRAINING = {"epochs": 3, "batch_size": 64, "train_samples": 400, "val_samples": 200, "min_steps": 0,
                 "show_progress": False}


# --- the evaluator's per-epoch reports (real training on digits) ----------------------------
@pytest.fixture(scope="module")
def small_space():
    return get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4, width_mult=0.5)


def without_time(metrics):
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


def test_report_once_per_epoch_and_the_last_is_the_score(digits, small_space):
    evaluator = ClassificationEvaluator(**TINY_TRAINING)
    arch = small_space.sample(seed=3)
    reports = []
    reported = evaluator.score(small_space, arch, digits, seed=0, report=lambda e, v: reports.append((e, v)))
    assert [e for e, _ in reports] == [1, 2, 3]
    assert all(0.0 <= v <= 1.0 for _, v in reports)
    assert reports[-1][1] == reported["score"]
    assert len({v for _, v in reports}) > 1  # measured after each epoch, not the final score repeated
    plain = evaluator.score(small_space, arch, digits, seed=0)
    assert without_time(plain) == without_time(reported)  # the training is the one without report
    assert "pruned" not in reported and "epoch_scores" not in plain


def test_pruned_training_stops_and_returns_its_last_value(digits, small_space):
    evaluator = ClassificationEvaluator(**TINY_TRAINING)
    arch = small_space.sample(seed=3)
    reports = []

    def stop_after_two(epoch, value):
        reports.append(value)
        if epoch == 2:
            raise Pruned("stopped on purpose")

    metrics = evaluator.score(small_space, arch, digits, seed=0, report=stop_after_two)
    assert metrics["pruned"] is True and metrics["pruned_epoch"] == 2 == metrics["train_epochs"]
    assert metrics["score"] == reports[-1] and len(reports) == 2
    assert metrics["train_steps"] == 2 * evaluator.plan(400)["train_steps"] // 3
    full = []
    evaluator.score(small_space, arch, digits, seed=0, report=lambda e, v: full.append(v))
    assert full[:2] == reports  # the same training up to where it stopped


# --- pruned searches (a fake evaluator whose curves rise to the table's accuracy) ------------
@pytest.fixture(scope="module")
def space():
    return get_space("nasbench_macro")


class Curves:
    """Scores from the table; reports ``final * (0.5 + 0.5 e / EPOCHS)`` after epoch e, lets ``Pruned`` through.

    ``stops_itself``: the calls (counted from 1) at which it stops its own training after one epoch at 0.999.
    """

    name, reports_accuracy, needs_data, reports_epochs, epochs = "curves", True, False, True, EPOCHS

    def __init__(self, table, fail_at=None, stops_itself=()):
        self.table, self.fail_at, self.stops_itself = table, fail_at, set(stops_itself)
        self.calls, self.with_report = [], []

    def score(self, space, arch, data, seed=0, report=None):
        key = space.benchmark_key(arch)
        self.calls.append(key)
        self.with_report.append(report is not None)
        if self.fail_at is not None and len(self.calls) >= self.fail_at:
            raise UserError(f"evaluation {len(self.calls)} refused on purpose")
        if len(self.calls) in self.stops_itself or "all" in self.stops_itself:
            return {"score": 0.999, "pruned": True, "pruned_epoch": 1, "train_epochs": 1}
        final = self.table.score(space, arch, data, seed)["score"]
        for epoch in range(1, EPOCHS + 1):
            if report is not None:
                report(epoch, final * (0.5 + 0.5 * epoch / EPOCHS))
        return {"score": final, "train_epochs": EPOCHS}


@pytest.fixture(scope="module")
def tabular(synthetic_macro_table):
    return TabularEvaluator(str(synthetic_macro_table))


def search(name, evaluator, space, events=None, max_trials=16, **knobs):
    extra = {"evolution": {"population_size": 6, "sample_size": 3}, "tpe": {"n_startup_trials": 5},
             "nsga2": {"population_size": 6}}.get(name, {})
    strategy = STRATEGIES.get(name)(max_trials=max_trials, seed=5, show_progress=False, **extra, **knobs)
    return strategy.search(space, evaluator, None, BUDGET, events)


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband"])
def test_a_pruner_stops_bad_queries_and_the_result_trained_to_the_end(pruner, space, tabular):
    plain = Curves(tabular)
    reference = search("random", plain, space)
    assert not any(plain.with_report)  # pruner=none: the plain call, nothing per epoch
    assert "pruned_queries" not in reference.metrics and "epoch_scores" not in reference.history[0].metrics
    curves = Curves(tabular)
    result = search("random", curves, space, pruner=pruner)
    assert [h.arch for h in result.history] == [h.arch for h in reference.history]  # random: the same proposals
    pruned = [h for h in result.history if h.metrics.get("pruned")]
    assert pruned and result.metrics["pruned_queries"] == len(pruned)
    for h in pruned:
        curve = h.metrics["epoch_scores"]
        assert h.score == curve[-1][1] and h.metrics["pruned_epoch"] == len(curve) < EPOCHS
    finished = [h for h in result.history if not h.metrics.get("pruned")]
    assert not result.metrics.get("pruned") and result.arch == max(finished, key=lambda h: h.score).arch
    assert result.metrics["epochs_trained"] == sum(h.metrics["train_epochs"] for h in result.history) < 16 * EPOCHS
    assert reference.metrics["epochs_trained"] == 16 * EPOCHS


@pytest.mark.parametrize("name", ["evolution", "tpe", "nsga2"])
def test_every_multi_trial_strategy_prunes(name, space, tabular, monkeypatch):
    studies = []
    create = optuna.create_study

    def keep(*args, **kwargs):
        studies.append(create(*args, **kwargs))
        return studies[-1]

    monkeypatch.setattr(optuna, "create_study", keep)
    result = search(name, Curves(tabular), space, max_trials=14, pruner="successive_halving")
    pruned = [h for h in result.history if h.metrics.get("pruned")]
    assert pruned and not result.metrics.get("pruned") and result.metrics["pruned_queries"] == len(pruned)
    if name == "tpe":  # the sampler's own study: pruned queries told PRUNED, with their per-epoch values
        sampler = next(s for s in studies if s.study_name != "xsearch-pruning")
        told = [t for t in sampler.trials if t.state == optuna.trial.TrialState.PRUNED]
        assert len(told) >= len(pruned) and all(t.intermediate_values for t in told)


def test_a_pruned_query_is_never_the_result(space, tabular):
    # the evaluator stops some trainings itself, each at a value above every finished query's
    result = search("evolution", Curves(tabular, stops_itself={1, 3, 6}), space, max_trials=10, pruner="median")
    stopped = [h for h in result.history if h.metrics.get("pruned")]
    assert [h.query for h in stopped if h.score == 0.999] == [1, 3, 6]  # (the median pruner may stop others too)
    assert result.metrics["score"] < 0.999 and result.arch not in [h.arch for h in stopped]
    assert all(h.best_score < 0.999 for h in result.history)  # nor the best so far
    with pytest.raises(UserError, match="every one of the 3 queries was pruned"):
        search("random", Curves(tabular, stops_itself={"all"}), space, max_trials=3, pruner="median")


def test_pruner_needs_an_evaluator_that_reports_epochs(space, tabular):
    with pytest.raises(UserError, match="evaluator=tabular reports none"):
        search("random", tabular, space, max_trials=3, pruner="median")
    with pytest.raises(UserError, match="not a pruner.*none, median, successive_halving, hyperband"):
        STRATEGIES.get("random")(max_trials=3, pruner="bogus")


# --- the run's study and resume --------------------------------------------------------
def recorder(folder, space, study):
    folder.mkdir(parents=True, exist_ok=True)
    return RunRecorder(folder, space, study)


def test_pruned_queries_are_pruned_trials_and_a_resume_replays_them(space, tabular, tmp_path):
    reference = search("random", Curves(tabular), space, pruner="successive_halving")
    study = optuna.create_study(directions=["maximize", "minimize"])
    first = Curves(tabular, fail_at=10)
    with pytest.raises(UserError, match="refused on purpose"):
        search("random", first, space, recorder(tmp_path / "run", space, study), pruner="successive_halving")
    saved = json.loads((tmp_path / "run" / "search_trials.json").read_text())["queries"]
    assert len(saved) == 9 and any(q["metrics"].get("pruned") for q in saved)  # the replay file keeps pruned
    again = Curves(tabular)
    resumed = search("random", again, space, recorder(tmp_path / "run", space, study), pruner="successive_halving")
    assert len(again.calls) == 16 - 9  # nothing trained twice
    # the pruner was given the replayed queries: its later decisions are the uninterrupted search's
    outcome = [(h.arch, h.score, h.metrics.get("pruned_epoch")) for h in resumed.history]
    assert outcome == [(h.arch, h.score, h.metrics.get("pruned_epoch")) for h in reference.history]
    assert resumed.arch == reference.arch
    trials = study.get_trials()
    assert len(trials) == 16 == len({t.user_attrs["record_id"] for t in trials})
    for h, t in zip(resumed.history, sorted(trials, key=lambda t: t.user_attrs["query"])):
        curve = {e: v for e, v in h.metrics["epoch_scores"]}
        assert t.intermediate_values == curve
        if h.metrics.get("pruned"):
            assert t.state == optuna.trial.TrialState.PRUNED and t.values is None
            assert t.user_attrs["pruned_epoch"] == h.metrics["pruned_epoch"] and t.user_attrs["score"] == h.score
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE and t.values[0] == h.score


def test_early_stopping_never_prunes_the_last_epoch():
    stopping = EarlyStopping("successive_halving", max_epochs=2, reduction_factor=2)
    outcomes = []
    for value in (0.9, 0.1, 0.05, 0.01):  # each worse than the last: successive halving would stop them at epoch 1

        def train(item, report, value=value):
            for epoch in (1, 2):
                report(epoch, value)
            return {"score": value, "epoch_scores": [[1, value], [2, value]]}

        try:
            stopping.run(train, None)
            outcomes.append("done")
        except Pruned:
            outcomes.append("pruned")
    assert outcomes == ["done", "pruned", "pruned", "pruned"]
    states = [t.state.name for t in stopping.study().trials]
    assert states == ["COMPLETE", "PRUNED", "PRUNED", "PRUNED"]


# --- xsearch run ------------------------------------------------------------------------
TINY_RUN = ["run", "space=mbv3", "data=digits", "evaluator=classification", "strategy=random", "space.num_layers=4",
            "space.width_mult=0.5", "train.epochs=2", "train.train_samples=300", "train.val_samples=200",
            "train.test_samples=200", "train.epoch_images=null", "train.min_steps=0", "train.batch_size=64",
            "progress=false"]


def test_cli_run_records_pruned_trials(tmp_path, capsys):
    args = [*TINY_RUN, "search.max_trials=6", "search.pruner=successive_halving", "search.pruner_reduction_factor=2",
            f"runs_root={tmp_path}", f"run_dir={tmp_path / 'run'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    search_metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["search"]
    pruned = search_metrics["pruned_queries"]
    assert pruned >= 1 and f"{pruned} pruned by successive_halving" in out
    assert search_metrics["epochs_trained"] == 2 * 6 - pruned  # stopped after its first epoch of two
    study = optuna.load_study(study_name="run", storage=f"sqlite:///{tmp_path / 'xsearch.db'}")
    queries = [t for t in study.get_trials() if t.user_attrs.get("kind") == "query"]
    states = [t.state for t in queries]
    assert states.count(optuna.trial.TrialState.PRUNED) == pruned and len(queries) == 6
    assert all(len(t.intermediate_values) == (1 if t.state.name == "PRUNED" else 2) for t in queries)
    found = json.loads((tmp_path / "run" / "arch.json").read_text())["arch"]
    best = max((t for t in queries if t.state.name == "COMPLETE"), key=lambda t: t.values[0])
    assert found == best.params  # the result is the best query that trained to the end


def test_cli_refuses_a_bad_pruner(tmp_path, capsys):
    assert main([*TINY_RUN, "search.pruner=bogus", f"runs_root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "search.pruner='bogus'" in err and "none, median, successive_halving, hyperband" in err
    assert main([*TINY_RUN, "search.pruner=median", "launcher=ray", f"runs_root={tmp_path}"]) == 2
    assert "does not run under launcher=ray" in capsys.readouterr().err
    assert main([*TINY_RUN, "search.pruner_min_epochs=0", f"runs_root={tmp_path}"]) == 2
    assert not list(tmp_path.glob("*-mbv3-random"))  # refused before any run folder


# --- xsearch bench fidelity ---------------------------------------------------------------
BENCH = ["data=digits", "search.max_trials=6", "train.epochs=2", "train.train_samples=300", "train.val_samples=100",
         "train.test_samples=200", "train.min_steps=0", "search.pruner_reduction_factor=2", "bench.seeds=1"]


def test_bench_fidelity_rows_table_and_resume(tmp_path, capsys):
    out = tmp_path / "fidelity.json"
    assert main(["bench", "fidelity", *BENCH, f"runs_root={tmp_path}", f"out={out}"]) == 0
    rows = json.loads(out.read_text())
    assert [(r["arm"], r["seed"]) for r in rows] == [("none", 0), ("successive_halving", 0)]
    none, pruned = rows
    assert none["epochs_trained"] == none["full_epochs"] == 12 and none["pruned_queries"] == 0
    assert pruned["epochs_trained"] == 12 - pruned["pruned_queries"] < 12  # each stopped after epoch 1 of 2
    assert all(0.0 < r["test_accuracy"] <= 1.0 for r in rows)
    assert "Paired by seed (1)" in capsys.readouterr().out
    assert main(["bench", "fidelity", *BENCH, f"runs_root={tmp_path}", f"out={out}"]) == 0  # nothing left to run
    assert "2 of 2 rows already in out=, 0 to run" in capsys.readouterr().out
    assert json.loads(out.read_text()) == rows
    assert main(["bench", "fidelity", *BENCH, "search.max_trials=5", f"out={out}"]) == 2  # other settings
    assert main(["bench", "fidelity", "search.pruner=median", f"out={tmp_path / 'x.json'}"]) == 2


def test_bench_fidelity_pairs_by_seed():
    from xsearch.bench.fidelity import paired

    def row(arm, seed, epochs, acc):
        return {"arm": arm, "seed": seed, "epochs_trained": epochs, "test_accuracy": acc}

    rows = [row("none", 0, 120, 0.80), row("none", 1, 120, 0.78), row("none", 2, 120, 0.82),
            row("hyperband", 0, 48, 0.79), row("hyperband", 1, 36, 0.79), row("hyperband", 2, 42, 0.81)]
    pair = paired(rows)
    assert pair["epochs_ratio"] == pytest.approx(126 / 360) and pair["seeds"] == [0, 1, 2]
    assert pair["accuracy_difference"] == pytest.approx(-0.01 / 3) and pair["seed_spread"] == pytest.approx(0.02)
    assert pair["standard_error"] == pytest.approx(0.0115470 / 3 ** 0.5, rel=1e-4) and pair["target_met"]
    rows[3] = row("hyperband", 0, 60, 0.70)  # more epochs and a worse network: both halves of the target missed
    assert not paired(rows)["target_met"]
