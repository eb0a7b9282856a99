"""``xsearch bench search``: DA-NAS against its old settings, DNAS, SPOS, the hand-designed network and random ones.

For every FLOPs budget in ``bench.search_budgets``: every strategy or named variant (``VARIANTS``)
in ``bench.strategies`` searches with seeds 0..``bench.search_seeds``-1 (one that does not search,
``SEEDLESS``, once), and ``bench.random_archs`` architectures drawn uniformly under the budget form
the random distribution; every network is retrained the same way with ``bench.seeds`` seeds.

One row per (budget, strategy, search seed) and per random architecture, written to
``out=FILE.json`` after each. Rerunning with the same ``out=`` skips the rows already there, so the
benchmark splits over several calls (one budget each, more seeds later) and a call may be cut
short; rows of other settings are refused, not mixed. The table is built from the rows alone.
"""

from __future__ import annotations

import gc
import statistics
from typing import Any

from xsearch.config import KINDS, build_data, build_space, parameters, parse_count
from xsearch.core.errors import UserError
from xsearch.strategies import StageRecord

from ._harness import (
    configure,
    format_flops_m,
    machine,
    markdown_table,
    output_path,
    peak_resident,
    read_rows,
    refuse,
    retrain,
    retraining_seeds,
    search,
    write_rows,
)

# A named variant: a strategy with settings of its own; any other name in bench.strategies means strategy=<name>.
VARIANTS: dict[str, list[str]] = {
    "danas_legacy": ["strategy=danas", "search.sharing=none", "search.derive=probability", "search.skip=mixed",
                     "search.prune_score=probability"],
    # the pruning score: the softmax alone (danas's default) against the blend with each candidate's own held-out loss
    "danas_blend": ["strategy=danas", "search.prune_score=blend"],
    # the paper's warm-up on easy data: one all-class epoch ranks the classes, the others train on stage 1's classes
    "danas_easy_warmup": ["strategy=danas", "search.easy_warmup=true"],
}
SEEDLESS = frozenset({"hand"})  # strategies that do not search: the same network whatever the seed, so run once
RANDOM = "random_distribution"  # the strategy field of the random architectures' rows
# Overrides that only choose which part of the benchmark a call runs, or where it reports: rows
# written under different values of these still belong together; any other override is a setting.
SPLITTING = ("out", "progress", "bench.strategies", "bench.search_budgets", "bench.search_seeds",
             "bench.random_archs")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def strategy_overrides(name: str) -> list[str]:
    """The overrides that make strategy or variant ``name``: ``VARIANTS[name]``, else ``strategy=<name>``."""
    return list(VARIANTS[name]) if name in VARIANTS else [f"strategy={name}"]


def base_strategy(name: str) -> str:
    """The registered strategy behind ``name`` (a variant's ``strategy=``)."""
    return next((o.split("=", 1)[1] for o in strategy_overrides(name) if _key(o) == "strategy"), name)


def check_strategies(names: list[str]) -> None:
    """Refuse unknown, repeated or reserved names in ``bench.strategies`` (before any work)."""
    registered = KINDS["strategy"].registry.names()
    unknown = [n for n in names if n not in VARIANTS and n not in registered]
    if unknown:
        raise UserError(f"bench.strategies: unknown {unknown}; valid: strategies {', '.join(sorted(registered))}; "
                        f"variants {', '.join(sorted(VARIANTS))} (the random distribution always runs: "
                        f"bench.random_archs)")
    broken = [n for n in names if base_strategy(n) not in registered]
    if broken:
        raise UserError(f"bench.strategies: variants {broken} name no registered strategy")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"bench.strategies: {repeated} given more than once")


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What a row stands for: (budget, strategy, search seed), or (budget, random_distribution, index)."""
    if row["strategy"] == RANDOM:
        return row.get("flops_budget"), RANDOM, row.get("random_index")
    return row.get("flops_budget"), row["strategy"], row.get("search_seed", 0)


def _check_settings(rows: list[dict[str, Any]], settings: list[str], out: Any) -> None:
    """Refuse to append to rows of other settings: one table must not mix them."""
    if any("settings" not in r for r in rows):
        raise UserError(f"out={out} holds rows of the earlier single-budget bench search (no settings recorded); "
                        "write to another out= file")
    other = next((r["settings"] for r in rows if r["settings"] != settings), None)
    if other is not None:
        raise UserError(f"out={out} holds rows of other settings {other} than this call's {settings}; rerun with "
                        f"those to continue it, or write to another out= file (only {', '.join(SPLITTING)} may "
                        "change between the calls of one benchmark)")


def bench_search(overrides: list[str]) -> list[dict[str, Any]]:
    """Every strategy at every budget and search seed, and random networks, all retrained; resumes from out=.

    Rows (the new ones appended to those of ``out=FILE.json``) written after each; the table printed.
    """
    refuse(overrides, ("strategy", "constraints.flops", "seed"),
           "bench search runs every strategy in bench.strategies at every budget in bench.search_budgets with "
           "search seeds 0..bench.search_seeds-1; set those instead of strategy=, constraints.flops= or seed=")
    user_search = [o for o in overrides if _key(o).startswith("search.")]
    common = [o for o in overrides if not _key(o).startswith("search.")]
    base = configure(common)
    bench = base["bench"]
    names = list(bench["strategies"])
    check_strategies(names)
    budgets = [parse_count(b, "bench.search_budgets") for b in bench["search_budgets"]]
    if None in budgets:
        raise UserError("bench.search_budgets: every budget must be a number of MACs (e.g. 5M), not null")
    search_seeds, random_archs = int(bench["search_seeds"]), int(bench["random_archs"])
    if search_seeds < 1 or random_archs < 0:
        raise UserError(f"bench.search_seeds must be at least 1 and bench.random_archs at least 0, got "
                        f"{search_seeds} and {random_archs}")
    seeds = retraining_seeds(base)

    # a search.* override goes to the strategies that have that setting; one that none has is a mistake
    def applies(o: str, name: str) -> bool:
        return _key(o).removeprefix("search.") in parameters(KINDS["strategy"].registry.get(base_strategy(name)))

    unused = [o for o in user_search if not any(applies(o, n) for n in names)]
    if unused:
        raise UserError(f"{unused}: no strategy in bench.strategies ({', '.join(names)}) has that setting; "
                        "list them with 'xsearch list settings strategy=NAME'")
    per_name = {n: [*common, *(o for o in user_search if applies(o, n)), *strategy_overrides(n)] for n in names}
    if budgets:  # every configuration checked before any work
        for n in names:
            configure(per_name[n], f"constraints.flops={budgets[0]}")

    out = output_path(base)
    settings = sorted(o for o in overrides if _key(o) not in SPLITTING)
    rows = read_rows(out)
    plan: list[tuple[int, str, int]] = []
    for budget in budgets:
        plan += [(budget, n, s) for s in range(search_seeds) for n in names if not (s and n in SEEDLESS)]
        plan += [(budget, RANDOM, i) for i in range(random_archs)]
    if plan:  # bench.search_budgets=[] only prints the table of out=, whatever its settings
        _check_settings(rows, settings, out)
    machines = {r.get("machine") for r in rows} - {machine()}
    if machines and plan:
        print(f"[bench] note: out={out} has rows timed on {sorted(map(str, machines))}; this call runs on "
              f"{machine()}", flush=True)
    done = {row_key(r) for r in rows}
    todo = [p for p in plan if p not in done]
    print(f"[bench] {len(plan) - len(todo)} of {len(plan)} rows already in out=, {len(todo)} to run", flush=True)
    if todo:
        data = build_data(base)
        space = build_space(base, data)
        for budget in budgets:  # fail before any training when the space cannot meet a budget
            space.check_budget(budget)
    shared = {"data": base["data"]["name"], "train_epochs": base["train"]["epochs"], "seeds": seeds,
              "overrides": overrides, "settings": settings}

    for budget, name, index in todo:
        label = f"{format_flops_m(budget)} {name} {'arch' if name == RANDOM else 'seed'} {index}"
        if name == RANDOM:
            run_overrides = [*common, f"constraints.flops={budget}"]
            cfg = configure(run_overrides)
            arch, net_space = space.sample(seed=index, max_flops=budget), space
            row: dict[str, Any] = {"strategy": RANDOM, "random_index": index, "search_seed": None,
                                   "search_seconds": None, "peak_rss_mb": None, "rss_before_mb": None,
                                   "derivation": None, "strategy_overrides": []}
        else:
            run_overrides = [*per_name[name], f"constraints.flops={budget}", f"seed={index}"]
            cfg = configure(run_overrides)
            print(f"[bench] {label}: searching ...", flush=True)
            gc.collect()
            with peak_resident() as memory:
                s = search(cfg, data)
            result, arch, net_space = s.result, s.result.arch, s.space
            peak = "-" if memory.peak_mb is None else f"{memory.peak_mb:.0f} MB peak RSS"
            print(f"[bench] {label}: {s.seconds:.0f} s, {result.flops / 1e6:.2f}M MACs, {peak}", flush=True)
            row = {"strategy": name, "search_seed": index, "search_seconds": s.seconds,
                   "peak_rss_mb": memory.peak_mb, "rss_before_mb": memory.before_mb,
                   "derivation": result.metrics.get("derivation"), "strategy_overrides": strategy_overrides(name),
                   "search_epochs": cfg["search"].get("epochs"), "warmup_epochs": cfg["search"].get("warmup_epochs"),
                   "search_train_samples": cfg["search"].get("train_samples"),
                   "search_metrics": {k: v for k, v in result.metrics.items()
                                      if isinstance(v, (str, int, float, bool)) or v is None},
                   "stages": [{k: getattr(h, k) for k in ("num_classes", "alive_per_layer", "seconds",
                                                          "val_accuracy")}
                              for h in result.history if isinstance(h, StageRecord)]}
        flops = net_space.flops(arch)
        row.update(run_overrides=run_overrides, budget_label=format_flops_m(budget), flops_budget=budget, flops=flops, flops_used=flops / budget,
                   params=net_space.params(arch), arch=arch, space=net_space.name,
                   **retrain(cfg, net_space, arch, data, seeds, label), **shared, machine=machine())
        rows.append(row)
        write_rows(out, rows)
        print(f"[bench] {label}: {100 * row['test_accuracy']:.2f} +- {100 * row['test_accuracy_std']:.2f} % test",
              flush=True)
    print(format_search_table(rows))
    if paired_differences(rows):
        print()
        print(format_paired_table(rows))
    return rows


def percentile(value: float, population: list[float]) -> float | None:
    """The percentage of ``population`` below ``value``, ties counting half; None for an empty population."""
    if not population:
        return None
    below = sum(p < value for p in population)
    ties = sum(p == value for p in population)
    return 100 * (below + ties / 2) / len(population)


def format_search_table(rows: list[dict[str, Any]]) -> str:
    """The README table of ``bench search`` rows, built from the rows alone: per budget, per strategy.

    Test accuracy: the mean over search seeds of each network's retrained mean +- the std over every
    (search seed, retraining seed) accuracy; FLOPs: mean found, and its share of the budget; search
    time: mean, and relative to dnas's at that budget; peak RSS: the largest over the seeds; the
    percentile of the strategy's mean among the random architectures' means (and of each seed's
    network, in brackets). Then a line per budget for the random distribution: the mean +- std of
    its architectures' means, the best, and how many. Rows of the earlier single-budget format (no
    seeds) count as search seed 0.
    """
    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    def mean(values: list[Any]) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.mean(values) if values else None

    table = []
    for budget in sorted({r.get("flops_budget") for r in rows}, key=lambda b: (b is None, b or 0)):
        at = [r for r in rows if r.get("flops_budget") == budget]
        label = "-" if budget is None else format_flops_m(budget)
        randoms = [r["test_accuracy"] for r in at if r["strategy"] == RANDOM]
        names = list(dict.fromkeys(r["strategy"] for r in at if r["strategy"] != RANDOM))
        groups = {n: sorted((r for r in at if r["strategy"] == n), key=lambda r: r.get("search_seed") or 0)
                  for n in names}
        ref = mean([r["search_seconds"] for r in groups.get("dnas", [])])
        for n in names:
            group = groups[n]
            means = [r["test_accuracy"] for r in group]
            pooled = [a for r in group for a in r.get("test_accuracies", [r["test_accuracy"]])]
            flops = mean([r["flops"] for r in group])
            seconds = mean([r["search_seconds"] for r in group])
            peaks = [r["peak_rss_mb"] for r in group if r.get("peak_rss_mb") is not None]
            pct = percentile(statistics.mean(means), randoms)
            each = [percentile(m, randoms) for m in means]
            table.append([
                label, n, str(len(group)),
                f"{100 * statistics.mean(means):.2f} +- {100 * (statistics.stdev(pooled) if len(pooled) > 1 else 0):.2f}",
                f"{flops / 1e6:.2f}", "-" if budget is None else f"{100 * flops / budget:.0f} %",
                fmt(seconds, ".0f"), f"{seconds / ref:.2f}x" if ref and seconds is not None else "-",
                f"{max(peaks):.0f}" if peaks else "-",
                "-" if pct is None else f"{pct:.0f}" + (f" ({', '.join(f'{p:.0f}' for p in each)})"
                                                        if len(each) > 1 else "")])
        if randoms:
            flops = mean([r["flops"] for r in at if r["strategy"] == RANDOM])
            spread = statistics.stdev(randoms) if len(randoms) > 1 else 0.0
            table.append([label, "random distribution", f"{len(randoms)} archs",
                          f"{100 * statistics.mean(randoms):.2f} +- {100 * spread:.2f}, best {100 * max(randoms):.2f}",
                          f"{flops / 1e6:.2f}", "-" if budget is None else f"{100 * flops / budget:.0f} %",
                          "-", "-", "-", "-"])
    return markdown_table(
        ["budget", "strategy", "search seeds", "test accuracy (%) mean +- std", "FLOPs (M)", "of budget",
         "search time (s)", "vs dnas", "peak RSS (MB)", "percentile among random: mean (each seed)"],
        "llrrrrrrrr", table)


def paired_differences(rows: list[dict[str, Any]], reference: str = "danas") -> list[dict[str, Any]]:
    """Per budget and strategy: ``reference`` minus that strategy's test accuracy, paired by search seed.

    Seed ``s`` of both searched with the same data split and initialisation seed, so their difference
    cancels what the seed decides for both; a seedless strategy (``hand``) pairs with every seed. The
    mean difference, its standard error (std of the differences / sqrt(n); None with one pair), n and
    the seeds are returned, and a t-like ratio mean / SE: above about 2 the difference is larger than
    the seed noise.
    """
    out = []
    for budget in sorted({r.get("flops_budget") for r in rows}, key=lambda b: (b is None, b or 0)):
        at = [r for r in rows if r.get("flops_budget") == budget and r["strategy"] != RANDOM]
        ref = {r.get("search_seed") or 0: r["test_accuracy"] for r in at if r["strategy"] == reference}
        if not ref:
            continue
        for name in dict.fromkeys(r["strategy"] for r in at if r["strategy"] != reference):
            other = {r.get("search_seed") or 0: r["test_accuracy"] for r in at if r["strategy"] == name}
            if name in SEEDLESS and other:
                other = {s: next(iter(other.values())) for s in ref}
            seeds = sorted(set(ref) & set(other))
            if not seeds:
                continue
            diffs = [ref[s] - other[s] for s in seeds]
            mean = statistics.mean(diffs)
            se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
            out.append({"flops_budget": budget, "reference": reference, "strategy": name, "pairs": len(diffs),
                        "seeds": seeds, "mean_difference": mean, "standard_error": se,
                        "ratio": mean / se if se else None})
    return out


def format_paired_table(rows: list[dict[str, Any]], reference: str = "danas") -> str:
    """The paired differences (``paired_differences``) as a Markdown table, in accuracy points."""
    pairs = paired_differences(rows, reference)
    return markdown_table(
        ["budget", "difference", "pairs (search seeds)", "mean (points)", "standard error", "mean / SE"], "llrrrr",
        [[format_flops_m(p["flops_budget"]) if p["flops_budget"] else "-", f"{reference} - {p['strategy']}",
          str(p["pairs"]), f"{100 * p['mean_difference']:+.2f}",
          "-" if p["standard_error"] is None else f"{100 * p['standard_error']:.2f}",
          "-" if p["ratio"] is None else f"{p['ratio']:+.1f}"] for p in pairs])


def format_legacy_search_table(rows: list[dict[str, Any]]) -> str:
    """The earlier single-budget table (one search per strategy), as the README shows for docs/bench/search_demo_7M.json."""
    ref = next((r["search_seconds"] for r in rows if r["strategy"] == "dnas"), None)
    return markdown_table(
        ["strategy", "search time (s)", "vs dnas", "test accuracy (%) mean +- std", "FLOPs (M)", "params (M)"],
        "lrrrrr",
        [[r["strategy"], f"{r['search_seconds']:.0f}", f"{r['search_seconds'] / ref:.2f}x" if ref else "-",
          f"{100 * r['test_accuracy']:.2f} +- {100 * r['test_accuracy_std']:.2f}", f"{r['flops'] / 1e6:.2f}",
          f"{r['params'] / 1e6:.3f}"] for r in rows])
