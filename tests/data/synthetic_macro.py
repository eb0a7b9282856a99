"""A synthetic NAS-Bench-Macro table, so the table-driven tests run in any clone.

Same format and keys as NAS-Bench-Macro's ``nas-bench-macro_cifar10.json`` (every one of the 3^8
architectures of ``space=nasbench_macro``, key = the option index per layer, e.g. ``"01201201"``),
with ``flops`` and ``params`` from the space's own tables and a made-up accuracy:

    mean_acc = 80 + sum_i GAIN[option_i] * (0.5 + i / 8) + noise(key)        (percent, 2 decimals)

GAIN = identity 0, k3_e3 1.0, k5_e6 1.5 (bigger blocks help, later layers more), and
noise(key) = u - 0.5 with u = (int(key, 3) * 2654435761 mod 2^32) / 2^32, a fixed hash in
[-0.5, 0.5): enough noise that the best network under a budget is not the greedy one, no
randomness from any library. Every strategy samples anywhere in the space, so the table needs
every key (a partial table would answer "not in the table" for most of them).

The table is not committed (all 6561 keys are about half a megabyte): the ``synthetic_macro_table``
fixture in ``tests/conftest.py`` writes it once per test session, and
``python tests/data/synthetic_macro.py OUT.json`` writes it for a try by hand, e.g.
``xsearch bench strategies evaluator.table=OUT.json``.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

GAIN = (0.0, 1.0, 1.5)  # per option index: identity, k3_e3, k5_e6


def mean_acc(key: str) -> float:
    """The synthetic accuracy (percent) of the architecture with table key ``key`` (see module doc)."""
    additive = sum(GAIN[int(d)] * (0.5 + i / 8) for i, d in enumerate(key))
    noise = (int(key, 3) * 2654435761 % 2**32) / 2**32 - 0.5
    return round(80 + additive + noise, 2)


def synthetic_table() -> dict[str, dict[str, Any]]:
    """The whole table: every key of ``space=nasbench_macro`` at its default size (CIFAR-10 input)."""
    from xsearch.search_spaces import get_space

    space = get_space("nasbench_macro")
    table = {}
    for digits in itertools.product("012", repeat=len(space.choices)):
        key = "".join(digits)
        arch = space.arch_from_key(key)
        table[key] = {"mean_acc": mean_acc(key), "std": 0.0, "params": space.params(arch), "flops": space.flops(arch)}
    return table


def write_table(path: str | Path) -> Path:
    """Write the table to ``path`` as JSON (the format ``evaluator=tabular`` reads)."""
    path = Path(path)
    path.write_text(json.dumps(synthetic_table()))
    return path


if __name__ == "__main__":
    print(f"wrote {write_table(sys.argv[1])}")
