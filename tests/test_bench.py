"""The benchmarks behind `xsearch bench ...`: each writes its rows and table on a smoke budget."""

from __future__ import annotations

import json

import pytest

from xsearch.cli import main

SMOKE = ["data=digits", "budget=smoke", "progress=false"]


SEARCH = [*SMOKE, "bench.seeds=1", "train.epochs=1", "train.train_samples=200", "train.test_samples=100",
          "search.max_trials=1", "bench.random_archs=2"]


@pytest.fixture
def searches(monkeypatch):
    """The configurations ``bench search`` searched with (and ``fixed``: a seedless variant of ``random``)."""
    import xsearch.bench.search as bench_search

    seen = []

    def counting(cfg, data, checkpoint=None):
        seen.append(cfg)
        return real(cfg, data, checkpoint)

    real = bench_search.search
    monkeypatch.setattr(bench_search, "search", counting)
    monkeypatch.setattr(bench_search, "VARIANTS", {"fixed": ["strategy=random", "search.prescreen_factor=2"]})
    monkeypatch.setattr(bench_search, "SEEDLESS", frozenset({"fixed"}))
    return seen


@pytest.mark.slow
def test_bench_search_rows_per_budget_seed_and_random_arch_and_resume(tmp_path, capsys, searches):
    out = tmp_path / "search.json"
    args = [*SEARCH, "bench.strategies=[random,fixed]", f"out={out}"]
    assert main(["bench", "search", *args, "bench.search_budgets=[1M]", "bench.search_seeds=1"]) == 0
    assert len(searches) == 2 and len(json.loads(out.read_text())) == 4
    # the same benchmark continued: a second budget and a second search seed; done rows are skipped
    del searches[:]
    assert main(["bench", "search", *args, "bench.search_budgets=[1M,1.5M]", "bench.search_seeds=2"]) == 0
    assert [(c["constraints"]["flops"], c["strategy"]["name"], c["seed"], c["search"]["prescreen_factor"])
            for c in searches] == [(1_000_000, "random", 1, 4), (1_500_000, "random", 0, 4),
                                   (1_500_000, "random", 0, 2), (1_500_000, "random", 1, 4)]
    assert all(c["search"]["max_trials"] == 1 for c in searches)  # a search.* override goes to every strategy
    rows = json.loads(out.read_text())
    keys = [(r["flops_budget"], r["strategy"], r["search_seed"], r.get("random_index")) for r in rows]
    assert sorted(keys, key=str) == sorted([(b, n, s, None) for b in (1_000_000, 1_500_000)
                                            for n, s in (("random", 0), ("random", 1), ("fixed", 0))]
                                           + [(b, "random_distribution", None, i) for b in (1_000_000, 1_500_000)
                                              for i in (0, 1)], key=str)
    for r in rows:
        assert {"test_accuracy", "test_accuracy_std", "test_accuracies", "flops", "flops_budget", "flops_used",
                "params", "arch", "search_seconds", "peak_rss_mb", "rss_before_mb", "derivation", "machine",
                "overrides", "settings"} <= set(r)
        assert r["flops"] <= r["flops_budget"] and r["flops_used"] == r["flops"] / r["flops_budget"]
        assert len(r["test_accuracies"]) == 1
        if r["strategy"] == "random_distribution":
            assert r["search_seconds"] is None and r["peak_rss_mb"] is None and r["random_index"] in (0, 1)
        else:
            assert "stages" in r and r["search_seconds"] >= 0 and r["peak_rss_mb"] >= r["rss_before_mb"] > 0
    assert [r["strategy_overrides"] for r in rows if r["strategy"] == "fixed"] == [
        ["strategy=random", "search.prescreen_factor=2"]] * 2
    table = capsys.readouterr().out
    assert "| 1.5M | random | 2 |" in table and "| 1M | fixed | 1 |" in table and "| 1M | random distribution | 2 archs |" in table
    # nothing left to do; other settings are refused rather than mixed into the same rows
    del searches[:]
    assert main(["bench", "search", *args, "bench.search_budgets=[1M,1.5M]", "bench.search_seeds=2"]) == 0
    assert main(["bench", "search", *args, "train.epochs=2", "bench.search_budgets=[1M]"]) == 2
    assert searches == [] and "other settings" in capsys.readouterr().err


def test_bench_search_refuses_before_any_work(tmp_path, capsys, searches):
    for bad in (["bench.strategies=[random,nope]"], ["bench.strategies=[random,random_distribution]"],
                ["strategy=danas"], ["constraints.flops=5M"], ["seed=1"], ["search.nope=1"],
                ["bench.search_seeds=0"]):
        assert main(["bench", "search", *SEARCH, "bench.strategies=[random]", *bad]) == 2, bad
    err = capsys.readouterr().err
    assert "unknown ['nope']" in err and "variants fixed" in err and "search.nope" in err
    old = tmp_path / "old.json"  # rows of the single-budget format are not continued
    old.write_text(json.dumps([{"strategy": "danas", "flops_budget": 7_000_000, "search_seconds": 1.0}]))
    assert main(["bench", "search", *SEARCH, "bench.strategies=[random]", f"out={old}"]) == 2
    assert searches == []


def test_search_table_percentiles_among_the_random_distribution():
    from xsearch.bench.search import format_legacy_search_table, format_search_table, percentile

    assert percentile(0.5, [0.1, 0.5, 0.9, 0.95]) == 37.5 and percentile(1.0, [0.1]) == 100
    assert percentile(0.0, [0.1, 0.2]) == 0 and percentile(0.5, []) is None

    def row(strategy, acc, accs, seed=0, seconds=10.0, flops=4e6, index=None, rss=100.0):
        return {"strategy": strategy, "flops_budget": 5_000_000, "test_accuracy": acc, "test_accuracies": accs,
                "flops": flops, "search_seconds": seconds, "search_seed": seed, "random_index": index,
                "peak_rss_mb": rss}

    rows = [row("random_distribution", a, [a], index=i, seconds=None, rss=None)
            for i, a in enumerate([0.80, 0.82, 0.84, 0.86])]
    rows += [row("dnas", 0.83, [0.82, 0.84], seconds=20.0, rss=300.0),
             row("danas", 0.85, [0.84, 0.86], seed=0, rss=200.0),
             row("danas", 0.81, [0.80, 0.82], seed=1, seconds=30.0, flops=5e6, rss=250.0)]
    lines = format_search_table(rows).splitlines()
    # danas: mean 0.83 over its seeds (50th percentile of 0.80..0.86), its seeds' networks at 75 and 25;
    # std over the four accuracies; 4.5M MACs of 5M; 20 s against dnas's 20 s; the larger peak
    assert "| 5M | danas | 2 | 83.00 +- 2.58 | 4.50 | 90 % | 20 | 1.00x | 250 | 50 (75, 25) |" in lines
    assert "| 5M | dnas | 1 | 83.00 +- 1.41 | 4.00 | 80 % | 20 | 1.00x | 300 | 50 |" in lines
    assert "| 5M | random distribution | 4 archs | 83.00 +- 2.58, best 86.00 | 4.00 | 80 % | - | - | - | - |" in lines
    # rows of the earlier single-budget format: one budget, seed 0
    old = [{"strategy": "danas", "search_seconds": 227.0, "test_accuracy": 0.9134, "test_accuracy_std": 0.0028,
            "test_accuracies": [0.91, 0.9134, 0.9168], "flops": 4.81e6, "params": 386000, "flops_budget": 7_000_000}]
    assert "| 7M | danas | 1 | 91.34 +- 0.34 | 4.81 | 69 % | 227 | - | - | - |" in format_search_table(old)
    assert "| danas | 227 | - | 91.34 +- 0.28 | 4.81 | 0.386 |" in format_legacy_search_table(old)


def test_bench_strategies_reports_regret_on_the_synthetic_table(tmp_path, synthetic_macro_table, capsys):
    out = tmp_path / "strategies.json"
    assert main(["bench", "strategies", f"evaluator.table={synthetic_macro_table}", "bench.table_seeds=2",
                 "bench.budgets=[40M]", "bench.queries=[5,20]", f"out={out}"]) == 0
    rows = json.loads(out.read_text())
    assert [r["strategy"] for r in rows] == ["random", "evolution", "tpe", "nsga2"]
    table = json.loads(synthetic_macro_table.read_text())
    best = max(e["mean_acc"] for e in table.values() if e["flops"] <= 40_000_000)
    for r in rows:
        assert 0 <= r["regret@20"] <= r["regret@5"] and r["table_best"] == best and len(r["queries_to_0.2"]) == 2
    assert "| 40M | " in capsys.readouterr().out
    assert main(["bench", "strategies", f"evaluator.table={synthetic_macro_table}", "strategy=tpe"]) == 2
    assert main(["bench", "strategies"]) == 2  # no table


@pytest.mark.slow
def test_bench_ranking_correlates_inherited_and_standalone_accuracy(tmp_path, capsys):
    out = tmp_path / "ranking.json"
    assert main(["bench", "ranking", *SMOKE, "bench.ranking_archs=3", "bench.ranking_epochs=1",
                 "bench.ranking_train_samples=300", f"out={out}"]) == 0
    summary = json.loads(out.read_text())
    assert summary["archs"] == 3 and len(summary["rows"]) == 3
    for name in ("danas", "spos"):
        assert -1 <= summary[name]["kendall_tau"] <= 1 and summary[name]["supernet_seconds"] > 0
    assert all(0 <= r["standalone"] <= 1 and 0 <= r["spos_inherited"] <= 1 for r in summary["rows"])
    assert "| spos |" in capsys.readouterr().out
    assert main(["bench", "ranking", *SMOKE, "strategy=danas"]) == 2
    assert main(["bench", "nope"]) == 2


@pytest.mark.slow
def test_bench_blocks_compares_found_networks_and_fixed_variants(tmp_path, capsys):
    out = tmp_path / "blocks.json"
    assert main(["bench", "blocks", *SMOKE, "bench.seeds=1", "train.epochs=1", "train.train_samples=300",
                 "train.test_samples=200", "search.train_samples=400", "search.epochs=3", "search.val_samples=100",
                 "search.derive_trials=3", "bench.blocks_spaces=[mbv3,micronet]", "bench.blocks_budgets=[2M]",
                 "bench.throughput_rounds=1", f"out={out}"]) == 0
    rows = json.loads(out.read_text())
    assert [r["network"] for r in rows] == ["mbv3 (found)", "micronet (found)", "mbv3 (found), dynamic conv",
                                            "mbv3 (found), DyReLU", "mbv3 (found), ReLU"]
    found = rows[0]["arch"]
    for r in rows:
        assert 0 <= r["test_accuracy"] <= 1 and r["images_per_second"] > 0 and r["params"] > 0
        if r["network"].startswith("mbv3 (found),"):
            # the same layers: only the operator variant changes
            assert [o.split("_")[:2] for o in r["arch"].values()] == [o.split("_")[:2] for o in found.values()]
    assert rows[0]["flops"] <= 2_000_000 and rows[1]["flops"] <= 2_000_000
    assert "| 2M | micronet (found) |" in capsys.readouterr().out
    rows[0]["images_per_second"] = -1.0
    out.write_text(json.dumps(rows))
    assert main(["bench", "throughput", "bench.throughput_rounds=1", f"out={out}"]) == 0
    again = json.loads(out.read_text())
    assert all(r["images_per_second"] > 0 for r in again) and [r["test_accuracy"] for r in again] == \
        [r["test_accuracy"] for r in rows]
    assert main(["bench", "throughput", f"out={tmp_path / 'missing.json'}"]) == 2
    assert main(["bench", "blocks", *SMOKE, "space=micronet"]) == 2
    assert main(["bench", "blocks", *SMOKE, "bench.blocks_spaces=[resnet]"]) == 2
    assert main(["bench", "blocks", *SMOKE, "bench.blocks_budgets=[1K]"]) == 2  # refused before any training


@pytest.mark.parametrize("space", [["space=mbv3", "space.num_layers=4", "space.width_mult=0.5"],
                                   ["space=micronet", "space.width_mult=0.5"]])
def test_bench_supernet_times_naive_and_fused_on_the_same_weights(tmp_path, capsys, space):
    out = tmp_path / "supernet.json"
    assert main(["bench", "supernet", *space, "bench.supernet_batch=4", "bench.supernet_steps=1",
                 "bench.supernet_warmup=0", f"out={out}"]) == 0
    p = json.loads(out.read_text())
    assert p["naive_step_seconds"] > 0 and p["fused_step_seconds"] > 0
    assert p["fused_over_naive"] == pytest.approx(p["fused_step_seconds"] / p["naive_step_seconds"])
    assert p["channels_last_speedup"] == pytest.approx(p["naive_nchw_step_seconds"] / p["naive_step_seconds"])
    # beside them: the shared-weight supernet and the single largest candidate network alone
    assert p["shared_over_largest"] == pytest.approx(p["shared_step_seconds"] / p["largest_network_step_seconds"])
    assert p["shared_layers"] == (p["shapes"]["layers"] if space[0] == "space=mbv3" else 0)
    assert "shared / largest" in capsys.readouterr().out
    assert p["shapes"]["input"][0] == 4 and len(p["shapes"]["candidates_per_layer"]) == p["shapes"]["layers"]
    # same weights, same batch, same dropout draws: the two executions agree
    assert p["max_abs_diff"] <= 1e-4 * max(p["output_scale"], 1e-2)
    # ... and so do their gradients, unless float32 rounding flips a near-tie of a max (Dynamic
    # Shift-Max) in the plain path: seen here for micronet with two threads (plain 1.8e-2 from
    # float64, fused 1e-5; one thread: both 1e-5). Then the fused gradients must match float64.
    assert p["max_grad_rel_diff"] <= 1e-4 or (p["naive_vs_float64_grad_rel_diff"] > 1e-4
                                              and p["fused_vs_float64_grad_rel_diff"] <= 1e-4)
    # against float64, fused float32 rounds no worse than plain float32
    assert p["fused_vs_float64_grad_rel_diff"] <= max(2 * p["naive_vs_float64_grad_rel_diff"], 1e-5)
    if p["gpu"] is None:
        assert "not measured" in p["gpu_note"]


def test_bench_supernet_rejects_bad_settings(capsys):
    assert main(["bench", "supernet", "bench.supernet_batch=0"]) != 0
    err = capsys.readouterr().err
    assert "bench.supernet_batch" in err and "Traceback" not in err
