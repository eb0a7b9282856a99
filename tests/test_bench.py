"""The benchmarks behind `xsearch bench ...`: each writes its rows and table on a smoke budget."""

from __future__ import annotations

import json

import pytest

from xsearch.cli import main

SMOKE = ["data=digits", "budget=smoke", "progress=false"]


def test_bench_search_writes_rows_for_every_strategy(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "search", *SMOKE, "bench.seeds=2", "train.epochs=1", f"out={out}"]) == 0
    rows = json.loads(out.read_text())
    assert [r["strategy"] for r in rows] == ["danas", "dnas", "spos", "random"]
    for r in rows:
        assert {"strategy", "search_seconds", "test_accuracy", "test_accuracy_std", "flops", "params"} <= set(r)
        assert len(r["test_accuracies"]) == 2 and r["test_accuracy_std"] >= 0
    assert "| danas |" in capsys.readouterr().out


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


def test_bench_blocks_compares_found_networks_and_fixed_variants(tmp_path, capsys):
    out = tmp_path / "blocks.json"
    assert main(["bench", "blocks", *SMOKE, "bench.seeds=1", "train.epochs=1", "search.train_samples=400",
                 "bench.blocks_spaces=[mbv3,micronet]", "bench.blocks_budgets=[2M]", f"out={out}"]) == 0
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
    assert main(["bench", "throughput", f"out={out}"]) == 0
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
        assert "not measured" in p["gpu_note"] and "GPU: no CUDA device" in capsys.readouterr().out


def test_bench_supernet_rejects_bad_settings(capsys):
    assert main(["bench", "supernet", "bench.supernet_batch=0"]) != 0
    err = capsys.readouterr().err
    assert "bench.supernet_batch" in err and "Traceback" not in err
