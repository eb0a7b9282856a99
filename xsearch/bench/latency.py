"""``xsearch bench latency``: how well latency tables predict, and what a latency budget buys over a FLOPs budget.

Two parts, rows of both in ``out=`` (appended as they finish; a rerun with the same ``out=`` skips
what is there, so the benchmark can be split over several calls):

1. Prediction (``part=prediction``), for each space of ``bench.latency_spaces`` (default mbv3,
   mbv3 with dynamic convolution, micronet, at the data's size): the latency table (the default one
   under ``<runs_root>/latency/``, built when missing) and its check, ``latency.networks`` (30) random
   networks the calibration never saw, timed whole in the table's own rounds: mean absolute and worst
   relative error of the calibrated prediction and of the plain sum of layer times, and the table's
   milliseconds per million MACs by block family (which families are fast per FLOP on this CPU).
2. Accuracy at an equal latency (``part=search``), on the first space: a latency budget ``L``
   (``bench.latency_budget``, default ``auto``: the lower quartile of random networks' predicted
   latency, a budget that binds) and the FLOPs budget ``F`` that gives the same mean
   latency (the mean MACs of the random networks predicted within 5 % of ``L``). For seeds
   0..bench.seeds-1 the configured search runs under ``constraints.latency=L`` and under
   ``constraints.flops=F`` (same seed, same settings); each found network is retrained (test accuracy)
   and timed whole on the runtime. The table gives both arms' accuracy and measured latency over the
   seeds and the paired accuracy difference with its standard error. The found networks of every arm
   and seed are timed whole together at the end, in the same rounds as the table's check networks
   timed again: the median ratio of their times now to their times in the table is the machine's
   drift since the table was made, and ``measured_table_ms`` (measured / drift) is each found
   network's time in the table's conditions, the one its prediction and budget speak of.

Defaults: ``strategy=danas budget=smoke`` on Fashion-MNIST, onnxruntime, batch 1, 1 thread. Time
it alone: another process on the CPU changes every latency.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from xsearch.config import build_data, build_evaluator, build_space
from xsearch.core.errors import UserError
from xsearch.search_spaces import format_flops

from ._harness import configure, machine, markdown_table, output_path, read_rows, refuse, search, write_rows
from .blocks import BLOCK_SPACES

DEFAULTS = ["space=mbv3", "data=fashion_mnist", "strategy=danas", "budget=smoke", "progress=false"]


def bench_latency(overrides: list[str]) -> list[dict[str, Any]]:
    """Latency prediction error per space, then latency- against FLOPs-constrained search (see module doc)."""
    from xsearch import latency

    refuse(overrides, ("constraints.flops", "constraints.latency", "seed", "space"),
           "bench latency sets the budgets, the seeds (0..bench.seeds-1) and the spaces (bench.latency_spaces) "
           "itself; drop constraints.*, seed= and space=")
    base = configure([*DEFAULTS, *overrides])
    names = list(base["bench"]["latency_spaces"])
    unknown = [n for n in names if n not in BLOCK_SPACES]
    if not names or unknown:
        raise UserError(f"bench.latency_spaces: unknown {unknown or 'empty list'}; valid: {list(BLOCK_SPACES)}")
    seeds = int(base["bench"]["seeds"])
    if seeds < 1:
        raise UserError(f"bench.seeds must be at least 1, got {seeds}")
    out = output_path(base)
    rows = read_rows(out)
    data = build_data(base)
    device = latency.table_device(base)
    for name in names:
        if any(r["part"] == "prediction" and r["space_variant"] == name for r in rows):
            continue
        cfg = configure([*DEFAULTS, *overrides, *BLOCK_SPACES[name]])
        space = build_space(cfg, data)
        table, path = latency.use_table(cfg, space)
        errors = table["check"]  # networks the calibration never saw, timed in the table's own rounds
        latency.print_table(space, table, path)
        rows.append({"part": "prediction", "space_variant": name, "table": str(path), **latency.summary(errors),
                     "calibration": {k: v for k, v in table["calibration"].items() if k != "networks"},
                     "calibration_networks": len(table["calibration"]["networks"]),
                     "ms_per_mmac": latency.family_speed(space, table), "networks_rows": errors,
                     "runtime": table["runtime"], "threads": table["threads"], "batch": table["batch"],
                     "cpu": table["machine"]["cpu"], "versions": table["versions"], "machine": machine()})
        write_rows(out, rows)

    cfg = configure([*DEFAULTS, *overrides, *BLOCK_SPACES[names[0]]])
    space = build_space(cfg, data)
    table, _ = latency.use_table(cfg, space)
    budget_ms, flops = matched_budgets(space, base["bench"]["latency_budget"])
    print(f"[bench] {names[0]}: latency budget {budget_ms:.3g} ms; the FLOPs budget of the same mean latency "
          f"{format_flops(flops)} MACs", flush=True)
    for seed in range(seeds):
        for arm, constraint in (("latency", f"constraints.latency={budget_ms}ms"), ("flops", f"constraints.flops={flops}")):
            if any(r["part"] == "search" and r["arm"] == arm and r["seed"] == seed for r in rows):
                continue
            run_cfg = configure([*DEFAULTS, *overrides, *BLOCK_SPACES[names[0]], constraint, f"seed={seed}"])
            found = search(run_cfg, data)
            found.space.use_latency(space.fixed_latency, space.latency_table, space.latency_source)
            arch = found.result.arch
            metrics = build_evaluator(run_cfg).evaluate(found.space, arch, data, seed=seed)
            rows.append({"part": "search", "arm": arm, "seed": seed, "space_variant": names[0], "arch": arch,
                         "latency_budget_ms": budget_ms, "flops_budget": flops, "flops": found.result.flops,
                         "predicted_ms": found.space.latency(arch),
                         "test_accuracy": metrics["test_accuracy"], "search_seconds": found.seconds,
                         "strategy": run_cfg["strategy"]["name"], "budget": run_cfg["budget"],
                         "train_epochs": metrics["train_epochs"], "overrides": overrides, "machine": machine()})
            write_rows(out, rows)
            print(f"[bench] seed {seed} {arm}: {100 * metrics['test_accuracy']:.2f}%, predicted "
                  f"{found.space.latency(arch):.3g} ms, {format_flops(found.result.flops)} MACs", flush=True)
    found_rows = [r for r in rows if r["part"] == "search"]
    if any("measured_ms" not in r for r in found_rows):  # all found networks timed whole in the same rounds,
        # beside the table's check networks: their time now against their time in the table is the machine's drift
        check = table["check"]
        times = latency.measure_archs(space, table, [r["arch"] for r in found_rows] + [c["arch"] for c in check], device)
        drift = statistics.median(t["median_ms"] / c["measured_ms"] for t, c in zip(times[len(found_rows):], check))
        for r, t in zip(found_rows, times):
            r.update(measured_ms=t["median_ms"], measured_p25_ms=t["p25_ms"], measured_p75_ms=t["p75_ms"],
                     drift=drift, measured_table_ms=t["median_ms"] / drift)
        write_rows(out, rows)
    print(latency_tables(rows))
    return rows


def matched_budgets(space: Any, setting: str, samples: int = 4000) -> tuple[float, int]:
    """(latency budget in ms, the FLOPs budget whose networks have that mean predicted latency) for ``space``."""
    from xsearch.config import parse_latency

    archs = [space.sample(seed=90_000 + i) for i in range(samples)]
    lat = [space.latency(a) for a in archs]
    if setting == "auto":
        budget = statistics.quantiles(lat, n=4)[0]  # the lower quartile of random networks' predicted latency
    else:
        budget = parse_latency(setting, "bench.latency_budget")
    near = [space.flops(a) for a, t in zip(archs, lat) if abs(t / budget - 1) <= 0.05]
    if len(near) < 10:
        raise UserError(f"bench.latency_budget={setting}: only {len(near)} of {samples} random networks are "
                        f"predicted within 5 % of {budget:.3g} ms, too few to match a FLOPs budget; choose a "
                        f"budget between {space.min_cost('latency'):.3g} ms and {max(lat):.3g} ms")
    return budget, round(statistics.fmean(near))


def latency_tables(rows: list[dict[str, Any]]) -> str:
    """The README's two tables: prediction error per space, and the two arms of the search part."""
    pred = [r for r in rows if r["part"] == "prediction"]
    out = [markdown_table(
        ["space", "networks", "measured ms", "MAE (calibrated)", "worst", "MAE (sum of layers)", "fastest families (ms/MMAC)"],
        "lrrrrrl",
        [[r["space_variant"], str(r["networks"]), f"{r['min_ms']:.3g}-{r['max_ms']:.3g}", f"{100 * r['mae']:.1f}%",
          f"{100 * r['max_error']:.1f}%", f"{100 * r['raw_mae']:.1f}%",
          ", ".join(f"{f} {v:.3g}" for f, v in list(r["ms_per_mmac"].items())[:3])] for r in pred])]
    found = [r for r in rows if r["part"] == "search"]
    if found:
        arms = {}
        for arm in ("latency", "flops"):
            mine = [r for r in found if r["arm"] == arm]
            if mine:
                arms[arm] = mine
        body = []
        for arm, mine in arms.items():
            acc = [100 * r["test_accuracy"] for r in mine]
            ms = [r["measured_table_ms"] for r in mine]
            budget = (f"{mine[0]['latency_budget_ms']:.3g} ms" if arm == "latency"
                      else f"{format_flops(mine[0]['flops_budget'])} MACs")
            body.append([f"constraints.{arm}", budget, str(len(mine)), _mean_sd(acc, "%"),
                         _mean_sd([r["predicted_ms"] for r in mine], " ms"), _mean_sd(ms, " ms"),
                         f"{statistics.fmean(r['flops'] for r in mine) / 1e6:.2f}M"])
        out.append(markdown_table(["constraint", "budget", "seeds", "test accuracy", "predicted latency",
                                   "measured latency (table's conditions)", "mean MACs"], "llrrrrr", body))
        out.append(f"drift since the table: the check networks now take {found[0]['drift']:.3f}x their time in "
                   "the table (measured latencies above are divided by it)")
        pairs = {r["seed"]: r for r in found if r["arm"] == "latency"}
        diffs = [100 * (pairs[r["seed"]]["test_accuracy"] - r["test_accuracy"])
                 for r in found if r["arm"] == "flops" and r["seed"] in pairs]
        if len(diffs) >= 2:
            se = statistics.stdev(diffs) / math.sqrt(len(diffs))
            out.append(f"paired difference (latency - flops budget): {statistics.fmean(diffs):+.2f} points "
                       f"+- {se:.2f} (standard error, {len(diffs)} seeds)")
    return "\n\n".join(out)


def _mean_sd(values: list[float], unit: str) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3g}{unit} +- {sd:.2g}"
