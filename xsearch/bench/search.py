"""``xsearch bench search``: DA-NAS against the full-data baseline, SPOS and a random architecture.

Every strategy in ``bench.strategies`` runs on the same space, data, FLOPs budget and epoch budget;
each found network is retrained the same way with ``bench.seeds`` seeds; the table reports search
time and mean/std test accuracy.
"""

from __future__ import annotations

from typing import Any

from xsearch.config import build_data
from xsearch.strategies import StageRecord

from ._harness import (
    configure,
    machine,
    markdown_table,
    output_path,
    refuse,
    retrain,
    retraining_seeds,
    search,
    write_rows,
)


def bench_search(overrides: list[str]) -> list[dict[str, Any]]:
    """Search with every strategy, then retrain each found network; rows to ``out=FILE.json``, table printed."""
    refuse(overrides, ("strategy",), "bench search runs every strategy in bench.strategies; set those instead of "
                                     "strategy=")
    base = configure(overrides)
    seeds = retraining_seeds(base)
    data = build_data(base)
    out = output_path(base)
    # all searches first, back to back, so their timings share the same machine state
    found = []
    for name in base["bench"]["strategies"]:
        print(f"[bench] {name}: searching ...", flush=True)
        s = search(configure(overrides, f"strategy={name}"), data)
        found.append((name, s))
        print(f"[bench] {name}: {s.seconds:.0f} s, {s.result.flops / 1e6:.2f}M MACs", flush=True)
    rows: list[dict[str, Any]] = []
    for name, s in found:
        cfg, result = s.cfg, s.result
        row = {"strategy": name, "search_seconds": s.seconds,
               **retrain(cfg, s.space, result.arch, data, seeds, name),
               "flops": result.flops, "params": result.params, "arch": result.arch,
               "space": s.space.name, "data": cfg["data"]["name"], "flops_budget": cfg["constraints"]["flops"],
               "search_epochs": cfg["search"].get("epochs"), "warmup_epochs": cfg["search"].get("warmup_epochs"),
               "search_train_samples": cfg["search"].get("train_samples"), "train_epochs": cfg["train"]["epochs"],
               "seeds": seeds, "machine": machine(), "overrides": overrides,
               "stages": [{k: getattr(h, k) for k in ("num_classes", "alive_per_layer", "seconds", "val_accuracy")}
                          for h in result.history if isinstance(h, StageRecord)]}
        rows.append(row)
        write_rows(out, rows)
        print(f"[bench] {name}: {100 * row['test_accuracy']:.2f} +- {100 * row['test_accuracy_std']:.2f} % test",
              flush=True)
    print(format_search_table(rows))
    return rows


def format_search_table(rows: list[dict[str, Any]]) -> str:
    """The README table of ``bench search`` rows (search time relative to dnas when it ran)."""
    ref = next((r["search_seconds"] for r in rows if r["strategy"] == "dnas"), None)
    return markdown_table(
        ["strategy", "search time (s)", "vs dnas", "test accuracy (%) mean +- std", "FLOPs (M)", "params (M)"],
        "lrrrrr",
        [[r["strategy"], f"{r['search_seconds']:.0f}", f"{r['search_seconds'] / ref:.2f}x" if ref else "-",
          f"{100 * r['test_accuracy']:.2f} +- {100 * r['test_accuracy_std']:.2f}", f"{r['flops'] / 1e6:.2f}",
          f"{r['params'] / 1e6:.3f}"] for r in rows])
