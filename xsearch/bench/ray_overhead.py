"""``xsearch bench ray``: what running a search's queries as Ray Tune trials costs against running them in-process."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import torch

from xsearch.config import build_data
from xsearch.core.errors import UserError

from ._harness import configure, machine, markdown_table, output_path, refuse, search, write_rows

# a 12-query random search, each query a short but real stand-alone training on Fashion-MNIST (one pass over
# 4,000 images: train.epoch_images=null keeps the preset from making the epoch longer)
DEFAULTS = ["strategy=random", "search.max_trials=12", "evaluator=classification", "data=fashion_mnist",
            "space=mbv3", "constraints.flops=5M", "train.epochs=1", "train.train_samples=4000", "train.epoch_images=null",
            "train.val_samples=1000", "train.batch_size=128", "progress=false"]


def bench_ray(overrides: list[str]) -> list[dict[str, Any]]:
    """The same seeded multi-trial search in this process and under ``launcher=ray``, ``bench.ray_repeats`` times each.

    Ray runs one trial at a time (``ray.max_concurrent=1``, ``ray.cpus_per_trial`` CPUs; this
    process's torch gets as many threads), so the difference is Ray's overhead: starting the
    trial actor and its imports, shipping the evaluator and data, reporting back. Ray itself
    starts once per process, before the first ray search: its start is timed apart. Each row says
    whether the ray search's trials (architectures, order, scores) equal the in-process ones.
    """
    refuse(overrides, ("launcher", "ray.max_concurrent"), "bench ray runs every search both ways, one trial at a "
           "time; drop launcher= and ray.max_concurrent=")
    base = configure([*DEFAULTS, *overrides])
    repeats = int(base["bench"]["ray_repeats"])
    if repeats < 1:
        raise UserError(f"bench.ray_repeats must be at least 1, got {repeats}")
    threads = max(1, int(base["ray"]["cpus_per_trial"]))
    out = output_path(base)
    data = build_data(base)
    from xsearch.core.launch import start_ray

    load = os.getloadavg()[0]
    t0 = time.time()
    start_ray(base["ray"]["address"])
    ray_start = time.time() - t0
    print(f"[bench] Ray started in {ray_start:.1f} s (load {load:.2f})", flush=True)
    rows: list[dict[str, Any]] = []
    reference: list[tuple[dict[str, str], float]] | None = None
    for repeat in range(repeats):
        for mode in ("local", "ray"):
            cfg = configure([*DEFAULTS, *overrides, f"launcher={mode}", "ray.max_concurrent=1"])
            before = torch.get_num_threads()
            torch.set_num_threads(threads)  # in-process training gets the CPUs a trial gets
            load = os.getloadavg()[0]
            print(f"[bench] repeat {repeat + 1}/{repeats}: {mode} ...", flush=True)
            try:
                s = search(cfg, data)
            finally:
                torch.set_num_threads(before)
            trials = [(h.arch, h.score) for h in s.result.history]
            reference = reference or trials
            rows.append({"mode": mode, "repeat": repeat, "wall_seconds": s.seconds, "queries": len(trials),
                         "best_score": s.result.metrics["score"], "same_trials": trials == reference,
                         "ray_start_seconds": ray_start if mode == "ray" else None,
                         "load_1min_before": load, "load_1min_after": os.getloadavg()[0],
                         "cpus_per_trial": base["ray"]["cpus_per_trial"], "torch_threads": threads,
                         "cpu_count": os.cpu_count(), "data": cfg["data"]["name"],
                         "train_epochs": cfg["train"]["epochs"], "train_samples": cfg["train"]["train_samples"],
                         "overrides": overrides, "machine": machine()})
            write_rows(out, rows)
            print(f"[bench]   {mode}: {s.seconds:.1f} s, {len(trials)} queries, same trials: {trials == reference}",
                  flush=True)
    print(ray_table(rows))
    return rows


def ray_table(rows: list[dict[str, Any]]) -> str:
    """The README's table: wall time per mode (mean +- std over repeats) and its ratio to in-process."""
    by_mode = {m: [r for r in rows if r["mode"] == m] for m in ("local", "ray")}
    local = statistics.mean(r["wall_seconds"] for r in by_mode["local"])
    start = next((r["ray_start_seconds"] for r in by_mode["ray"] if r["ray_start_seconds"] is not None), 0.0)
    lines = []
    for mode, label in (("local", "in-process (launcher=local)"), ("ray", "Ray Tune trials, 1 at a time")):
        walls = [r["wall_seconds"] for r in by_mode[mode]]
        if not walls:
            continue
        mean = statistics.mean(walls)
        std = statistics.stdev(walls) if len(walls) > 1 else 0.0
        ratio = f"{mean / local:.3f}" + (f" ({(mean + start) / local:.3f} with Ray's start)" if mode == "ray" else "")
        loads = [r["load_1min_before"] for r in by_mode[mode]]
        best = [r["best_score"] for r in by_mode[mode]]
        lines.append([label, str(len(walls)), f"{mean:.1f} +- {std:.1f}", ratio,
                      "yes" if all(r["same_trials"] for r in by_mode[mode]) else "no",
                      f"{100 * statistics.mean(best):.1f}", f"{min(loads):.1f}-{max(loads):.1f}"])
    header = ["mode", "repeats", "search wall (s)", "ratio to in-process", "same trials", "best held-out accuracy (%)",
              "load (1 min)"]
    return markdown_table(header, "lrrrlrl", lines) + f"\n\nRay start (once per process): {start:.1f} s."
