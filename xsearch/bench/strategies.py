"""``xsearch bench strategies``: multi-trial strategies against a benchmark table (regret per FLOPs budget)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from xsearch.config import build_space, build_strategy, parse_count
from xsearch.core.errors import UserError
from xsearch.core.nasbench import GET_TABLE

from ._harness import configure, format_flops_m, machine, markdown_table, output_path, refuse, write_rows


def bench_strategies(overrides: list[str]) -> list[dict[str, Any]]:
    """Regret of each multi-trial strategy on the table, per FLOPs budget, over ``bench.table_seeds`` seeds.

    Regret is the table's best mean accuracy under the budget minus the best mean accuracy the
    strategy found, in points, after ``bench.queries`` queries; ``queries_to_0.2`` is the first
    query at which the regret is at most 0.2 points (missing when never within 100 queries).
    """
    from xsearch.evaluators import TabularEvaluator
    from xsearch.strategies import STRATEGIES, Constraints

    refuse(overrides, ("strategy", "evaluator", "data"),
           "bench strategies runs bench.multi_trial on a benchmark table; set evaluator.table=PATH, "
           "not strategy=, evaluator= or data=")
    table_settings = [] if any(o.startswith("space=") for o in overrides) else ["space=nasbench_macro"]
    table_settings += ["evaluator=tabular", "progress=false"]
    cfg = configure(table_settings + overrides)
    table_path = cfg["evaluator"].get("table")
    if not table_path:
        raise UserError(f"bench strategies needs the NAS-Bench-Macro table: evaluator.table=PATH; {GET_TABLE}")
    evaluator = TabularEvaluator(table_path)
    space = build_space(cfg, None)
    evaluator.check(space)
    bench = cfg["bench"]
    checkpoints = sorted(int(q) for q in bench["queries"])
    budgets = [parse_count(b, "bench.budgets") for b in bench["budgets"]]
    seeds = int(bench["table_seeds"])
    names = list(bench["multi_trial"])
    unknown = [n for n in names if n not in STRATEGIES.names()]
    if unknown:
        raise UserError(f"bench.multi_trial: unknown strategies {unknown}; valid: {STRATEGIES.names()}")
    # each strategy's own configuration (its defaults), queried up to the last checkpoint; the
    # seed varies per search and progress bars stay off
    configs = {name: configure(table_settings + [f"strategy={name}", f"search.max_trials={max(checkpoints)}"])
               for name in names}
    rows: list[dict[str, Any]] = []
    out = output_path(cfg)
    for budget in budgets:
        space.check_budget(budget)
        best_key, best_acc = evaluator.best_under(space, budget)
        for name in names:
            regrets: dict[int, list[float]] = {q: [] for q in checkpoints}
            reach: list[int | None] = []
            t0 = time.time()
            for seed in range(seeds):
                strategy = build_strategy({**configs[name], "seed": seed, "progress": False})
                result = strategy.search(space, evaluator, None, Constraints(budget), None)
                trace = [100 * h.best_score for h in result.history]  # one QueryRecord per query
                for q in checkpoints:
                    regrets[q].append(best_acc - trace[min(q, len(trace)) - 1])
                reach.append(next((i + 1 for i, acc in enumerate(trace) if best_acc - acc <= 0.2 + 1e-9), None))
            reached = [r for r in reach if r is not None]
            row = {"strategy": name, "flops_budget": budget, "table_best": best_acc, "table_best_key": best_key,
                   "seeds": seeds, "seconds": time.time() - t0,
                   "reached_0.2": len(reached), "queries_to_0.2_median": statistics.median(reached) if reached else None,
                   "queries_to_0.2": reach, "table": str(table_path), "machine": machine()}
            for q in checkpoints:
                row[f"regret@{q}"] = statistics.mean(regrets[q])
                row[f"regret@{q}_std"] = statistics.stdev(regrets[q]) if seeds > 1 else 0.0
            rows.append(row)
            print(f"[bench] {format_flops_m(budget)} {name}: " + ", ".join(
                f"regret@{q} {row[f'regret@{q}']:.2f}" for q in checkpoints)
                + f"; within 0.2 in {len(reached)}/{seeds} seeds", flush=True)
            write_rows(out, rows)
    print(format_strategies_table(rows, checkpoints))
    return rows


def format_strategies_table(rows: list[dict[str, Any]], checkpoints: list[int]) -> str:
    """The README table of ``bench strategies`` rows: regret (mean +- std) at each query checkpoint."""
    header = ["budget", "best in table", "strategy", *(f"regret@{q} (pts)" for q in checkpoints),
              "within 0.2: seeds", "median queries"]
    body = []
    for r in rows:
        median = r["queries_to_0.2_median"]
        body.append([format_flops_m(r["flops_budget"]), f"{r['table_best']:.2f}", r["strategy"],
                     *(f"{r[f'regret@{q}']:.2f} +- {r[f'regret@{q}_std']:.2f}" for q in checkpoints),
                     f"{r['reached_0.2']}/{r['seeds']}", "-" if median is None else f"{median:g}"])
    return markdown_table(header, "lrl" + "r" * len(checkpoints) + "rr", body)
