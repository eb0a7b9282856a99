"""``xsearch bench blocks``: what each block family brings, on the same data, budgets and retraining recipe."""

from __future__ import annotations

import time
from typing import Any

import torch

from xsearch.config import build_data, build_space, parse_count
from xsearch.core.errors import UserError

from ._harness import (
    configure,
    format_flops_m,
    machine,
    markdown_table,
    output_path,
    refuse,
    retrain,
    retraining_seeds,
    search,
    write_rows,
)

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
    refuse(overrides, ("space", "constraints.flops"),
           "bench blocks runs every space in bench.blocks_spaces at every budget in bench.blocks_budgets; "
           "set those instead of space= or constraints.flops=")
    base = configure(overrides)
    bench = base["bench"]
    names = list(bench["blocks_spaces"])
    unknown = [n for n in names if n not in BLOCK_SPACES]
    if unknown:
        raise UserError(f"bench.blocks_spaces: unknown {unknown}; valid: {list(BLOCK_SPACES)}")
    budgets = [parse_count(b, "bench.blocks_budgets") for b in bench["blocks_budgets"]]
    seeds = retraining_seeds(base)
    data = build_data(base)
    spaces = [build_space(configure(overrides, *BLOCK_SPACES[name]), data) for name in names]
    for budget in budgets:  # fail before any training when a space cannot meet a budget
        for space in spaces:
            space.check_budget(budget)
    out = output_path(base)
    rows: list[dict[str, Any]] = []

    def add_row(cfg: dict[str, Any], space: Any, arch: dict[str, str], row: dict[str, Any]) -> None:
        label = f"{row['budget_label']} {row['network']}"
        row.update(retrain(cfg, space, arch, data, seeds, label))
        torch.manual_seed(0)  # the same input batch for every throughput measurement
        row.update(flops=space.flops(arch), params=space.params(arch), arch=arch,
                   space=space.name, space_kwargs=space.space_kwargs,
                   images_per_second=cpu_throughput(space.build(arch), space.input_shape,
                                                    rounds=base["bench"]["throughput_rounds"]),
                   train_epochs=cfg["train"]["epochs"], seeds=seeds, data=cfg["data"]["name"],
                   machine=machine(), overrides=overrides)
        rows.append(row)
        write_rows(out, rows)
        print(f"[bench] {label}: {100 * row['test_accuracy']:.2f} % test, "
              f"{row['flops'] / 1e6:.2f}M MACs, {row['images_per_second']:.0f} img/s", flush=True)

    for budget in budgets:
        label = format_flops_m(budget)
        found: dict[str, dict[str, str]] = {}
        for name in names:
            cfg = configure(overrides, *BLOCK_SPACES[name], f"constraints.flops={budget}")
            print(f"[bench] {label} {name}: searching with {cfg['strategy']['name']} ...", flush=True)
            s = search(cfg, data)
            found[name] = s.result.arch
            add_row(cfg, s.space, s.result.arch, {"flops_budget": budget, "budget_label": label,
                                                  "network": f"{name} (found)", "search_seconds": s.seconds,
                                                  "strategy": cfg["strategy"]["name"]})
        if "mbv3" not in found:
            continue
        for variant in FIXED_VARIANTS:
            extra = ["space.act=relu"] if variant == "ReLU" else ["space.dynamic=true"]
            cfg = configure(overrides, *BLOCK_SPACES["mbv3"], *extra)
            arch = found["mbv3"] if variant == "ReLU" else fixed_variant(found["mbv3"], variant)
            add_row(cfg, build_space(cfg, data), arch, {"flops_budget": budget, "budget_label": label,
                                                        "network": f"mbv3 (found), {variant}", "search_seconds": None})
    print(format_blocks_table(rows))
    return rows


def format_blocks_table(rows: list[dict[str, Any]]) -> str:
    """The README table of ``bench blocks`` rows (also printed by ``bench throughput``)."""
    body = []
    for r in rows:
        std = f" +- {100 * r['test_accuracy_std']:.2f}" if r["seeds"] > 1 else ""
        body.append([r["budget_label"], r["network"], "-" if r.get("search_seconds") is None else
                     f"{r['search_seconds']:.0f}", f"{100 * r['test_accuracy']:.2f}{std}", f"{r['flops'] / 1e6:.2f}",
                     f"{r['params'] / 1e3:.1f}", f"{r['images_per_second']:.0f}"])
    return markdown_table(["budget", "network", "search (s)", "test accuracy (%)", "FLOPs (M)", "params (K)",
                           "CPU img/s (1 thread)"], "llrrrrr", body)
