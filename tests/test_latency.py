"""Latency budgets: the space's latency table, every strategy within ``constraints.latency``, and real tables.

Most tests give the space a synthetic table (known numbers) so that budgets and derivations can be
checked exactly against brute force; the table-building tests time real modules on onnxruntime and
torch at tiny sizes and check what the file holds (never how fast anything is).
"""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from xsearch.cli import main
from xsearch.config import compose, parse_latency, validate
from xsearch.core.errors import UserError
from xsearch.search_spaces import Constraints, get_space
from xsearch.strategies import STRATEGIES, NoEvents
from xsearch.strategies._derive import best_under_budget
from xsearch.strategies._differentiable import prune
from xsearch.supernets import Supernet

SIZE = {"num_classes": 10, "in_chans": 1, "image_size": 8}


def synthetic(space, seed=0):
    """Give ``space`` a latency table unrelated to FLOPs (random per option, skip 0): budgets on it are not
    FLOPs budgets in disguise."""
    rng = random.Random(seed)
    table = {c.label: {o: (0.0 if o == "skip" else rng.uniform(0.05, 1.0)) for o in c.options} for c in space.choices}
    space.use_latency(0.3, table, {"runtime": "synthetic"})
    return space


@pytest.fixture
def space():
    return synthetic(get_space("mbv3", num_layers=4, **SIZE))


class ScoreByName:
    """A stand-in evaluator (the strategies' budget logic is under test, not training): a deterministic score."""

    name = "fake"
    needs_data = False
    trains = False

    def score(self, space, arch, data, seed=0, report=None):
        return {"score": sum(len(o) * (i + 1) for i, o in enumerate(arch.values())) / 100.0}


def test_latency_is_the_table_sum_and_budgets_hold_it(space):
    arch = space.sample(seed=1)
    assert space.latency(arch) == pytest.approx(0.3 + sum(space.latency_table[k][v] for k, v in arch.items()))
    budget = Constraints(latency=space.latency(arch))
    assert space.fits(arch, budget) and not space.fits(arch, Constraints(latency=space.latency(arch) - 1e-6))
    assert space.violation(arch, budget) == pytest.approx(0.0)
    assert space.fits(arch, space.flops(arch)) and space.fits(arch, None)  # an integer is a FLOPs budget
    tight = space.min_cost("latency") * 1.05
    for seed in range(20):
        assert space.latency(space.sample(seed=seed, max_flops=Constraints(latency=tight))) <= tight


def test_a_latency_budget_below_the_fastest_network_is_refused(space):
    with pytest.raises(UserError, match="below the fastest network"):
        space.check_budget(Constraints(latency=space.min_cost("latency") * 0.9))
    bare = get_space("mbv3", num_layers=4, **SIZE)
    with pytest.raises(UserError, match="no latency table"):
        bare.latency(bare.sample(seed=0))


def test_the_knapsack_derivation_is_exact_under_both_limits(space):
    small = space.restrict({c.label: list(c.options[:4]) + ["skip"] * ("skip" in c.options) for c in space.choices})
    rng = random.Random(3)
    scores = {c.label: {o: rng.random() for o in c.options} for c in small.choices}
    every = [dict(zip(small.labels, picks)) for picks in itertools.product(*(c.options for c in small.choices))]
    lat = sorted(small.latency(a) for a in every)
    flops = sorted(small.flops(a) for a in every)
    for budget in (Constraints(latency=lat[len(lat) // 3]), Constraints(flops=flops[len(flops) // 2]),
                   Constraints(flops=flops[len(flops) // 2], latency=lat[len(lat) // 2])):
        feasible = [a for a in every if small.fits(a, budget)]
        best = max(sum(scores[k][v] for k, v in a.items()) for a in feasible)
        got = best_under_budget(small, scores, budget)
        assert small.fits(got, budget)
        assert sum(scores[k][v] for k, v in got.items()) == pytest.approx(best)


@pytest.mark.parametrize("name", ["random", "evolution", "tpe", "nsga2"])
def test_every_multi_trial_strategy_stays_within_the_latency_budget(space, name):
    budget = Constraints(latency=space.min_cost("latency") + 0.4)
    strategy = STRATEGIES.get(name)(max_trials=6, seed=0, show_progress=False)
    result = strategy.search(space, ScoreByName(), None, budget, NoEvents())
    assert all(space.latency(q.arch) <= budget.latency for q in result.history)
    assert space.fits(result.arch, budget) and len(result.history) == 6


def test_tpe_is_told_both_limits_as_optuna_constraints(space):
    import optuna

    flops = sorted(space.flops(space.sample(seed=s)) for s in range(50))[25]
    budget = Constraints(flops=flops, latency=space.min_cost("latency") + 0.5)
    result = STRATEGIES.get("tpe")(max_trials=5, seed=0, show_progress=False).search(space, ScoreByName(), None,
                                                                                    budget, NoEvents())
    assert all(space.fits(q.arch, budget) for q in result.history)
    assert hasattr(optuna.trial.Trial, "set_constraint")


def test_hand_thins_to_a_latency_budget(space):
    full = space.hand_designed()
    budget = Constraints(latency=space.latency(full) * 0.7)
    thin = STRATEGIES.get("hand")().search(space, None, None, budget).arch
    assert space.latency(thin) <= budget.latency < space.latency(full)
    changed = [k for k in full if full[k] != thin[k]]
    assert changed  # thinned layer by layer, not replaced
    assert STRATEGIES.get("hand")().search(space, None, None, Constraints(latency=space.latency(full))).arch == full


def test_expected_latency_is_the_probability_weighted_table_and_has_a_gradient(space):
    net = Supernet(space)
    for layer in net.layers:
        torch.nn.init.normal_(layer.alpha)
    expected = net.expected_cost("latency")
    manual = space.fixed_latency + sum(
        float((layer.probabilities().detach() * torch.tensor([space.latency_table[layer.label][o] for o in layer.options])).sum())
        for layer in net.layers)
    assert float(expected.detach()) == pytest.approx(manual, rel=1e-5)
    expected.backward()
    assert all(layer.alpha.grad is not None and layer.alpha.grad.abs().sum() > 0 for layer in net.layers)
    assert float(net.expected_cost("flops").detach()) == pytest.approx(float(net.expected_flops().detach()))


def test_pruning_keeps_the_latency_budget_reachable(space):
    net = Supernet(space)
    slow_first = {c.label: sorted(c.options, key=lambda o: -space.latency_table[c.label][o]) for c in space.choices}
    for layer in net.layers:  # the supernet prefers the slowest candidates
        with torch.no_grad():
            layer.alpha.copy_(torch.tensor([-slow_first[layer.label].index(o) for o in layer.options], dtype=torch.float))
    budget = Constraints(latency=space.min_cost("latency") * 1.02)
    prune(net, space, 0.2, budget)
    alive = net.alive_options()
    fastest = space.fixed_latency + sum(min(space.latency_table[k][o] for o in opts) for k, opts in alive.items())
    assert fastest <= budget.latency


@pytest.mark.parametrize("text, ms", [("3ms", 3.0), ("500us", 0.5), ("0.002s", 2.0), ("3", 3.0), (1.5, 1.5)])
def test_latency_settings_parse(text, ms):
    assert parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("override, message", [("constraints.latency=fast", "is not a time"),
                                                ("constraints.latency=-2ms", "is not a time"),
                                                ("latency.runtime=tvm", "onnxruntime or torch"),
                                                ("latency.threads=0", "at least 1")])
def test_bad_latency_settings_exit_2(tmp_path, capsys, override, message):
    with pytest.raises(UserError, match=message):
        validate(compose([override]))
    assert main(["run", override, f"runs_root={tmp_path}"]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "xsearch.db").exists()


# --- real tables ---------------------------------------------------------------------------
SETTINGS = {"table": None, "runtime": "onnxruntime", "batch": 1, "threads": 1, "warmup": 1, "repeats": 3,
            "calibrate": 3, "networks": 2}


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_a_table_times_every_candidate_and_predicts_a_sum(tmp_path, runtime):
    from xsearch import latency

    space = get_space("mbv3", num_layers=4, dynamic=True, width_mult=0.5, **SIZE)
    settings = {**SETTINGS, "runtime": runtime}
    out = tmp_path / "table.json"
    table = latency.build_table(space, settings, out, torch.device("cpu"), show_progress=False)
    saved = json.loads(out.read_text())
    assert saved["space"] == "mbv3" and saved["space_kwargs"] == space.space_kwargs and saved["runtime"] == runtime
    assert {"cpu", "cores"} <= set(saved["machine"]) and "torch" in saved["versions"]
    for c in space.choices:
        assert set(saved["layers"][c.label]) == set(c.options)
        for option, t in saved["layers"][c.label].items():
            assert (t["median_ms"] == 0.0) == (option == "skip")
            assert option == "skip" or t["p25_ms"] <= t["median_ms"] <= t["p75_ms"]
    assert len(saved["calibration"]["networks"]) == 3 and saved["calibration"]["scale"] > 0
    assert len(saved["check"]) == 2 and all(r["measured_ms"] > 0 and "error" in r for r in saved["check"])
    assert all(len(v) == SETTINGS["repeats"] for v in saved["samples"].values())
    assert len(saved["samples"]) == 3 + sum(o != "skip" for c in space.choices for o in c.options) + 3 + 2
    latency.attach(space, table, out)
    arch = space.sample(seed=4)
    fixed, layers = latency.predicted_parts(table)
    assert space.latency(arch) == pytest.approx(fixed + sum(layers[k][v] for k, v in arch.items()))
    assert space.min_cost("latency") > 0


def test_a_killed_table_build_resumes_without_timing_again(tmp_path, monkeypatch):
    from xsearch import latency

    space = get_space("mbv3", num_layers=4, width_mult=0.5, **SIZE)
    out = tmp_path / "table.json"
    full = latency.build_table(space, SETTINGS, out, torch.device("cpu"), show_progress=False)
    saved = json.loads(out.read_text())
    for key in ("layers", "calibration", "check", "call", "stem", "head"):
        del saved[key]  # as if killed after the first round
    saved["rounds_done"] = 1
    saved["samples"] = {k: v[:1] for k, v in saved["samples"].items()}
    out.write_text(json.dumps(saved))
    rounds = []
    real = latency.Pool.round
    monkeypatch.setattr(latency.Pool, "round", lambda self, seed: rounds.append(seed) or real(self, seed))
    again = latency.build_table(space, SETTINGS, out, torch.device("cpu"), show_progress=False)
    assert rounds == list(range(1, SETTINGS["repeats"]))  # only the rounds the killed build had not timed
    assert all(len(v) == SETTINGS["repeats"] for v in again["samples"].values())
    assert {k: v[0] for k, v in again["samples"].items()} == {k: v[0] for k, v in full["samples"].items()}
    rounds.clear()
    latency.build_table(space, SETTINGS, out, torch.device("cpu"), show_progress=False)
    assert rounds == []  # a finished table is not timed again
    with pytest.raises(UserError, match="other settings"):
        latency.build_table(space, {**SETTINGS, "threads": 2}, out, torch.device("cpu"), show_progress=False)


def test_the_fit_recovers_a_known_correction():
    from xsearch.latency import fit

    rng = random.Random(0)
    rows = []
    for _ in range(12):
        raw, layers = rng.uniform(0.2, 2.0), rng.randint(2, 8)
        rows.append({"raw_ms": raw, "layers_run": layers, "measured_ms": 1.3 * raw + 0.02 * layers + 0.05})
    got = fit(rows)
    assert (got["scale"], got["per_layer"], got["offset"]) == pytest.approx((1.3, 0.02, 0.05), abs=1e-9)


def test_run_under_a_latency_budget_end_to_end(tmp_path, capsys, synthetic_macro_table):
    from xsearch import latency

    space = synthetic(get_space("nasbench_macro"))
    table = {**latency.header(space, SETTINGS, torch.device("cpu")), "call": {"median_ms": 0.0},
             "stem": {"median_ms": 0.2}, "head": {"median_ms": 0.1},
             "layers": {label: {o: {"median_ms": t, "calls_per_sample": int(t > 0)} for o, t in row.items()}
                        for label, row in space.latency_table.items()},
             "calibration": {"scale": 1.0, "per_layer": 0.0, "offset": 0.0, "networks": []}, "samples": {},
             "check": []}
    path = tmp_path / "latency.json"
    path.write_text(json.dumps(table))
    budget = space.min_cost("latency") + 1.0
    args = ["run", "space=nasbench_macro", "strategy=random", "evaluator=tabular",
            f"evaluator.table={synthetic_macro_table}", "search.max_trials=5", f"constraints.latency={budget}ms",
            f"latency.table={path}", f"runs_root={tmp_path / 'runs'}", "progress=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    run_dir = next((tmp_path / "runs").glob("*-nasbench_macro-random"))
    record = json.loads((run_dir / "arch.json").read_text())
    latency.attach(space, table, path)
    assert record["latency_ms"] == pytest.approx(space.latency(record["arch"])) and record["latency_ms"] <= budget
    assert record["latency_budget"] == pytest.approx(budget) and "predicted on onnxruntime" in out
    search = json.loads((run_dir / "search.json").read_text())
    assert all(space.latency(q["arch"]) <= budget for q in search["history"])
    # a table made for another space is refused before any work
    other = ["run", "space=mbv3", "data=digits", "strategy=hand", "constraints.latency=3ms", f"latency.table={path}",
             f"runs_root={tmp_path / 'other'}", "progress=false"]
    assert main(other) == 2
    assert "was measured for other settings" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("name", ["danas", "spos"])
def test_supernet_searches_derive_within_the_latency_budget(digits, name):
    space = synthetic(get_space("mbv3", num_layers=5, **SIZE))
    budget = Constraints(latency=space.min_cost("latency") + 0.3 * (space.latency(space.hand_designed())
                                                                     - space.min_cost("latency")))
    kw = {"derive_trials": 4, "val_samples": 200} if name == "danas" else {"max_trials": 4}
    strategy = STRATEGIES.get(name)(show_progress=False, epochs=3, warmup_epochs=1, train_samples=400, batch_size=50,
                                    **kw)
    result = strategy.search(space, None, digits, budget, None)
    assert space.latency(result.arch) <= budget.latency
    assert all(space.latency(q.arch) <= budget.latency for q in result.history if hasattr(q, "score"))
    if name == "danas":
        epochs = [e for e in result.metrics["epochs"] if e.get("phase") == "search"]
        assert epochs and all("expected_latency_ms" in e for e in epochs)


def test_bench_latency_writes_both_parts_and_resumes(tmp_path, capsys):
    from xsearch.bench import BENCHMARKS

    out = tmp_path / "rows.json"
    args = ["data=digits", "bench.latency_spaces=[mbv3]", "space.num_layers=4", "space.width_mult=0.5",
            "latency.networks=3", "latency.repeats=3", "latency.calibrate=3", "latency.warmup=1", "bench.seeds=2",
            "strategy=hand", "train.epochs=1", "train.train_samples=200", "train.test_samples=100",
            f"runs_root={tmp_path}", f"out={out}"]
    rows = BENCHMARKS["latency"](args)
    assert [r["part"] for r in rows] == ["prediction"] + ["search"] * 4
    pred = rows[0]
    assert pred["networks"] == 3 and len(pred["networks_rows"]) == 3 and pred["mae"] >= 0
    search = rows[1:]
    assert {(r["arm"], r["seed"]) for r in search} == {(a, s) for a in ("latency", "flops") for s in (0, 1)}
    for r in search:
        if r["arm"] == "latency":
            assert r["predicted_ms"] <= r["latency_budget_ms"]
        else:
            assert r["flops"] <= r["flops_budget"]
        assert r["measured_ms"] > 0 and 0 <= r["test_accuracy"] <= 1
    assert "paired difference" in capsys.readouterr().out
    assert BENCHMARKS["latency"](args) == rows  # everything is in out=: nothing runs again
    assert main(["bench", "latency", "constraints.flops=5M"]) == 2


def test_a_space_without_a_chain_is_refused(tmp_path, capsys):
    assert main(["latency", "table", "space=dyhead", f"runs_root={tmp_path}", "repeats=3"]) == 2
    assert "classification space" in capsys.readouterr().err


def test_the_latency_commands_build_print_and_check(tmp_path, capsys):
    common = ["space=mbv3", "data=digits", "space.num_layers=4", "space.width_mult=0.5", "repeats=3", "warmup=1",
              "calibrate=3", "networks=2", f"runs_root={tmp_path}", "progress=false"]
    assert main(["latency", "table", *common]) == 0
    out = capsys.readouterr().out
    assert "calibration over 3 networks" in out and "check, 2 other random networks" in out
    (path,) = (tmp_path / "latency").glob("mbv3-onnxruntime-cpu-b1-t1-*.json")
    assert main(["latency", "check", *common, f"out={tmp_path / 'check.json'}"]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and "mean absolute error" in out and "the table's own check" in out
    rows = json.loads((tmp_path / "check.json").read_text())
    assert len(rows["networks"]) == 2 and rows["table"] == str(path)
    assert main(["latency", "check", *common[:-2], f"table={tmp_path / 'none.json'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
