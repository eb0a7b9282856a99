from __future__ import annotations

import itertools
import random

import pytest
import torch

from xsearch.core.data import split_for_search
from xsearch.core.errors import UserError
from xsearch.records import RunRecorder
from xsearch.search_spaces import get_space
from xsearch.strategies import (
    STRATEGIES,
    Constraints,
    ProgressiveDataAdaptedPruning,
    StageRecord,
    best_under_budget,
    prune,
)
from xsearch.supernets import Supernet


@pytest.fixture(scope="module")
def small_space():
    return get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4, width_mult=0.5)


def brute_force(space, scores, budget):
    best, best_arch = float("-inf"), None
    for picks in itertools.product(*(list(scores[c.label]) for c in space.choices)):
        arch = dict(zip(space.labels, picks))
        if space.flops(arch) <= budget:
            s = sum(scores[k][v] for k, v in arch.items())
            if s > best:
                best, best_arch = s, arch
    return best, best_arch


def test_derivation_is_the_exact_knapsack_optimum(small_space):
    space = small_space
    rng = random.Random(0)
    for trial in range(6):
        scores = {c.label: {o: rng.gauss(0, 1) for o in rng.sample(c.options, 6)} for c in space.choices}
        budget = rng.randint(space.min_flops(), space.max_flops())
        expected, _ = brute_force(space, scores, budget)
        if expected == float("-inf"):
            continue
        arch = best_under_budget(space, scores, budget)
        assert space.flops(arch) <= budget
        assert sum(scores[k][v] for k, v in arch.items()) == pytest.approx(expected)


def test_stages_grow_classes_and_split_epochs():
    s = ProgressiveDataAdaptedPruning(epochs=7, class_fractions=(0.3, 0.6, 1.0), keep_fraction=0.6)
    stages = s.stages(10)
    assert [st.num_classes for st in stages] == [3, 6, 10]
    assert [st.epochs for st in stages] == [2, 2, 3]
    assert [st.keep_fraction for st in stages] == [0.6, 0.6, None]
    with pytest.raises(ValueError, match="end at 1.0"):
        ProgressiveDataAdaptedPruning(class_fractions=(0.5, 0.3))


def test_pruning_keeps_the_most_probable_sixty_percent():
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4)
    net = Supernet(space)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in net.layers:
            layer.alpha.copy_(torch.randn_like(layer.alpha))
    before = net.probabilities()
    pruned = prune(net, space, 0.6, None)
    for layer in net.layers:
        n = len(before[layer.label])
        kept = net.alive_options()[layer.label]
        assert len(kept) == -(-6 * n // 10)  # ceil(0.6 n): 13 -> 8, 12 -> 8
        assert min(before[layer.label][o] for o in kept) >= max(before[layer.label][o] for o in pruned[layer.label])


def test_pruning_never_makes_the_budget_unreachable():
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4)
    net = Supernet(space)
    with torch.no_grad():  # make the most expensive candidates the most probable
        for layer in net.layers:
            layer.alpha.copy_(layer.flops / layer.flops.max() * 5)
    budget = space.min_flops() + 1000
    prune(net, space, 0.3, budget)
    alive = net.alive_options()
    cheapest = space.fixed_flops + sum(min(space.flops_table[k][o] for o in v) for k, v in alive.items())
    assert cheapest <= budget


def _search(name, digits, budget, tmp_path=None, **kw):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=5)
    if name in ("danas", "dnas"):  # a short accuracy derivation on few held-out images
        kw = {"derive_trials": 4, "val_samples": 200, **kw}
    kw = {"epochs": 3, "warmup_epochs": 1, "train_samples": 600, "batch_size": 50, **kw}
    strategy = STRATEGIES.get(name)(show_progress=False, **kw)
    if tmp_path is None:
        return space, strategy.search(space, None, digits, Constraints(budget), None)
    return space, strategy.search(space, None, digits, Constraints(budget), RunRecorder(tmp_path, space),
                                  tmp_path / "ckpt.pt")


def test_danas_records_every_stage_and_respects_the_budget(digits):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=5)
    budget = (space.min_flops() + space.max_flops()) // 3
    _, result = _search("danas", digits, budget)
    assert result.flops <= budget and space.flops(result.arch) == result.flops
    stages = [h for h in result.history if isinstance(h, StageRecord)]
    assert [h.num_classes for h in stages] == [3, 6, 10]
    alive = [sum(h.alive_per_layer.values()) for h in stages]
    assert alive[0] == sum(len(c.options) for c in space.choices) and alive[0] > alive[1] > alive[2]
    for h in stages:
        assert h.derived_flops <= budget and h.seconds > 0 and 0 <= h.val_accuracy <= 1
    # easy-first: the order is the ranking, from most to least accurate held-out class
    accs = [r["heldout_accuracy"] for r in result.metrics["class_ranking"]]
    assert accs == sorted(accs, reverse=True)
    assert stages[0].classes == [r["class"] for r in result.metrics["class_ranking"][:3]]


def test_dnas_uses_all_classes_and_candidates(digits):
    space, result = _search("dnas", digits, None, derive="probability")
    assert len(result.history) == 1 and result.history[0].num_classes == 10
    assert sum(result.history[0].alive_per_layer.values()) == sum(len(c.options) for c in space.choices)


def test_search_is_deterministic_given_the_seed(digits):
    _, a = _search("danas", digits, None, seed=3)
    _, b = _search("danas", digits, None, seed=3)
    assert a.arch == b.arch


def test_impossible_budget_is_a_user_error(digits):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=5)
    with pytest.raises(UserError, match="smallest network"):
        _search("danas", digits, space.min_flops() - 1)


def test_random_strategy_respects_the_budget(digits):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=5)
    budget = space.min_flops() + (space.max_flops() - space.min_flops()) // 5
    for seed in range(5):
        r = STRATEGIES.get("random")(seed=seed).search(space, None, digits, Constraints(budget), None)
        assert r.flops <= budget


def test_random_with_several_trials_scores_each_and_records_them(digits, tmp_path):
    import optuna

    from xsearch.evaluators import ClassificationEvaluator

    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=5)
    study = optuna.create_study(directions=["maximize", "minimize"])
    evaluator = ClassificationEvaluator(epochs=1, batch_size=64, show_progress=False)
    r = STRATEGIES.get("random")(max_trials=3, seed=1, show_progress=False).search(
        space, evaluator, digits, Constraints(None), RunRecorder(tmp_path, space, study))
    accs = [h.metrics["val_accuracy"] for h in r.history]  # held-out training images, never the test split
    assert len(study.trials) == 3 and r.metrics["val_accuracy"] == max(accs) == r.metrics["score"]


def test_spos_trains_single_path_then_exports_the_best_queried_architecture(digits, tmp_path, monkeypatch):
    from xsearch.evaluators import InheritedWeightsEvaluator

    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=5)
    budget = (space.min_flops() + space.max_flops()) // 2
    knobs = {"max_trials": 6, "population_size": 3, "sample_size": 2, "val_samples": 200}
    _, result = _search("spos", digits, budget, tmp_path, **knobs)
    assert [e["phase"] for e in result.metrics["epochs"]] == ["warmup"] * 4  # warmup_epochs + epochs, single path
    assert len(result.history) == 6 and all(h.flops <= budget for h in result.history)
    best = max(result.history, key=lambda h: h.score)
    assert result.arch == best.arch and result.metrics["inherited_val_accuracy"] == best.score
    assert all(0 <= h.score <= 1 and abs(h.metrics["val_samples"] - 200) <= 10 for h in result.history)
    # same seed, same answer; and a finished search resumes from its checkpoints without a new query
    _, again = _search("spos", digits, budget, None, **knobs)
    assert [h.arch for h in again.history] == [h.arch for h in result.history]
    calls = []
    original = InheritedWeightsEvaluator.score
    monkeypatch.setattr(InheritedWeightsEvaluator, "score", lambda *a, **k: calls.append(1) or original(*a, **k))
    _, resumed = _search("spos", digits, budget, tmp_path, **knobs)
    assert calls == [] and resumed.arch == result.arch


def test_inherited_score_equals_the_extracted_network_after_the_same_recalibration(digits, tmp_path):
    from xsearch.core.checkpoint import read_checkpoint
    from xsearch.core.data import split_for_search
    from xsearch.core.training import evaluate, recalibrate_batchnorm
    from xsearch.evaluators import InheritedWeightsEvaluator

    space, result = _search("spos", digits, None, tmp_path, max_trials=2, population_size=2, sample_size=1)
    net = Supernet(space, sharing="shared")  # spos trains the shared-weight supernet by default
    net.load_state_dict(read_checkpoint(tmp_path / "ckpt.pt", "search")["model"])
    w_idx, a_idx = split_for_search(digits.train.targets, 600, 0)
    got = InheritedWeightsEvaluator(net, w_idx, a_idx, 50, recalibration_batches=3).score(space, result.arch, digits, 5)
    standalone = net.extract(result.arch)
    batches = digits.batches("train", w_idx, 50, shuffle=True, augment=False, generator=torch.Generator().manual_seed(5))
    recalibrate_batchnorm(standalone, batches, max_batches=3)
    assert got["score"] == pytest.approx(evaluate(standalone, digits, "train", a_idx)["accuracy"], abs=1e-9)


def test_spos_runs_any_multi_trial_searcher_over_inherited_weights(digits):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=5)
    budget = (space.min_flops() + space.max_flops()) // 2
    _, result = _search("spos", digits, budget, None, searcher="tpe", max_trials=5, val_samples=200)
    assert len(result.history) == 5 and result.metrics["scorer"] == "inherited"
    assert all(h.flops <= budget for h in result.history)
    with pytest.raises(ValueError, match="multi-trial"):
        STRATEGIES.get("spos")(searcher="danas")


def test_spos_refuses_the_settings_it_inherits_but_never_reads():
    from xsearch.strategies import STRATEGIES

    with pytest.raises(TypeError, match="spos does not use \\['derive_trials'\\]"):
        STRATEGIES.get("spos")(derive_trials=3)
    assert STRATEGIES.get("spos")(max_trials=3, lr=0.05).lr == 0.05


def test_danas_easy_warmup_trains_on_the_easy_classes_and_counts_images_not_passes(digits):
    """easy_warmup: one all-class warm-up epoch ranks the classes, the others train on stage 1's classes; small data
    gets passes."""
    _, result = _search("danas", digits, None, warmup_epochs=3, epoch_images=900, derive="probability",
                        easy_warmup=True)
    phases = result.metrics["phases"]
    assert [p["phase"] for p in phases] == ["warm-up", "warm-up (easy classes)", "stage 1", "stage 2", "stage 3"]
    warm, easy = phases[0], phases[1]
    # whole passes over the weight half of the 600 search images until an epoch has at least 900 images
    w_idx, _ = split_for_search(digits.train.targets, 600, 0)
    passes = -(-900 // len(w_idx))
    assert (warm["classes"], warm["epochs"], warm["images"]) == (10, 1, passes * len(w_idx))
    assert warm["steps"] == -(-warm["images"] // 50)
    assert easy["classes"] == 3 and easy["epochs"] == 2 and easy["images"] % passes == 0
    assert 0.5 * warm["images"] <= easy["images"] <= 0.7 * warm["images"]  # 3 of 10 classes, twice
    assert phases[-1]["classes"] == 10 and phases[-1]["images"] == warm["images"]
    epochs = result.metrics["epochs"]
    assert [e["classes"] for e in epochs[:3]] == [10, 3, 3]
    assert result.metrics["warning"] is None or "has not learned" in result.metrics["warning"]


def test_danas_by_default_dnas_and_spos_warm_up_on_every_class(digits):
    for name, kw in (("danas", {"derive": "probability"}), ("dnas", {"derive": "probability"}),
                     ("spos", {"max_trials": 2})):
        _, result = _search(name, digits, None, warmup_epochs=2, **kw)
        warmups = [e for e in result.metrics["epochs"] if e["phase"] == "warmup"]
        assert warmups and all(e["classes"] == 10 and not e["easy_classes"] for e in warmups)
