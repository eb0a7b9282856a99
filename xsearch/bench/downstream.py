"""``xsearch bench downstream``: found backbones and searched DyHead heads on detection, masks and keypoints.

Two parts, on COCO-format data (the built-in fashion-coco unless ``data.root=DIR`` names another):

1. **Backbones** (``mbv3``), found on Fashion-MNIST and rebuilt for the task's 128x128 RGB canvases,
   trained in every task of ``bench.downstream_tasks`` with ``evaluator=detection`` (FCOS),
   ``segmentation`` (Mask R-CNN), ``keypoints`` (Keypoint R-CNN) and ``semantic_segmentation``.
   Either, with ``bench.downstream_searches=[FILE, ...]`` (the rows of earlier ``xsearch bench
   search`` calls, one FLOPs budget each), the networks ``danas`` and ``spos`` found there (search
   seed 0), the first uniformly random network and the hand-designed one, per budget; or, without,
   the network ``danas`` finds under ``bench.downstream_budget`` (a classification search,
   ``search.*`` overrides apply to it; or the one in ``bench.downstream_arch``, an ``arch.json``), a
   uniformly random network and the hand-designed one under the same budget.
2. **Heads** (``space=dyhead``, FCOS on a fixed pyramid backbone; off with
   ``bench.downstream_heads=false``): no DyHead (every block skipped), the fixed head of
   ``space.num_blocks`` full blocks (all three attentions), and the head ``danas`` finds on the
   detection task under ``bench.head_budget`` (``auto``: halfway between the two).

Every network trains with retraining seeds 0..``bench.seeds``-1 (``train.*`` overrides set the
downstream recipe). Rows are appended to ``out=`` after each training and a later call resumes.
The table gives each network's mean ± standard deviation over seeds, and the differences between
``danas`` and each other backbone paired by training seed, with their standard error.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from xsearch.config import build_data, build_evaluator, build_space
from xsearch.core.errors import UserError
from xsearch.search_spaces import get_space

from ._harness import (
    configure,
    machine,
    markdown_table,
    output_path,
    read_rows,
    refuse,
    retraining_seeds,
    search,
    write_rows,
)

SOURCES = ("danas", "spos", "random", "hand")
# the strategy names of `bench search` rows each backbone comes from (bench.downstream_searches)
SEARCH_ROWS = {"danas": ("danas",), "spos": ("spos",), "random": ("random_distribution", "random"), "hand": ("hand",)}
HEADS = ("none", "fixed", "danas")
TASK_METRIC = {"detection": "box_ap", "segmentation": "mask_ap", "keypoints": "keypoint_ap",
               "semantic_segmentation": "miou"}
# the DyHead search's recipe (detection batches are small and few); bench.head_search overrides it
HEAD_SEARCH = ["search.batch_size=16", "search.train_samples=1000", "search.val_samples=200",
               "search.warmup_epochs=2", "search.epochs=3", "search.derive_trials=8"]


def _split(overrides: list[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """(search.*, train.* and data.*, space.* (the dyhead space), the rest)."""
    key = [o.split("=", 1)[0] for o in overrides]

    def under(*prefixes: str) -> list[str]:
        return [o for o, k in zip(overrides, key) if k.startswith(prefixes)]

    rest = [o for o, k in zip(overrides, key) if not k.startswith(("search.", "train.", "data.", "space."))]
    return under("search."), under("train.", "data."), under("space."), rest


def _coco_root(cfg: dict[str, Any], train_o: list[str]) -> tuple[str, list[str]]:
    """The data.root of ``train_o``, or the built-in fashion-coco under runs_root (written once)."""
    given = [o for o in train_o if o.startswith("data.root=")]
    if given:
        return given[-1].split("=", 1)[1], train_o
    from xsearch.datasets import write_fashion_coco

    root = Path(cfg["runs_root"]) / "fashion-coco"
    if not (root / "annotations" / "instances_val.json").exists():
        print(f"[bench] writing the built-in fashion-coco to {root} ...", flush=True)
        write_fashion_coco(root, show_progress=cfg["progress"])
    return str(root), [*train_o, f"data.root={root}"]


def _downstream(task: str, common: list[str], train_o: list[str]) -> dict[str, Any]:
    return configure([*common, f"evaluator={task}", "data=coco", *train_o])


def bench_downstream(overrides: list[str]) -> list[dict[str, Any]]:
    """Rows of box/mask/keypoint AP and FLOPs for found, random and hand backbones and for DyHead heads."""
    refuse(overrides, ("strategy", "evaluator", "data", "constraints.flops", "seed", "space"),  # space.*: the dyhead's
           "bench downstream chooses the spaces, strategies, evaluators and budgets itself; set bench.downstream_budget, "
           "bench.head_budget, bench.downstream_tasks, train.* (the downstream recipe) and search.* (the backbone "
           "search) instead")
    search_o, train_o, space_o, common = _split(overrides)
    base = configure(common)
    bench = base["bench"]
    seeds = retraining_seeds(base)
    tasks = list(bench["downstream_tasks"])
    unknown = sorted(set(tasks) - set(TASK_METRIC))
    if unknown:
        raise UserError(f"bench.downstream_tasks: unknown {unknown}; valid: {sorted(TASK_METRIC)}")
    root, train_o = _coco_root(base, train_o)
    configs = {t: _downstream(t, common, train_o) for t in {*tasks, "detection"}}  # every setting checked first
    out = output_path(base)
    rows = read_rows(out)
    done = {(r["part"], r.get("budget"), r["source"], r["task"], r["seed"]) for r in rows}
    shared = {"machine": machine(), "overrides": overrides, "coco_root": root}

    def record(row: dict[str, Any]) -> None:
        rows.append({**row, **shared})
        write_rows(out, rows)
        metric = TASK_METRIC[row["task"]]
        print(f"[bench] {row['part']} {row['source']} {row['task']} seed {row['seed']}: {metric} "
              f"{100 * row[metric]:.2f}, {row['flops'] / 1e6:.1f}M MACs (dense), {row['train_seconds']:.0f} s",
              flush=True)

    def train(part: str, source: str, task: str, space: Any, arch: dict[str, str], extra: dict[str, Any]) -> None:
        cfg = configs[task]
        data = datasets.setdefault(task, build_data(cfg))
        evaluator = build_evaluator(cfg)
        evaluator.check(space)
        for seed in range(seeds):
            if (part, extra.get("budget"), source, task, seed) in done:
                continue
            metrics = evaluator.evaluate(space, arch, data, seed=seed)
            record({"part": part, "source": source, "task": task, "seed": seed, "arch": arch, "space": space.name,
                    **{k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "seed"}, **extra})

    datasets: dict[str, Any] = {}
    # 1. backbones: found on Fashion-MNIST at the classification size, trained at the task's size
    small = build_space(configure([*common, "space=mbv3", "evaluator=classification"]), None)
    searched = [_searched_backbones(Path(f), small) for f in bench["downstream_searches"]]  # every file checked first
    for budget, archs in searched if tasks else ():
        for source, (arch, extra) in archs.items():
            for task in tasks:
                data = datasets.setdefault(task, build_data(configs[task]))
                c, h, _ = data.input_shape
                space = get_space("mbv3", **{**small.space_kwargs, "num_classes": data.num_classes, "in_chans": c,
                                            "image_size": h})
                train("backbone", source, task, space, arch,
                      {**extra, "budget": budget, "backbone_flops": space.feature_flops(arch)})
    if tasks and not searched:
        budget = bench["downstream_budget"]
        cls_cfg = configure([*common, *search_o, "space=mbv3", "strategy=danas", "evaluator=classification",
                             f"constraints.flops={budget}"])
        small = build_space(cls_cfg, None)  # mbv3 at Fashion-MNIST's size
        budget_macs = cls_cfg["constraints"]["flops"]
        archs: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
        found = [r for r in rows if r["part"] == "backbone" and r["source"] == "danas" and r.get("budget") == budget]
        if found:
            archs["danas"] = (found[0]["arch"], {k: found[0].get(k) for k in ("search_seconds", "arch_from")})
        elif bench["downstream_arch"]:  # a network danas found before (an arch.json), instead of searching again
            from xsearch.records import load_arch

            found_space, arch = load_arch(bench["downstream_arch"])
            if found_space.name != "mbv3" or found_space.space_kwargs != small.space_kwargs:
                raise UserError(f"bench.downstream_arch={bench['downstream_arch']} is not an mbv3 network at "
                                f"Fashion-MNIST's size ({found_space.name}, {found_space.space_kwargs})")
            archs["danas"] = (arch, {"search_seconds": None, "arch_from": bench["downstream_arch"]})
        elif _needs_search(done, budget, tasks, seeds):
            print(f"[bench] backbone: danas on Fashion-MNIST under {budget} ...", flush=True)
            cls_data = build_data(cls_cfg)
            s = search(cls_cfg, cls_data)
            small = s.space
            archs["danas"] = (s.result.arch, {"search_seconds": s.seconds, "arch_from": "searched"})
        archs["random"] = (small.sample(seed=0, max_flops=budget_macs), {})
        archs["hand"] = (small.hand_designed(budget_macs), {})
        for source in SOURCES:
            if source not in archs:
                continue
            arch, extra = archs[source]
            extra = {**extra, "classification_flops": small.flops(arch), "budget": budget}
            for task in tasks:
                data = datasets.setdefault(task, build_data(configs[task]))
                c, h, _ = data.input_shape
                space = get_space("mbv3", **{**small.space_kwargs, "num_classes": data.num_classes, "in_chans": c,
                                            "image_size": h})
                train("backbone", source, task, space, arch, {**extra, "backbone_flops": space.feature_flops(arch)})
    # 2. heads: DyHead blocks on the dyhead space's fixed backbone, detection
    if not bench["downstream_heads"]:
        print(format_downstream_table(rows))
        return rows
    data = datasets.setdefault("detection", build_data(configs["detection"]))
    head_cfg = configure([*common, "space=dyhead", "space.channels=32", *space_o, "strategy=danas",
                          "evaluator=detection", "data=coco", *HEAD_SEARCH, *bench["head_search"], *train_o])
    space = build_space(head_cfg, data)
    none = {c.label: "skip" for c in space.choices}
    fixed = {c.label: "scale_spatial_task" for c in space.choices}
    head_budget = bench["head_budget"]
    budget_macs = ((space.flops(none) + space.flops(fixed)) // 2 if head_budget in (None, "auto")
                   else configure([*common, f"constraints.flops={head_budget}"])["constraints"]["flops"])
    heads: dict[str, tuple[dict[str, str], dict[str, Any]]] = {"none": (none, {}), "fixed": (fixed, {})}
    found = [r for r in rows if r["part"] == "head" and r["source"] == "danas"]
    if found:
        heads["danas"] = (found[0]["arch"], {k: found[0][k] for k in ("search_seconds", "head_budget")})
    elif any(("head", None, "danas", "detection", s) not in done for s in range(seeds)):
        print(f"[bench] head: danas on space=dyhead (detection) under {budget_macs / 1e6:.2f}M ...", flush=True)
        t0 = time.time()
        s = search({**head_cfg, "constraints": {**head_cfg["constraints"], "flops": budget_macs}}, data)
        heads["danas"] = (s.result.arch, {"search_seconds": time.time() - t0, "head_budget": budget_macs})
    for source in HEADS:
        if source in heads:
            arch, extra = heads[source]
            train("head", source, "detection", space, arch, {**extra, "space_flops": space.flops(arch)})
    print(format_downstream_table(rows))
    return rows


def _needs_search(done: set, budget: str, tasks: list[str], seeds: int) -> bool:
    return any(("backbone", budget, "danas", t, s) not in done for t in tasks for s in range(seeds))


def _searched_backbones(path: Path, small: Any) -> tuple[str, dict[str, tuple[dict[str, str], dict[str, Any]]]]:
    """(budget label, {source: (arch, row facts)}) from the rows of a ``bench search`` call (``out=`` of it).

    ``danas`` and ``spos``: the network of search seed 0 (else the lowest seed); ``random``: the first
    uniformly random network; ``hand``: the hand design (``small.hand_designed`` under the budget when the
    file has no hand row). Each must be a network of ``small`` (mbv3 at Fashion-MNIST's size) whose FLOPs
    match the row's, so a file from another space or size is refused.
    """
    if not path.is_file():
        raise UserError(f"bench.downstream_searches: {path} does not exist; give the out= file of an "
                        "'xsearch bench search' call (e.g. docs/bench/search_5M.json)")
    rows = [r for r in read_rows(path) if isinstance(r, dict) and r.get("arch")]
    budgets = {r.get("flops_budget") for r in rows}
    if len(budgets) != 1 or None in budgets:
        raise UserError(f"bench.downstream_searches: {path} holds no 'xsearch bench search' rows of one FLOPs budget "
                        f"(budgets found: {sorted(map(str, budgets))})")
    macs = int(budgets.pop())
    archs: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
    for source, strategies in SEARCH_ROWS.items():
        candidates = [r for r in rows if r.get("strategy") in strategies]  # random: the first, in the file's order
        if source != "random":
            candidates.sort(key=lambda r: r.get("search_seed") if r.get("search_seed") is not None else -1)
        if not candidates and source == "hand":
            arch = small.hand_designed(macs)
            archs[source] = (arch, {"arch_from": "hand_designed", "classification_flops": small.flops(arch)})
            continue
        if not candidates:
            print(f"[bench] {path}: no {' or '.join(strategies)} row, so no {source} backbone at this budget", flush=True)
            continue
        row, strategy = candidates[0], candidates[0]["strategy"]
        try:
            arch = small.validate(row["arch"])
        except (UserError, ValueError, KeyError) as exc:
            raise UserError(f"bench.downstream_searches: the {strategy} network in {path} is not an mbv3 network at "
                            f"Fashion-MNIST's size ({exc})") from None
        if row.get("flops") is not None and small.flops(arch) != int(row["flops"]):
            raise UserError(f"bench.downstream_searches: the {strategy} network in {path} has {row['flops']} MACs "
                            f"there but {small.flops(arch)} in mbv3 at Fashion-MNIST's size: another space setting")
        archs[source] = (arch, {"arch_from": str(path), "search_seed": row.get("search_seed"),
                                "classification_flops": small.flops(arch),
                                "classification_accuracy": row.get("test_accuracy")})
    return f"{macs / 1e6:g}M", archs


def format_downstream_table(rows: list[dict[str, Any]]) -> str:
    """The README's tables: mean ± std over seeds of each AP (%), FLOPs and training time; then ``danas`` minus
    each other backbone, paired by training seed (same budget, task and seed), mean ± standard error."""
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["part"], str(r.get("budget") or ""), r["source"], r["task"]), []).append(r)

    def stat(values: list[float]) -> str:
        if not values:
            return "-"
        mean = 100 * statistics.mean(values)
        return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"

    order = {s: i for i, s in enumerate(dict.fromkeys((*SOURCES, *HEADS)))}  # danas is in both: its first place
    table = []
    for (part, budget, source, task), rs in sorted(groups.items(),
                                                   key=lambda kv: (kv[0][0], kv[0][3], kv[0][1], order[kv[0][2]])):
        metric = TASK_METRIC[task]
        table.append([part, budget, source, task, str(len(rs)), stat([r[metric] for r in rs]),
                      stat([r[f"{metric}50"] for r in rs if f"{metric}50" in r]),
                      stat([r["box_ap"] for r in rs if "box_ap" in r]) if metric != "box_ap" else "",
                      f"{rs[0]['flops'] / 1e6:.1f}M",
                      f"{rs[0].get('backbone_flops', rs[0].get('space_flops', 0)) / 1e6:.1f}M",
                      f"{statistics.mean(r['train_seconds'] for r in rs):.0f}"])
    lines = [markdown_table(["part", "budget", "network", "task", "seeds", "metric (%)", "at IoU 0.5 (%)",
                             "box AP (%)", "dense MACs", "backbone / space MACs", "train s"], "llllrrrrrrr", table)]
    paired = paired_differences(rows)
    if paired:
        lines += ["", markdown_table(["budget", "task", "difference", "pairs", "mean ± SE (points)", "SE / seed std"],
                                     "lllrrr", paired)]
    return "\n".join(lines)


def paired_differences(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of ``danas − X`` (X: every other backbone) per budget and task, paired by training seed: the mean
    difference of the task's metric in points with its standard error (std of the differences / sqrt(pairs)), and
    how that SE compares with the seeds' own spread (the mean of the two networks' seed stds)."""
    value: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in rows:
        if r["part"] == "backbone":
            value.setdefault((str(r.get("budget") or ""), r["task"], r["source"]), {})[r["seed"]] = \
                100 * r[TASK_METRIC[r["task"]]]
    out = []
    for budget, task in sorted({(b, t) for b, t, _ in value}, key=lambda bt: (bt[1], bt[0])):
        base = value.get((budget, task, "danas"), {})
        for other in SOURCES[1:]:
            theirs = value.get((budget, task, other), {})
            seeds = sorted(set(base) & set(theirs))
            if len(seeds) < 2:
                continue
            diffs = [base[s] - theirs[s] for s in seeds]
            se = statistics.stdev(diffs) / len(diffs) ** 0.5
            spread = (statistics.stdev(base[s] for s in seeds) + statistics.stdev(theirs[s] for s in seeds)) / 2
            out.append([budget, task, f"danas − {other}", str(len(seeds)),
                        f"{statistics.mean(diffs):+.2f} ± {se:.2f}", f"{se:.2f} / {spread:.2f}"])
    return out
