"""What every benchmark shares: configure, search like the pipeline, retrain with seeds, write rows, tables.

A benchmark module composes its configurations here, so an override means the same thing in
``xsearch bench`` as in ``xsearch run``, and its rows and tables keep one format.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from xsearch.config import build_evaluator, build_launcher, build_space, build_strategy, compose, validate
from xsearch.core.errors import UserError
from xsearch.core.io import write_json


def machine() -> str:
    """The machine a timing was taken on, for the rows and the README tables."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"


def refuse(overrides: list[str], keys: tuple[str, ...], message: str) -> None:
    """Raise UserError(message) when an override sets one of ``keys`` (the benchmark sets those itself)."""
    if any(o.split("=", 1)[0] in keys for o in overrides):
        raise UserError(message)


def configure(overrides: list[str], *extra: str) -> dict[str, Any]:
    """The validated configuration of ``overrides`` followed by ``extra`` (a plain dict, as ``xsearch run`` has)."""
    return validate(compose([*overrides, *extra]))


def retraining_seeds(cfg: dict[str, Any]) -> int:
    """``bench.seeds``, checked: the number of retrainings each found network gets."""
    seeds = int(cfg["bench"]["seeds"])
    if seeds < 1:
        raise UserError(f"bench.seeds must be at least 1, got {seeds}")
    return seeds


def output_path(cfg: dict[str, Any]) -> Path | None:
    """Where ``out=FILE.json`` asks for the rows, or None."""
    return Path(cfg["out"]) if cfg.get("out") else None


def write_rows(out: Path | None, rows: Any) -> None:
    """Write ``rows`` to ``out`` as JSON, atomically (after every row, so a long benchmark keeps what it has)."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, rows)


def read_rows(out: Path | None) -> list[dict[str, Any]]:
    """The rows already in ``out`` (a JSON list of objects), or [] when there is no such file."""
    if out is None or not out.exists():
        return []
    try:
        rows = json.loads(out.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"out={out}: cannot read its rows ({e}); move it away or choose another out= file") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"out={out} is not a list of benchmark rows; move it away or choose another out= file")
    return rows


def resident_mb() -> float | None:
    """This process's resident memory now (MB, from /proc/self/statm), or None where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@dataclass
class Resident:
    """Resident memory (MB) when a block began and the largest sampled while it ran; None without /proc."""

    before_mb: float | None = None
    peak_mb: float | None = None


@contextmanager
def peak_resident(interval: float = 0.02) -> Iterator[Resident]:
    """``with peak_resident() as m: ...``: ``m.before_mb``, and ``m.peak_mb`` once the block is over.

    A background thread samples /proc/self/statm every ``interval`` seconds while the block runs (the
    process's own ``ru_maxrss`` is a lifetime peak, so it cannot isolate one search). The figures are
    the whole process's: memory that earlier work kept counts too, hence ``before_mb``.
    """
    before = resident_mb()
    m = Resident(before, before)
    stop = threading.Event()

    def sample() -> None:
        now = resident_mb()
        if now is not None and (m.peak_mb is None or now > m.peak_mb):
            m.peak_mb = now

    def run() -> None:
        while not stop.wait(interval):
            sample()

    thread = threading.Thread(target=run, name="peak-resident", daemon=True) if m.before_mb is not None else None
    if thread is not None:
        thread.start()
    try:
        yield m
    finally:
        stop.set()
        if thread is not None:
            thread.join()
            sample()


@dataclass
class Search:
    """One finished search: its configuration, space, strategy, result and wall time."""

    cfg: dict[str, Any]
    space: Any
    strategy: Any
    result: Any
    seconds: float


def search(cfg: dict[str, Any], data: Any, checkpoint: Path | None = None) -> Search:
    """Search as ``xsearch run`` does (same builders, budget checks and contract), timing strategy and search."""
    from xsearch.strategies import Constraints

    space = build_space(cfg, data)
    budget = Constraints(flops=cfg["constraints"]["flops"], latency=cfg["constraints"].get("latency"))
    if budget.latency is not None:  # the space predicts latency from its table (built when missing)
        from xsearch.latency import use_table

        use_table(cfg, space)
    space.check_budget(budget)
    t0 = time.time()
    strategy = build_strategy(cfg, launcher(cfg))
    evaluator = build_evaluator(cfg)
    evaluator.check(space)
    result = strategy.search(space, evaluator, data, budget, None, checkpoint=checkpoint)
    seconds = time.time() - t0
    if not space.fits(result.arch, budget):  # the contract every strategy must keep
        raise RuntimeError(f"strategy returned {result.arch} ({result.flops} MACs) over the budget {budget.describe()}")
    return Search(cfg, space, strategy, result, seconds)


def launcher(cfg: dict[str, Any]) -> Any:
    """Where a benchmark's evaluations run (``launcher=local|ray``, as in ``xsearch run``); Ray's trial folders
    go to ``<runs_root>/ray-bench``."""
    return build_launcher(cfg, storage_path=Path(cfg["runs_root"]) / "ray-bench")


def evaluate_seed(evaluator: Any, space: Any, arch: dict[str, str], data: Any, seed: int) -> dict[str, Any]:
    """One retraining (a launcher trial): ``evaluator.evaluate`` with ``seed``."""
    return evaluator.evaluate(space, arch, data, seed=seed)


def retrain(cfg: dict[str, Any], space: Any, arch: dict[str, str], data: Any, seeds: int,
            label: str) -> dict[str, Any]:
    """Retrain ``arch`` from scratch with seeds 0..seeds-1 (launcher trials); the mean, std and every test accuracy."""
    evaluator = build_evaluator(cfg)
    where = launcher(cfg)
    print(f"[bench] {label}: retraining {seeds} seed(s) ({where.describe()}) ...", flush=True)
    runs = where.map(partial(evaluate_seed, evaluator, space, arch, data), list(range(seeds)),
                     lambda i, _: print(f"[bench] {label}: seed {i + 1}/{seeds} retrained", flush=True),
                     label="bench-retrain")
    accs = [r["test_accuracy"] for r in runs]
    return {"test_accuracy": statistics.mean(accs), "test_accuracy_std": statistics.stdev(accs) if seeds > 1 else 0.0,
            "test_accuracies": accs}


def format_flops_m(value: int) -> str:
    """5_000_000 -> '5M': how budgets are labelled in rows and tables."""
    return f"{value / 1e6:g}M"


def markdown_table(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A Markdown table (what goes in the README); ``align`` has one letter per column, l(eft) or r(ight)."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return "\n".join(["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows])
