"""Multi-trial search against NAS-Bench-Macro's table from Python: no training, seconds on a CPU.

Run: python examples/table_search.py [PATH/TO/nas-bench-macro_cifar10.json]
(default: ../shared/benchmarks/nas-bench-macro/nas-bench-macro_cifar10.json beside the repository)
"""

from __future__ import annotations

import sys
from pathlib import Path

from xsearch.evaluators import ProxyEvaluator, TabularEvaluator
from xsearch.search_spaces import format_flops, get_space
from xsearch.strategies import Constraints, RegularizedEvolution, TPESearch

default = Path(__file__).resolve().parents[2] / "shared/benchmarks/nas-bench-macro/nas-bench-macro_cifar10.json"
table = TabularEvaluator(sys.argv[1] if len(sys.argv) > 1 else str(default))
space = get_space("nasbench_macro")  # 8 layers x {identity, k3_e3, k5_e6}, 32x32x3, as in the table
budget = Constraints(flops=40_000_000)
best_key, best_acc = table.best_under(space, budget.flops)
print(f"table optimum under {format_flops(budget.flops)}: {best_key} at {best_acc:.2f} %")

for strategy in (RegularizedEvolution(max_trials=100, seed=0), TPESearch(max_trials=100, seed=0)):
    result = strategy.search(space, table, None, budget)
    key = space.benchmark_key(result.arch)
    print(f"{strategy.name:>9}: {key} at {100 * result.metrics['test_accuracy']:.2f} % "
          f"(regret {best_acc - 100 * result.metrics['test_accuracy']:.2f} points), "
          f"{format_flops(result.flops)} MACs, best found at query {result.metrics['best_query']}")

# a zero-cost proxy needs no table and no training: how does it rank the table's networks?
proxy = ProxyEvaluator(proxy="params")
for key in ("00000000", "11111111", best_key):
    arch = space.arch_from_key(key)
    print(f"{key}: params proxy {proxy.evaluate(space, arch, None)['score']:.0f}, table "
          f"{100 * table.evaluate(space, arch)['test_accuracy']:.2f} %")
