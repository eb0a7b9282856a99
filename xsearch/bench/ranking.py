"""``xsearch bench ranking``: do inherited weights rank architectures like stand-alone training?"""

from __future__ import annotations

import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from xsearch.config import build_data
from xsearch.core.errors import UserError

from ._harness import Search, configure, machine, markdown_table, output_path, refuse, search, write_rows

SUPERNETS = ("danas", "spos")


def bench_ranking(overrides: list[str]) -> dict[str, Any]:
    """Kendall tau between inherited-weight accuracy (trained danas and spos supernets) and stand-alone accuracy.

    Both supernets train with their strategy's configured budget on the same data; then
    ``bench.ranking_archs`` architectures, drawn under the budget from the candidates that
    survived DA-NAS's pruning (so both supernets can score them), are scored with inherited weights
    (batch norm recalibrated) on held-out training images, and trained stand-alone
    (``bench.ranking_epochs`` epochs on ``bench.ranking_train_samples`` images) and scored on
    held-out training images. The test split is not used.
    """
    from scipy.stats import kendalltau, spearmanr

    from xsearch.core.data import split_for_search, stratified_subset
    from xsearch.evaluators import ClassificationEvaluator, InheritedWeightsEvaluator

    refuse(overrides, ("strategy",), "bench ranking trains both the danas and the spos supernet; drop strategy=")
    base = configure(overrides)
    bench = base["bench"]
    n_archs = int(bench["ranking_archs"])
    if n_archs < 3:
        raise UserError(f"bench.ranking_archs must be at least 3 for a rank correlation, got {n_archs}")
    data = build_data(base)
    budget = base["constraints"]["flops"]
    supernets: dict[str, tuple[Any, Search]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in SUPERNETS:
            # the query phases (spos's search, danas's accuracy derivation) are not what is measured here
            extra = [f"strategy={name}", "search.max_trials=1"] if name == "spos" else [f"strategy={name}",
                                                                                          "search.derive=probability"]
            ckpt = Path(tmp) / name / "search_checkpoint.pt"
            ckpt.parent.mkdir()
            print(f"[bench] training the {name} supernet ...", flush=True)
            s = search(configure(overrides, *extra), data, checkpoint=ckpt)
            supernets[name] = (trained_supernet(s, ckpt), s)
    space = supernets["danas"][1].space
    archs = surviving_archs(supernets["danas"][0], space, budget, n_archs, base["seed"])
    rows = [{"arch": a, "flops": space.flops(a)} for a in archs]
    for name, (net, s) in supernets.items():
        cfg = s.cfg
        w_idx, a_idx = split_for_search(data.train.targets, cfg["search"]["train_samples"], cfg["seed"])
        val_idx = stratified_subset(data.train.targets, 2000, cfg["seed"], indices=a_idx)
        scorer = InheritedWeightsEvaluator(net, w_idx, val_idx, cfg["search"]["batch_size"], 10, s.strategy.device)
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
    for name, (_, s) in supernets.items():
        scores = [r[f"{name}_inherited"] for r in rows]
        tau = kendalltau(scores, truth)
        summary[name] = {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
                         "spearman": float(spearmanr(scores, truth).statistic),
                         "supernet_seconds": s.seconds,
                         "inherited_mean": statistics.mean(scores)}
    write_rows(output_path(base), summary)
    print(format_ranking_table(summary))
    return summary


def trained_supernet(s: Search, checkpoint: Path) -> Any:
    """The supernet search ``s`` trained, read back from its checkpoint (a search returns an architecture, not weights)."""
    from xsearch.core.checkpoint import read_checkpoint
    from xsearch.supernets import Supernet

    net = Supernet(s.space, sharing=s.strategy.sharing).to(s.strategy.device)
    net.load_state_dict(read_checkpoint(checkpoint, "search")["model"])
    return net


def surviving_archs(net: Any, space: Any, budget: int | None, count: int, seed: int) -> list[dict[str, str]]:
    """Up to ``count`` distinct architectures under ``budget`` drawn from the candidates alive in ``net``."""
    alive = net.alive_options()
    rng = random.Random(seed)
    archs: list[dict[str, str]] = []
    for _ in range(10_000):
        arch = {label: rng.choice(options) for label, options in alive.items()}
        if (budget is None or space.flops(arch) <= budget) and arch not in archs:
            archs.append(arch)
        if len(archs) == count:
            break
    if len(archs) < 3:
        raise UserError("fewer than 3 distinct architectures of DA-NAS's surviving candidates fit the budget; "
                        "raise constraints.flops")
    return archs


def format_ranking_table(summary: dict[str, Any]) -> str:
    """The README table of a ``bench ranking`` summary: one row per supernet."""
    return markdown_table(
        ["supernet", "training time (s)", "mean inherited accuracy (%)", "Kendall tau (p)", "Spearman"], "lrrrr",
        [[name, f"{s['supernet_seconds']:.0f}", f"{100 * s['inherited_mean']:.1f}",
          f"{s['kendall_tau']:.2f} ({s['kendall_p']:.2f})", f"{s['spearman']:.2f}"]
         for name, s in ((n, summary[n]) for n in SUPERNETS)])
