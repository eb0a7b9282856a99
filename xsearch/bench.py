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

from .config import compose, parse_count, validate
from .core.errors import UserError
from .config import build_data, build_evaluator, build_space, build_strategy
from .core.io import write_json
from xsearch.supernets import Supernet


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
        result = build_strategy(cfg).search(space, build_evaluator(cfg), data, Constraints(cfg["constraints"]["flops"]),
                                            None)
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


# --- xsearch bench strategies: multi-trial strategies against a benchmark table ------------------

def bench_strategies(overrides: list[str]) -> list[dict[str, Any]]:
    """Regret of each multi-trial strategy on the table, per FLOPs budget, over ``bench.table_seeds`` seeds.

    Regret is the table's best mean accuracy under the budget minus the best mean accuracy the
    strategy found, in points, after ``bench.queries`` queries; ``queries_to_0.2`` is the first
    query at which the regret is at most 0.2 points (missing when never within 100 queries).
    """
    from xsearch.evaluators import TabularEvaluator
    from xsearch.strategies import STRATEGIES, Constraints

    if any(o.split("=", 1)[0] in ("strategy", "evaluator", "data") for o in overrides):
        raise UserError("bench strategies runs bench.multi_trial on a benchmark table; set evaluator.table=PATH, "
                        "not strategy=, evaluator= or data=")
    defaults = [] if any(o.startswith("space=") for o in overrides) else ["space=nasbench_macro"]
    cfg = validate(compose(defaults + ["evaluator=tabular", "progress=false"] + overrides))
    table_path = cfg["evaluator"].get("table")
    if not table_path:
        raise UserError("bench strategies needs the table: evaluator.table=PATH "
                        "(e.g. ../shared/benchmarks/nas-bench-macro/nas-bench-macro_cifar10.json)")
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
    rows: list[dict[str, Any]] = []
    out = Path(cfg["out"]) if cfg.get("out") else None
    defaults = {name: _strategy_defaults(name) for name in names}
    for budget in budgets:
        space.check_budget(budget)
        best_key, best_acc = evaluator.best_under(space, budget)
        for name in names:
            regrets: dict[int, list[float]] = {q: [] for q in checkpoints}
            reach: list[int | None] = []
            t0 = time.time()
            for seed in range(seeds):
                knobs = {**defaults[name], "max_trials": max(checkpoints), "seed": seed,
                         "show_progress": False}
                strategy = _construct_strategy(name, knobs)
                result = strategy.search(space, evaluator, None, Constraints(budget), None)
                trace = [100 * h["best_score"] for h in result.history]
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
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
                write_json(out, rows)
    print(format_strategies_table(rows, checkpoints))
    return rows


def format_flops_m(value: int) -> str:
    return f"{value / 1e6:g}M"


def _strategy_defaults(name: str) -> dict[str, Any]:
    """The strategy's knobs from its config file (``search:`` section)."""
    cfg = compose([f"strategy={name}"])
    return dict(cfg.get("search", {}))


def _construct_strategy(name: str, knobs: dict[str, Any]) -> Any:
    from xsearch.strategies import STRATEGIES

    from .config import _construct

    return _construct(STRATEGIES.get(name), "strategy", name, knobs, {})


def format_strategies_table(rows: list[dict[str, Any]], checkpoints: list[int]) -> str:
    head = " | ".join(f"regret@{q} (pts)" for q in checkpoints)
    lines = [f"| budget | best in table | strategy | {head} | within 0.2: seeds | median queries |",
             "|---|---:|---|" + "---:|" * len(checkpoints) + "---:|---:|"]
    for r in rows:
        cells = " | ".join(f"{r[f'regret@{q}']:.2f} +- {r[f'regret@{q}_std']:.2f}" for q in checkpoints)
        median = r["queries_to_0.2_median"]
        lines.append(f"| {format_flops_m(r['flops_budget'])} | {r['table_best']:.2f} | {r['strategy']} | {cells} | "
                     f"{r['reached_0.2']}/{r['seeds']} | {'-' if median is None else f'{median:g}'} |")
    return "\n".join(lines)


# --- xsearch bench ranking: do inherited weights rank architectures like stand-alone training? ----

def bench_ranking(overrides: list[str]) -> dict[str, Any]:
    """Kendall tau between inherited-weight accuracy (trained danas and spos supernets) and stand-alone accuracy.

    Both supernets train with their strategy's configured budget on the same data; then
    ``bench.ranking_archs`` architectures, drawn under the budget from the candidates that
    survived DA-NAS's pruning (so both supernets can score them), are scored with inherited weights
    (batch norm recalibrated) on held-out training images, and trained stand-alone
    (``bench.ranking_epochs`` epochs on ``bench.ranking_train_samples`` images) and scored on
    held-out training images. The test split is not used.
    """
    import random
    import tempfile

    from scipy.stats import kendalltau, spearmanr

    from xsearch.core.data import split_for_search, stratified_head
    from xsearch.evaluators import ClassificationEvaluator, InheritedWeightsEvaluator
    from xsearch.strategies import Constraints
    from xsearch.core.checkpoint import load_checkpoint

    if any(o.split("=", 1)[0] == "strategy" for o in overrides):
        raise UserError("bench ranking trains both the danas and the spos supernet; drop strategy=")
    base = validate(compose(overrides))
    bench = base["bench"]
    n_archs = int(bench["ranking_archs"])
    if n_archs < 3:
        raise UserError(f"bench.ranking_archs must be at least 3 for a rank correlation, got {n_archs}")
    data = build_data(base)
    budget = base["constraints"]["flops"]
    supernets: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("danas", "spos"):
            cfg = validate(compose(overrides + [f"strategy={name}", "search.max_trials=1"] if name == "spos"
                                   else overrides + [f"strategy={name}"]))
            space = build_space(cfg, data)
            space.check_budget(budget)
            ckpt = Path(tmp) / name / "search_checkpoint.pt"
            ckpt.parent.mkdir()
            print(f"[bench] training the {name} supernet ...", flush=True)
            t0 = time.time()
            strategy = build_strategy(cfg)
            strategy.search(space, None, data, Constraints(budget), None, checkpoint=ckpt)
            seconds[name] = time.time() - t0
            net = Supernet(space).to(strategy.device)
            net.load_state_dict(load_checkpoint(ckpt)["supernet"])
            supernets[name] = (net, cfg, strategy)
    danas_net = supernets["danas"][0]
    alive = danas_net.alive_options()
    rng = random.Random(base["seed"])
    archs: list[dict[str, str]] = []
    for _ in range(10_000):
        arch = {label: rng.choice(options) for label, options in alive.items()}
        if (budget is None or space.flops(arch) <= budget) and arch not in archs:
            archs.append(arch)
        if len(archs) == n_archs:
            break
    if len(archs) < 3:
        raise UserError("fewer than 3 distinct architectures of DA-NAS's surviving candidates fit the budget; "
                        "raise constraints.flops")
    rows = [{"arch": a, "flops": space.flops(a)} for a in archs]
    for name, (net, cfg, strategy) in supernets.items():
        w_idx, a_idx = split_for_search(data.train.targets, cfg["search"]["train_samples"], cfg["seed"])
        val_idx = stratified_head(a_idx, data.train.targets, 2000, cfg["seed"])
        scorer = InheritedWeightsEvaluator(net, w_idx, val_idx, cfg["search"]["batch_size"], 10, strategy.device)
        for row in rows:
            row[f"{name}_inherited"] = scorer.score(space, row["arch"], data, seed=base["seed"])["score"]
    standalone = ClassificationEvaluator(epochs=int(bench["ranking_epochs"]), batch_size=base["train"]["batch_size"],
                                         train_samples=int(bench["ranking_train_samples"]),
                                         device=base["device"], show_progress=base["progress"])
    for i, row in enumerate(rows):
        print(f"[bench] stand-alone training {i + 1}/{len(rows)} ({row['flops'] / 1e6:.2f}M MACs) ...", flush=True)
        row["standalone"] = standalone.score(space, row["arch"], data, seed=base["seed"])["score"]
    truth = [r["standalone"] for r in rows]
    summary: dict[str, Any] = {"archs": len(rows), "flops_budget": budget, "data": base["data"]["name"],
                               "standalone_epochs": standalone.epochs,
                               "standalone_train_samples": standalone.train_samples, "machine": machine(),
                               "overrides": overrides, "rows": rows}
    for name in supernets:
        scores = [r[f"{name}_inherited"] for r in rows]
        tau = kendalltau(scores, truth)
        summary[name] = {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
                         "spearman": float(spearmanr(scores, truth).statistic),
                         "supernet_seconds": seconds[name],
                         "inherited_mean": statistics.mean(scores)}
    if base.get("out"):
        Path(base["out"]).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(base["out"]), summary)
    print(format_ranking_table(summary))
    return summary


def format_ranking_table(summary: dict[str, Any]) -> str:
    lines = ["| supernet | training time (s) | mean inherited accuracy (%) | Kendall tau (p) | Spearman |",
             "|---|---:|---:|---:|---:|"]
    for name in ("danas", "spos"):
        s = summary[name]
        lines.append(f"| {name} | {s['supernet_seconds']:.0f} | {100 * s['inherited_mean']:.1f} | "
                     f"{s['kendall_tau']:.2f} ({s['kendall_p']:.2f}) | {s['spearman']:.2f} |")
    return "\n".join(lines)


# --- xsearch bench blocks: what each block family brings ----------------------------------------

BLOCK_SPACES = {"mbv3": ["space=mbv3"], "mbv3-dynamic": ["space=mbv3", "space.dynamic=true"],
                "micronet": ["space=micronet"], "focalnet": ["space=focalnet"]}
FIXED_VARIANTS = ("dynamic conv", "DyReLU", "ReLU")


@torch.no_grad()
def cpu_throughput(model: torch.nn.Module, input_shape: tuple[int, ...], batch_size: int = 64,
                   repeats: int = 20, rounds: int = 5) -> float:
    """Inference images per second on one CPU thread (eval mode), after two warm-up batches.

    The best of ``rounds`` timings of ``repeats`` batches: other work on the machine only slows a
    round down, so the best round is the closest to the network's own speed. One thread, because
    two-thread timings on the 2-core benchmark machine varied by up to 2x between identical runs
    while one-thread timings agreed within 5 %. Batches of 64: at 256, the activations of 28x28
    networks exceed glibc's largest reusable block and every batch pays page faults.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = model.cpu().eval()
        x = torch.randn(batch_size, *input_shape)
        for _ in range(2):
            model(x)
        best = 0.0
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(repeats):
                model(x)
            best = max(best, batch_size * repeats / (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(threads)
    return best


def bench_throughput(overrides: list[str]) -> list[dict[str, Any]]:
    """Re-measure ``images_per_second`` of every network in a ``bench blocks`` file (``out=FILE.json``) here.

    For comparing speed on another machine, or after a benchmark whose timings overlapped with
    other work; accuracy and FLOPs are left as they are.
    """
    import json

    from xsearch.search_spaces import get_space

    base = validate(compose(overrides))
    if not base.get("out") or not Path(base["out"]).is_file():
        raise UserError("bench throughput re-measures the rows of a bench blocks file: out=FILE.json (an existing file)")
    path = Path(base["out"])
    rows = json.loads(path.read_text())
    for row in rows:
        space = get_space(row["space"], **row["space_kwargs"])
        row["images_per_second"] = cpu_throughput(space.build(row["arch"]), space.input_shape)
        row["throughput_machine"] = machine()
        print(f"[bench] {row['budget_label']} {row['network']}: {row['images_per_second']:.0f} img/s", flush=True)
    write_json(path, rows)
    print(format_blocks_table(rows))
    return rows


def fixed_variant(arch: dict[str, str], variant: str) -> dict[str, str]:
    """The same network with every inverted residual made dynamic ('_dc') or DyReLU ('_dr'); SE is dropped."""
    from xsearch.search_spaces import SKIP
    from xsearch.search_spaces.mbv3 import option_name, parse_option

    suffix = {"dynamic conv": "dc", "DyReLU": "dr"}[variant]
    out = {}
    for label, option in arch.items():
        if option == SKIP:
            out[label] = option
        else:
            k, e, _ = parse_option(option)
            out[label] = option_name(k, e, suffix)
    return out


def bench_blocks(overrides: list[str]) -> list[dict[str, Any]]:
    """Block families on the same data, budgets and retraining recipe.

    For each FLOPs budget in ``bench.blocks_budgets``: each space in ``bench.blocks_spaces`` is
    searched with the configured strategy (default danas) under the budget and its found network
    retrained; then the network found in ``mbv3`` is retrained again with every block's
    convolutions made dynamic, with DyReLU, and with ReLU instead of h-swish (the same layers,
    kernels and expansions), so static and dynamic operators are compared on one fixed network.
    Rows: test accuracy (mean over ``bench.seeds``), FLOPs, parameters, CPU inference throughput.
    """
    from xsearch.strategies import Constraints

    if any(o.split("=", 1)[0] in ("space", "constraints.flops") for o in overrides):
        raise UserError("bench blocks runs every space in bench.blocks_spaces at every budget in bench.blocks_budgets; "
                        "set those instead of space= or constraints.flops=")
    base = validate(compose(overrides))
    bench = base["bench"]
    names = list(bench["blocks_spaces"])
    unknown = [n for n in names if n not in BLOCK_SPACES]
    if unknown:
        raise UserError(f"bench.blocks_spaces: unknown {unknown}; valid: {list(BLOCK_SPACES)}")
    budgets = [parse_count(b, "bench.blocks_budgets") for b in bench["blocks_budgets"]]
    seeds = int(bench["seeds"])
    data = build_data(base)
    configs = {name: validate(compose(overrides + BLOCK_SPACES[name])) for name in names}
    for budget in budgets:  # fail before any training when a space cannot meet a budget
        for cfg in configs.values():
            build_space(cfg, data).check_budget(budget)
    out = Path(base["out"]) if base.get("out") else None
    rows: list[dict[str, Any]] = []

    def retrain(cfg: dict[str, Any], space: Any, arch: dict[str, str], row: dict[str, Any]) -> None:
        evaluator = build_evaluator(cfg)
        accs = []
        for seed in range(seeds):
            print(f"[bench] {row['budget_label']} {row['network']}: retraining seed {seed + 1}/{seeds} ...", flush=True)
            accs.append(evaluator.evaluate(space, arch, data, seed=seed)["test_accuracy"])
        torch.manual_seed(0)
        row.update(test_accuracy=statistics.mean(accs), test_accuracy_std=statistics.stdev(accs) if seeds > 1 else 0.0,
                   test_accuracies=accs, flops=space.flops(arch), params=space.params(arch), arch=arch,
                   space=space.name, space_kwargs=space.space_kwargs,
                   images_per_second=cpu_throughput(space.build(arch), space.input_shape),
                   train_epochs=cfg["train"]["epochs"], seeds=seeds, data=cfg["data"]["name"],
                   machine=machine(), overrides=overrides)
        rows.append(row)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            write_json(out, rows)
        print(f"[bench] {row['budget_label']} {row['network']}: {100 * row['test_accuracy']:.2f} % test, "
              f"{row['flops'] / 1e6:.2f}M MACs, {row['images_per_second']:.0f} img/s", flush=True)

    for budget in budgets:
        label = format_flops_m(budget)
        found: dict[str, dict[str, str]] = {}
        for name in names:
            cfg = validate(compose(overrides + BLOCK_SPACES[name] + [f"constraints.flops={budget}"]))
            space = build_space(cfg, data)
            space.check_budget(budget)
            print(f"[bench] {label} {name}: searching with {cfg['strategy']['name']} ...", flush=True)
            t0 = time.time()
            result = build_strategy(cfg).search(space, build_evaluator(cfg), data, Constraints(budget), None)
            found[name] = result.arch
            retrain(cfg, space, result.arch, {"flops_budget": budget, "budget_label": label, "network": f"{name} (found)",
                                              "search_seconds": time.time() - t0,
                                              "strategy": cfg["strategy"]["name"]})
        if "mbv3" not in found:
            continue
        for variant in FIXED_VARIANTS:
            extra = ["space.act=relu"] if variant == "ReLU" else ["space.dynamic=true"]
            cfg = validate(compose(overrides + BLOCK_SPACES["mbv3"] + extra))
            space = build_space(cfg, data)
            arch = found["mbv3"] if variant == "ReLU" else fixed_variant(found["mbv3"], variant)
            retrain(cfg, space, arch, {"flops_budget": budget, "budget_label": label,
                                       "network": f"mbv3 (found), {variant}", "search_seconds": None})
    print(format_blocks_table(rows))
    return rows


def format_blocks_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| budget | network | search (s) | test accuracy (%) | FLOPs (M) | params (K) | CPU img/s (1 thread) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        search = "-" if r.get("search_seconds") is None else f"{r['search_seconds']:.0f}"
        std = f" +- {100 * r['test_accuracy_std']:.2f}" if r["seeds"] > 1 else ""
        lines.append(f"| {r['budget_label']} | {r['network']} | {search} | {100 * r['test_accuracy']:.2f}{std} | "
                     f"{r['flops'] / 1e6:.2f} | {r['params'] / 1e3:.1f} | {r['images_per_second']:.0f} |")
    return "\n".join(lines)


def bench_supernet(overrides: list[str]) -> dict[str, Any]:
    from .bench_supernet import bench_supernet as run

    return run(overrides)


BENCHMARKS = {"search": bench_search, "strategies": bench_strategies, "ranking": bench_ranking,
              "blocks": bench_blocks, "throughput": bench_throughput, "supernet": bench_supernet}
