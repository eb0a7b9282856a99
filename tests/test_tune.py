"""Tuning the training recipe: train.augment, recipe files (recipe=FILE), xsearch tune, search.tune_recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from xsearch.cli import main
from xsearch.core.recipe import RecipeRanges, from_params

# digits, a 4-layer half-width mbv3 network, trainings of a few hundred images: each trial about a second
TINY_TRAIN = ["budget=smoke", "progress=false", "train.epochs=2", "train.train_samples=300", "train.val_samples=100",
              "train.epoch_images=300", "train.test_samples=200"]


@pytest.fixture
def arch_json(tmp_path) -> Path:
    from xsearch.records import save_arch
    from xsearch.search_spaces import get_space

    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4, width_mult=0.5)
    path = tmp_path / "found" / "arch.json"
    path.parent.mkdir()
    save_arch(path, space, space.sample(seed=0), data="digits")
    return path


def tune_args(arch_json: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["tune", str(arch_json), *TINY_TRAIN, f"runs_root={tmp_path / 'runs'}", *extra]


def tune_dir(tmp_path: Path) -> Path:
    return next((tmp_path / "runs").glob("*-mbv3-tune"))


def load_study(tmp_path: Path, run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=f"tune/mbv3/digits/{run_dir.name}",
                             storage=f"sqlite:///{(tmp_path / 'runs' / 'xsearch.db').resolve()}")


# --- train.augment ------------------------------------------------------------------------
def _todays_augmentation(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The augmentation as it was before train.augment existed (core.data.augment_batch, verbatim)."""
    b, _, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, :]
        x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


@pytest.mark.parametrize("flip", [True, False])
def test_augment_1_gives_todays_batches_and_0_none(digits, flip):
    import dataclasses

    data = dataclasses.replace(digits, flip=flip, crop_padding=2)
    indices = torch.arange(300)

    def batches(augment):
        g = torch.Generator().manual_seed(5)
        return [x for x, _ in data.batches("train", indices, 64, shuffle=True, augment=augment, generator=g)]

    g = torch.Generator().manual_seed(5)
    order = indices[torch.randperm(len(indices), generator=g)]
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    today = [(_todays_augmentation(data.train.batch(order[i:i + 64])[0], 2, flip, g) - mean) / std
             for i in range(0, len(order), 64)]
    for augment in (True, 1.0):
        assert all(torch.equal(a, b) for a, b in zip(batches(augment), today, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(batches(0.0), batches(False), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(batches(0.0), today, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(batches(2.0), today, strict=True))


def test_augment_strength_scales_the_padding_and_the_flip():
    from xsearch.core.data import augment_strength

    assert augment_strength(2, True, 1.0) == (2, 0.5)
    assert augment_strength(2, True, 0.0) == (0, 0.0)
    assert augment_strength(2, True, 0.5) == (1, 0.25)
    assert augment_strength(2, True, 2.0) == (4, 0.5)
    assert augment_strength(2, False, 1.0) == (2, 0.0)


def test_the_evaluator_trains_with_its_augmentation_strength(digits, monkeypatch):
    from xsearch.core.data import ImageData
    from xsearch.evaluators import ClassificationEvaluator
    from xsearch.search_spaces import get_space

    seen = []
    original = ImageData.batches

    def spy(self, split, indices=None, batch_size=128, shuffle=False, augment=False, **kw):
        seen.append(augment)
        return original(self, split, indices, batch_size, shuffle, augment, **kw)

    monkeypatch.setattr(ImageData, "batches", spy)
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4, width_mult=0.25)
    for augment in (1.0, 0.0, 0.5):
        seen.clear()
        ClassificationEvaluator(epochs=1, train_samples=100, val_samples=50, min_steps=1, recalibration_batches=1,
                                augment=augment, show_progress=False).score(space, space.sample(seed=0), digits)
        assert seen[0] == augment  # the training batches; then the unaugmented recalibration batches
        assert not any(seen[1:])


# --- recipe files -------------------------------------------------------------------------
def test_tune_writes_a_recipe_that_train_uses_and_the_command_line_wins(arch_json, tmp_path, capsys, monkeypatch):
    from xsearch.evaluators import ClassificationEvaluator

    assert main(tune_args(arch_json, tmp_path, "search.max_trials=2", "search.n_startup_trials=1")) == 0
    out = capsys.readouterr().out
    run_dir = tune_dir(tmp_path)
    recipe_file = run_dir / "recipe.yaml"
    doc = yaml.safe_load(recipe_file.read_text())
    recipe, about = doc["train"], doc["about"]
    study = load_study(tmp_path, run_dir)
    best = max((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    assert recipe == from_params(best.params) and about["held_out_score"] == pytest.approx(best.value)
    assert about["arch"] == str(arch_json) and about["study"] == study.study_name
    assert f"recipe={recipe_file}" in out and "held-out accuracy" in out and "default recipe" in out
    for name in ("config.yaml", "arch.json", "trials.csv", "tune.png", "metrics.json", "DONE"):
        assert (run_dir / name).is_file(), name

    used = {}
    original = ClassificationEvaluator.evaluate

    def spy(self, *args, **kwargs):
        used.update({k: getattr(self, k) for k in recipe}, epochs=self.epochs, batch_size=self.batch_size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ClassificationEvaluator, "evaluate", spy)
    train = ["train", str(arch_json), f"recipe={recipe_file}", *TINY_TRAIN[:2], "train.epochs=1",
             "train.train_samples=200", "train.epoch_images=200", f"runs_root={tmp_path / 'train'}"]
    assert main(train) == 0
    assert {k: used[k] for k in recipe} == recipe and used["epochs"] == 1
    other = 64 if recipe["batch_size"] != 64 else 128
    assert main([*train, f"train.batch_size={other}"]) == 0  # the command line wins over the recipe
    assert used["batch_size"] == other and all(used[k] == v for k, v in recipe.items() if k != "batch_size")


def test_a_recipe_sits_between_the_command_line_and_the_budget(tmp_path):
    from xsearch.config import compose, validate, write_recipe

    path = write_recipe(tmp_path / "r.yaml", {"epochs": 7, "lr": 0.05, "optimizer": "adamw"}, arch="x")
    cfg = validate(compose([f"recipe={path}", "budget=smoke", "train.lr=0.3"]))
    assert cfg["train"]["epochs"] == 7  # over the smoke budget's 2
    assert cfg["train"]["lr"] == 0.3 and cfg["train"]["optimizer"] == "adamw"
    assert validate(compose(["budget=smoke"]))["train"]["epochs"] == 2
    flat = tmp_path / "flat.yaml"
    flat.write_text("train.label_smoothing: 0.2\n")
    assert validate(compose([f"recipe={flat}"]))["train"]["label_smoothing"] == 0.2


BAD_RECIPES = [
    (None, "no such file"),
    ("train: [1,\n", "is not readable YAML"),
    ("- lr\n", "not a mapping of train.* settings"),
    ("train:\n  learning_rate: 0.1\n", "unknown configuration key 'train.learning_rate'"),
    ("search:\n  epochs: 3\n", "'search' is not part of a recipe"),
    ("train:\n  lr: fast\n", "could not be converted to Float"),
    ("train:\n  lr: [0.1, 0.2]\n", "not one value"),
    ("train:\n  label_smoothing: 1.5\n", "must be below 1"),
    ("train:\n  augment: 9\n", "train.augment must be between 0"),
    ("train:\n  optimizer: lion\n", "optimizer must be one of"),
    ("about: {arch: x}\n", "holds no train.* settings"),
]


@pytest.mark.parametrize("text,message", BAD_RECIPES, ids=[m for _, m in BAD_RECIPES])
def test_a_bad_recipe_exits_2_before_any_work(text, message, arch_json, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    if text is not None:
        path.write_text(text)
    for command in (["train", str(arch_json)], ["run", "data=digits"]):
        assert main([*command, f"recipe={path}", f"runs_root={tmp_path / 'runs'}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("xsearch: error: ") and message in err and f"recipe={path}" in err, err
        assert "Traceback" not in err
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- xsearch tune -------------------------------------------------------------------------
class FakeTrainer:
    """A stand-in for the classification evaluator whose held-out score is a known function of the recipe.

    Each epoch's value grows to the final one; ``report`` may stop the training (as the real evaluator does,
    it then returns its metrics with ``pruned``). ``interrupt_at``: the training that raises KeyboardInterrupt.
    """

    name, trains, reports_epochs = "classification", True, True

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.epochs, self.batch_size, self.lr, self.weight_decay, self.label_smoothing = 4, 128, 0.2, 5e-5, 0.1
        self.optimizer, self.adamw_lr, self.adamw_weight_decay, self.augment = "auto", 2e-3, 0.05, 1.0
        self.calls, self.interrupt_at = [], interrupt_at

    def check_data(self, data):
        pass

    def check(self, space):
        pass

    def quality(self) -> float:
        rate = self.lr / 0.1 if self.optimizer == "sgd" else self.adamw_lr / 0.002
        return 0.9 - 0.2 * abs(math.log10(rate)) - 0.3 * self.label_smoothing - 0.05 * abs(self.augment - 1)

    def score(self, space, arch, data, seed=0, report=None):
        self.calls.append(self)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        value = 0.0
        for epoch in range(1, self.epochs + 1):
            value = self.quality() * epoch / self.epochs
            if report is not None:
                try:
                    report(epoch, value)
                except optuna.TrialPruned:
                    return {"score": value, "pruned": True, "train_epochs": epoch}
        return {"score": value, "val_accuracy": value, "train_epochs": self.epochs}


@pytest.fixture
def fake(monkeypatch):
    holder = {"trainer": FakeTrainer()}
    monkeypatch.setattr("xsearch.tune.build_evaluator", lambda cfg: holder["trainer"])
    return holder


def test_the_study_holds_max_trials_with_the_default_recipe_as_trial_0(arch_json, tmp_path, fake, capsys):
    assert main(tune_args(arch_json, tmp_path, "search.max_trials=12", "search.n_startup_trials=4",
                          "search.pruner=median", "seed=3")) == 0
    run_dir = tune_dir(tmp_path)
    study = load_study(tmp_path, run_dir)
    trials = study.trials
    assert len(trials) == 12 and study.metric_names == ["held-out accuracy"]
    assert from_params(trials[0].params) == {"optimizer": "sgd", "lr": 0.2, "weight_decay": 5e-5,
                                             "label_smoothing": 0.1, "batch_size": 128, "augment": 1.0}
    assert trials[0].user_attrs["default"] and not any(t.user_attrs.get("default") for t in trials[1:])
    states = [t.state for t in trials]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert set(states) == {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(t.last_step < 4 for t in pruned)  # stopped early, never after the last epoch
    assert all(len(t.intermediate_values) == 4 for t in trials if t.state == optuna.trial.TrialState.COMPLETE)
    # each trial trained with the recipe its parameters say, and pruned ones are never the answer
    for t, trainer in zip(trials, fake["trainer"].calls, strict=True):
        assert all(getattr(trainer, k) == v for k, v in from_params(t.params).items())
    best = max((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"] == from_params(best.params)
    rows = (run_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].startswith("trial,state,held-out accuracy")
    ranges = RecipeRanges()
    for t in trials[1:]:
        recipe = from_params(t.params)
        assert not ranges.outside(recipe) and set(recipe) == {"optimizer", "label_smoothing", "batch_size", "augment",
                                                              *(("lr", "weight_decay") if recipe["optimizer"] == "sgd"
                                                                else ("adamw_lr", "adamw_weight_decay"))}


def test_an_interrupted_tune_resumes_its_study(arch_json, tmp_path, fake, capsys):
    fake["trainer"] = FakeTrainer(interrupt_at=3)
    assert main(tune_args(arch_json, tmp_path, "search.max_trials=5", "search.n_startup_trials=2")) == 130
    run_dir = tune_dir(tmp_path)
    assert f"xsearch tune resume={run_dir}" in capsys.readouterr().err
    assert not (run_dir / "DONE").exists() and len((run_dir / "trials.csv").read_text().splitlines()) == 3
    fake["trainer"] = FakeTrainer()
    assert main(["tune", f"resume={run_dir}"]) == 0
    trials = load_study(tmp_path, run_dir).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert [bool(t.user_attrs.get("default")) for t in trials] == [True] + [False] * 5
    assert len(fake["trainer"].calls) == 3 and (run_dir / "DONE").exists()
    assert main(["tune", f"resume={run_dir}"]) == 0  # a finished tune: nothing left to train
    assert len(fake["trainer"].calls) == 3 and len(load_study(tmp_path, run_dir).trials) == 6


@pytest.mark.skipif(not getattr(__import__("xsearch.evaluators", fromlist=["x"]).ClassificationEvaluator,
                            "reports_epochs", False), reason="the per-epoch report hook is not there")
def test_the_real_evaluator_reports_epochs_and_pruned_trials_stop_early(arch_json, tmp_path, capsys):
    assert main(tune_args(arch_json, tmp_path, "search.max_trials=4", "search.n_startup_trials=2",
                          "search.pruner=successive_halving", "train.epochs=3")) == 0
    trials = load_study(tmp_path, tune_dir(tmp_path)).trials
    assert len(trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, (t.last_step or 0) + 1))
        assert (t.last_step == 3) == (t.state.name == "COMPLETE")
        if t.state.name == "COMPLETE":
            assert t.value == pytest.approx(t.intermediate_values[3])


BAD_TUNES = [
    (["strategy=evolution"], "searches the recipe with TPE"),
    (["search.epochs=3"], "means nothing to it"),
    (["search.pruner=sometimes"], "valid: none, median"),
    (["search.max_trials=0"], "must be at least 1"),
    (["tune.lr=[0,1]"], "log scale"),
    (["tune.batch_size=[]"], "distinct batch sizes"),
    (["tune.optimizer=[lion]"], "tune.optimizer"),
    (["train.lr=5"], "lies outside tune.lr"),
    (["train.batch_size=100"], "is not among tune.batch_size"),
    (["evaluator=proxy"], "no training recipe to tune"),
    (["train.augment=-1"], "train.augment must be between 0 (no augmentation) and 4"),
    (["search.pruner_reduction_factor=1"], "search.pruner_reduction_factor"),
]


@pytest.mark.parametrize("args,message", BAD_TUNES, ids=[m for _, m in BAD_TUNES])
def test_bad_tune_settings_exit_2_before_any_work(args, message, arch_json, tmp_path, capsys):
    assert main(["tune", str(arch_json), *args, f"runs_root={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xsearch: error: ") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_tune_usage_and_resume_errors(tmp_path, capsys):
    assert main(["tune"]) == 2
    assert main(["tune", f"resume={tmp_path}"]) == 2
    assert main(["tune", f"resume={tmp_path}", "seed=1"]) == 2
    err = capsys.readouterr().err
    assert "usage: xsearch tune ARCH_JSON" in err and "drop ['seed=1']" in err
    assert main([]) == 2 and "tune ARCH_JSON" in capsys.readouterr().out


def test_recipe_ranges_draw_mutate_and_record_within_their_bounds():
    import random

    ranges = RecipeRanges(optimizer=["sgd", "adamw"], augment=[0.5, 0.5])
    rng = random.Random(0)
    for _ in range(50):
        recipe = ranges.sample(rng)
        assert not ranges.outside(recipe) and recipe["augment"] == 0.5
        child = ranges.mutate(recipe, rng)
        changed = {k for k in {*child, *recipe} if child.get(k) != recipe.get(k)}
        assert not ranges.outside(child)
        assert len(changed) <= 1 or changed == {"optimizer", "lr", "weight_decay", "adamw_lr", "adamw_weight_decay"}
        dists = ranges.distributions(recipe)
        assert all(dists[f"train.{k}"]._contains(dists[f"train.{k}"].to_internal_repr(v)) for k, v in recipe.items())
    with pytest.raises(ValueError, match="tune.label_smoothing"):
        RecipeRanges(label_smoothing=[0.0, 1.0])


# --- search.tune_recipe ---------------------------------------------------------------------
SEARCH = ["data=digits", "budget=smoke", "progress=false", "space.num_layers=4", "space.width_mult=0.5",
          "train.epochs=1", "train.train_samples=300", "train.val_samples=100", "train.epoch_images=300",
          "train.test_samples=200", "search.max_trials=3", "search.tune_recipe=true"]


@pytest.mark.parametrize("strategy", ["tpe", "random", "evolution", "nsga2"])
def test_tune_recipe_adds_the_recipe_to_the_queries_and_retrains_with_the_best(strategy, tmp_path, monkeypatch,
                                                                               capsys):
    from xsearch.evaluators import ClassificationEvaluator

    retrained = {}
    original = ClassificationEvaluator.evaluate

    def spy(self, *args, **kwargs):
        retrained.update(vars(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ClassificationEvaluator, "evaluate", spy)
    extra = {"evolution": ["search.population_size=2", "search.sample_size=2"],
             "nsga2": ["search.population_size=2"]}.get(strategy, [])
    run_dir = tmp_path / "r"
    assert main(["run", f"strategy={strategy}", *SEARCH, *extra, f"runs_root={tmp_path}", f"run_dir={run_dir}"]) == 0
    search = json.loads((run_dir / "search.json").read_text())
    queries = [h for h in search["history"] if h["kind"] == "query"]
    assert len(queries) == 3 and all(not RecipeRanges().outside(q["recipe"]) for q in queries)
    assert len({json.dumps(q["recipe"], sort_keys=True) for q in queries}) == 3  # each query drew its own
    best = max(queries, key=lambda q: q["score"])
    assert search["metrics"]["recipe"] == best["recipe"]
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"] == best["recipe"]
    assert {k: retrained[k] for k in best["recipe"]} == best["recipe"]  # the final retraining used it
    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{tmp_path / 'xsearch.db'}")
    for trial, query in zip(study.trials, queries, strict=True):
        assert from_params(trial.params) == query["recipe"] and trial.params["layer1"] == query["arch"]["layer1"]
    header = (run_dir / "trials.csv").read_text().splitlines()[0]
    assert "train.optimizer" in header and "train.augment" in header
    assert "recipe=" in capsys.readouterr().out  # the retrain-again command names the recipe


def test_without_tune_recipe_the_records_are_as_before(tmp_path):
    run_dir = tmp_path / "r"
    args = [a for a in SEARCH if a != "search.tune_recipe=true"]
    assert main(["run", "strategy=random", *args, f"runs_root={tmp_path}", f"run_dir={run_dir}"]) == 0
    search = json.loads((run_dir / "search.json").read_text())
    assert all("recipe" not in h for h in search["history"]) and "recipe" not in search["metrics"]
    assert not (run_dir / "recipe.yaml").exists()
    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{tmp_path / 'xsearch.db'}")
    assert all(not from_params(t.params) for t in study.trials)


@pytest.mark.parametrize("strategy", ["random", "evolution", "tpe"])
def test_a_resumed_tune_recipe_search_replays_its_queries(strategy, tmp_path):
    from xsearch.records import RunRecorder
    from xsearch.search_spaces import get_space
    from xsearch.strategies import STRATEGIES, Constraints

    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4, width_mult=0.5)
    extra = {"population_size": 2, "sample_size": 2} if strategy == "evolution" else {}

    def search(trainer):
        found = STRATEGIES.get(strategy)(max_trials=4, tune_recipe=True, show_progress=False, **extra)
        return found.search(space, trainer, None, Constraints(), RunRecorder(tmp_path, space))

    first, again = FakeTrainer(), FakeTrainer()
    result = search(first)
    assert len(first.calls) == 4
    replayed = search(again)
    assert not again.calls  # every query answered from the replay file, recipes included
    assert replayed.arch == result.arch and replayed.metrics["recipe"] == result.metrics["recipe"]
    assert [q.recipe for q in replayed.history] == [q.recipe for q in result.history]


def test_tune_recipe_needs_a_training_evaluator(tmp_path, capsys):
    assert main(["run", "strategy=random", "search.max_trials=2", "search.tune_recipe=true", "evaluator=proxy",
                 "data=digits", f"runs_root={tmp_path}"]) == 2
    assert "no training recipe to tune" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()) or not list(tmp_path.glob("*-random"))


# --- xsearch bench recipe -------------------------------------------------------------------
def test_bench_recipe_compares_the_tuned_and_default_recipes_and_resumes(tmp_path, capsys, monkeypatch):
    from xsearch.bench import BENCHMARKS
    from xsearch.evaluators import ClassificationEvaluator

    out = tmp_path / "recipe.json"
    args = ["data=digits", "budget=smoke", "progress=false", "search.max_trials=3", "search.n_startup_trials=1",
            "train.epochs=1", "train.train_samples=300", "train.epoch_images=300", "train.val_samples=100",
            "train.test_samples=200", "bench.seeds=2", f"runs_root={tmp_path / 'runs'}", f"out={out}"]
    summary = BENCHMARKS["recipe"](args)
    rows = json.loads(out.read_text())
    tune = rows[0]
    assert [r["kind"] for r in rows] == ["tune", "retrain", "retrain", "retrain", "retrain", "summary"]
    assert tune["trials"] == 3 and tune["default_recipe"]["lr"] == 0.2 and not RecipeRanges().outside(tune["recipe"])
    retrains = {(r["recipe_name"], r["seed"]): r for r in rows if r["kind"] == "retrain"}
    assert retrains[("tuned", 0)]["recipe"] == tune["recipe"] and retrains[("default", 1)]["recipe"] == tune[
        "default_recipe"]
    diffs = [retrains[("tuned", s)]["test_accuracy"] - retrains[("default", s)]["test_accuracy"] for s in (0, 1)]
    assert summary["paired_difference"] == pytest.approx(sum(diffs) / 2)
    assert summary["paired_difference_se"] == pytest.approx(abs(diffs[0] - diffs[1]) / 2)
    assert "paired difference (tuned - default)" in capsys.readouterr().out
    trained = []
    monkeypatch.setattr(ClassificationEvaluator, "evaluate", lambda *a, **k: trained.append(1))
    monkeypatch.setattr(ClassificationEvaluator, "score", lambda *a, **k: trained.append(1))
    assert BENCHMARKS["recipe"](args) == summary and not trained  # everything from the rows: nothing trains
