"""``tabular``: an architecture's accuracy looked up in a benchmark table; no training.

The table is a JSON object ``{key: {"mean_acc": percent, "test_acc": [...], "std": ..., "params":
..., "flops": ...}}`` as NAS-Bench-Macro ships it; the space turns an architecture into the table's
key (``space.benchmark_key(arch)``). A search that queries the table is judged against a ground
truth it cannot influence.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from xsearch.core.errors import SettingError, UserError
from xsearch.core.nasbench import GET_TABLE

from ._base import EVALUATORS, Evaluator


@lru_cache(maxsize=4)
def load_table(path: str) -> dict[str, dict[str, Any]]:
    """The table at ``path`` (read once per process), or a UserError saying what is wrong."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"benchmark table {path!r} does not exist; pass evaluator.table=PATH to a JSON table "
                        f"such as NAS-Bench-Macro's: {GET_TABLE}")
    try:
        table = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"benchmark table {path!r} is not valid JSON: {exc}") from None
    if not isinstance(table, dict) or not table:
        raise UserError(f"benchmark table {path!r} must be a non-empty JSON object {{key: {{mean_acc, ...}}}}")
    sample = next(iter(table.values()))
    if not isinstance(sample, dict) or "mean_acc" not in sample:
        raise UserError(f"benchmark table {path!r}: entries need a 'mean_acc' field (percent), got {sample!r}")
    return table


@EVALUATORS.register("tabular")
class TabularEvaluator(Evaluator):
    """Answer ``test_accuracy`` (the table's ``mean_acc`` / 100) for an architecture of a benchmark space."""

    name = "tabular"
    needs_data = False
    score_name = "table accuracy"
    result_name = "table test accuracy"

    def __init__(self, table: str | None = None) -> None:
        if not table:
            raise SettingError("needs evaluator.table=PATH, a benchmark table such as NAS-Bench-Macro's "
                               f"nas-bench-macro_cifar10.json: {GET_TABLE}")
        self.table_path = str(table)
        self.table = load_table(self.table_path)

    def check(self, space: Any) -> None:
        """The space must name table keys and be the table's network (same FLOPs for a sample of keys)."""
        if not hasattr(space, "benchmark_key"):
            raise UserError(f"space {space.name!r} has no benchmark table; evaluator=tabular works with "
                            "space=nasbench_macro")
        for key in list(self.table)[:20]:
            entry = self.table[key]
            try:
                arch = space.arch_from_key(key)
            except UserError:
                raise UserError(f"table {self.table_path!r} has key {key!r}, which is not an architecture of "
                                f"space {space.name!r}; is it the right table?") from None
            if "flops" in entry and space.flops(arch) != entry["flops"]:
                raise UserError(f"space {space.name!r} as configured ({space.space_kwargs}) is not the table's "
                                f"network: {key} has {space.flops(arch)} MACs here, {entry['flops']} in the table. "
                                "The space was sized for the loaded data; a table answers only for its own network: "
                                "use a strategy that only queries (random, evolution, tpe, nsga2) so that no data "
                                "is loaded and the space keeps the table's input size")

    def key(self, space: Any, arch: dict[str, str]) -> str:
        if not hasattr(space, "benchmark_key"):
            self.check(space)  # raises: no table for this space
        key = space.benchmark_key(arch)
        if key not in self.table:
            raise UserError(f"architecture {key} is not in the table {self.table_path!r}; is it the table "
                            f"of space {space.name!r}?")
        return key

    def evaluate(self, space: Any, arch: dict[str, str], data: Any = None, seed: int = 0,
                 workdir: Path | None = None) -> dict[str, Any]:
        key = self.key(space, arch)
        entry = self.table[key]
        return {"test_accuracy": entry["mean_acc"] / 100.0, "benchmark_key": key,
                "table_mean_acc": entry["mean_acc"], "table_std": entry.get("std"),
                "table_params": entry.get("params"), "table_flops": entry.get("flops"), "seed": seed}

    def best_under(self, space: Any, max_flops: int | None) -> tuple[str, float]:
        """The table's best key and mean accuracy (percent) among architectures within ``max_flops``."""
        best_key, best = "", float("-inf")
        for key, entry in self.table.items():
            if max_flops is not None and space.flops(space.arch_from_key(key)) > max_flops:
                continue
            if entry["mean_acc"] > best:
                best_key, best = key, entry["mean_acc"]
        return best_key, best
