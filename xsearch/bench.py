"""``xsearch bench search``: DA-NAS against the full-data baseline and a random architecture.

Every strategy runs on the same space, data, FLOPs budget and epoch budget; each found network is
retrained the same way with several seeds; the table reports search time and mean/std test accuracy.
"""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .config import compose, validate
from .errors import UserError
from .pipeline import build_data, build_evaluator, build_space, build_strategy
from .records import write_json


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"


def bench_search(overrides: list[str]) -> list[dict[str, Any]]:
    if any(o.split("=", 1)[0] == "strategy" for o in overrides):
        raise UserError("bench search runs every strategy in bench.strategies; set those instead of strategy=")
    base = validate(compose(overrides))
    strategies = list(base["bench"]["strategies"])
    seeds = int(base["bench"]["seeds"])
    if seeds < 1:
        raise UserError(f"bench.seeds must be at least 1, got {seeds}")
    data = build_data(base)
    out = Path(base["out"]) if base.get("out") else None
    from xsearch.strategies import Constraints

    # all searches first, back to back, so their timings share the same machine state
    found = []
    for name in strategies:
        cfg = validate(compose(overrides + [f"strategy={name}"]))
        space = build_space(cfg, data)
        space.check_budget(cfg["constraints"]["flops"])
        print(f"[bench] {name}: searching ...", flush=True)
        t0 = time.time()
        result = build_strategy(cfg).search(space, None, data, Constraints(cfg["constraints"]["flops"]), None)
        found.append((name, cfg, space, result, time.time() - t0))
        print(f"[bench] {name}: {found[-1][-1]:.0f} s, {result.flops / 1e6:.2f}M MACs", flush=True)
    rows: list[dict[str, Any]] = []
    for name, cfg, space, result, seconds in found:
        evaluator = build_evaluator(cfg)
        accs = []
        for seed in range(seeds):
            print(f"[bench] {name}: retraining seed {seed + 1}/{seeds} ...", flush=True)
            accs.append(evaluator.evaluate(space, result.arch, data, seed=seed)["test_accuracy"])
        row = {"strategy": name, "search_seconds": seconds, "test_accuracy": statistics.mean(accs),
               "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "test_accuracies": accs,
               "flops": result.flops, "params": result.params, "arch": result.arch,
               "space": space.name, "data": cfg["data"]["name"], "flops_budget": cfg["constraints"]["flops"],
               "search_epochs": cfg["search"].get("epochs"), "warmup_epochs": cfg["search"].get("warmup_epochs"),
               "search_train_samples": cfg["search"].get("train_samples"), "train_epochs": cfg["train"]["epochs"],
               "seeds": seeds, "machine": machine(), "overrides": overrides,
               "stages": [{k: h[k] for k in ("num_classes", "alive_per_layer", "seconds", "val_accuracy")}
                          for h in result.history if "alive_per_layer" in h]}
        rows.append(row)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_json(out, rows)
        print(f"[bench] {name}: {100 * row['test_accuracy']:.2f} +- {100 * row['test_accuracy_std']:.2f} % test",
              flush=True)
    print(format_table(rows))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of bench rows (what goes in the README)."""
    lines = ["| strategy | search time (s) | vs dnas | test accuracy (%) mean +- std | FLOPs (M) | params (M) |",
             "|---|---:|---:|---:|---:|---:|"]
    ref = next((r["search_seconds"] for r in rows if r["strategy"] == "dnas"), None)
    for r in rows:
        ratio = f"{r['search_seconds'] / ref:.2f}x" if ref else "-"
        lines.append(f"| {r['strategy']} | {r['search_seconds']:.0f} | {ratio} | "
                     f"{100 * r['test_accuracy']:.2f} +- {100 * r['test_accuracy_std']:.2f} | "
                     f"{r['flops'] / 1e6:.2f} | {r['params'] / 1e6:.3f} |")
    return "\n".join(lines)
