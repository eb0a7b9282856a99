"""``retrain_top=K``: after the search, retrain its K best distinct networks as parallel trials; the best is the answer.

The candidates are the search's answer first, then the distinct architectures of its history by
score, best first: queries by their score, stage-derived networks by their held-out accuracy,
all within the FLOPs budget. Each is retrained from scratch with ``evaluator.evaluate`` (the same
recipe and seed as the usual single retraining) as one launcher trial (``launcher=ray``: Ray Tune
trials at once), in ``<run>/retrain-top<N>/`` (checkpoints there, so a resumed run picks up each
retraining where it stopped), and recorded as trial ``<run>#retrain-top<N>`` in the final study (``retrained/<space>/<data>/<evaluator>``, beside every run's final network: retrained test accuracies on one axis, never beside the search's inherited ones). The one with
the best test accuracy (``score`` for evaluators without one) becomes ``arch.json``, and its folder
is copied to ``<run>/retrain/``.

Choosing by test accuracy makes the winner's test accuracy a maximum over K retrainings: an
optimistic figure. Retrain ``arch.json`` with another seed (``xsearch train``) for an unbiased one.
"""

from __future__ import annotations

import dataclasses
import shutil
from functools import partial
from pathlib import Path
from typing import Any

from xsearch.strategies import Constraints, QueryRecord, SearchResult

from .dashboard import final_study


def candidates(result: SearchResult, k: int, space: Any, max_flops: Any) -> list[dict[str, str]]:
    """The search's answer, then its history's distinct architectures by score (best first): at most ``k``.

    Queries a pruner stopped early (``search.pruner``) are not candidates: their score is a partial training's."""
    scored = [(row.score, row.arch) if isinstance(row, QueryRecord) else (row.val_accuracy, row.derived_arch)
              for row in result.history if not (isinstance(row, QueryRecord) and row.metrics.get("pruned"))]
    ranked = [result.arch] + [arch for _, arch in sorted(scored, key=lambda pair: -pair[0])]
    chosen: list[dict[str, str]] = []
    for arch in ranked:
        if arch not in chosen and space.fits(arch, max_flops):  # max_flops: a FLOPs budget or Constraints
            chosen.append(arch)
    return chosen[:k]


def retrain_one(evaluator: Any, space: Any, data: Any, seed: int, item: tuple[dict[str, str], str]) -> dict[str, Any]:
    """One retraining trial: ``evaluator.evaluate`` of ``item = (arch, workdir)``."""
    arch, workdir = item
    return evaluator.evaluate(space, arch, data, seed=seed, workdir=Path(workdir))


def retrain_top(cfg: dict[str, Any], space: Any, evaluator: Any, data: Any, result: SearchResult, launcher: Any,
                recorder: Any) -> tuple[SearchResult, dict[str, Any]]:
    """Retrain the top ``cfg["retrain_top"]`` networks through ``launcher``: (the result with the best one, its metrics)."""
    archs = candidates(result, int(cfg["retrain_top"]), space, Constraints(**cfg["constraints"]))
    workdirs = [recorder.path(f"retrain-top{i + 1}") for i in range(len(archs))]
    values: list[float | None] = [None] * len(archs)
    kind = "retrained" if hasattr(evaluator, "epochs") else "evaluated"
    # retrained networks are compared with retrained networks: the final study, not the run's search study
    final = final_study(recorder, cfg, evaluator, cfg["data"]["name"] if data is not None else None, kind)[0] \
        if recorder.study is not None else None
    run_dir = recorder.run_dir.resolve()

    def value_of(metrics: dict[str, Any]) -> float:
        return float(metrics["test_accuracy"] if evaluator.reports_accuracy else metrics["score"])

    def arrived(i: int, metrics: dict[str, Any]) -> None:
        values[i] = value_of(metrics)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        recorder.trial(archs[i], values[i], f"{run_dir}#retrain-top{i + 1}",
                       {"kind": f"{kind}-top", "rank": i + 1, "run": run_dir.name, "run_dir": str(run_dir),
                        **scalars}, study=final)

    runs = launcher.map(partial(retrain_one, evaluator, space, data, cfg["seed"]),
                        [(arch, str(w)) for arch, w in zip(archs, workdirs)], arrived, label="retrain-top")
    best = max(range(len(archs)), key=lambda i: (value_of(runs[i]), -i))
    if workdirs[best].is_dir():
        shutil.copytree(workdirs[best], recorder.path("retrain"), dirs_exist_ok=True)
    table = [{"rank": i + 1, "arch": arch, "flops": space.flops(arch), "value": value_of(runs[i]),
              "train_seconds": runs[i].get("train_seconds")} for i, arch in enumerate(archs)]
    chosen = archs[best]
    metrics = {**runs[best], "retrain_top": table, "retrain_top_best_rank": best + 1}
    result = dataclasses.replace(result, arch=chosen, flops=space.flops(chosen), params=space.params(chosen),
                                 metrics={**result.metrics, "retrain_top_best_rank": best + 1})
    return result, metrics
