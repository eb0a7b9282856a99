"""``xsearch bench throughput``: re-measure the CPU throughput of a ``bench blocks`` file's networks here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xsearch.core.errors import UserError

from ._harness import configure, machine, write_rows
from .blocks import cpu_throughput, format_blocks_table


def bench_throughput(overrides: list[str]) -> list[dict[str, Any]]:
    """Re-measure ``images_per_second`` of every network in a ``bench blocks`` file (``out=FILE.json``) here.

    For comparing speed on another machine, or after a benchmark whose timings overlapped with
    other work; accuracy and FLOPs are left as they are.
    """
    from xsearch.search_spaces import get_space

    base = configure(overrides)
    if not base.get("out") or not Path(base["out"]).is_file():
        raise UserError("bench throughput re-measures the rows of a bench blocks file: out=FILE.json (an existing file)")
    path = Path(base["out"])
    rows = json.loads(path.read_text())
    for row in rows:
        space = get_space(row["space"], **row["space_kwargs"])
        row["images_per_second"] = cpu_throughput(space.build(row["arch"]), space.input_shape,
                                                  rounds=base["bench"]["throughput_rounds"])
        row["throughput_machine"] = machine()
        print(f"[bench] {row['budget_label']} {row['network']}: {row['images_per_second']:.0f} img/s", flush=True)
    write_rows(path, rows)
    print(format_blocks_table(rows))
    return rows
