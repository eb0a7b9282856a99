"""``xsearch bench fidelity``: a multi-trial search with and without pruning (``search.pruner``): compute and result.

A 30-query random search on Fashion-MNIST whose queries are 4-epoch stand-alone trainings
(``evaluator=classification train.epochs=4``), run with ``search.pruner=none`` and with the pruner
``bench.fidelity_pruner`` (default ``successive_halving``), for search seeds 0..``bench.seeds``-1
(default 3). Per arm and seed: the epochs trained (the compute), the queries pruned, the search's
seconds, the best network, and that network retrained from scratch with the run's ``train.*``
settings (one training, seed 0, on ``train.train_samples`` images, tested on ``train.test_samples``
test images). The target: at most 0.4x the epochs of the unpruned search, at a retrained accuracy
within the seed spread (the paired difference no larger than the unpruned arm's std over seeds).

Why random search: its proposals never depend on scores, so both arms of a seed query the same 30
architectures in the same order, and the only difference is which of them train to the end (and
so which can be the answer); evolution or TPE would also steer by the pruned queries' partial scores.

The per-query training is small enough for the whole benchmark (6 searches, 6 retrainings) to take
about 15-20 minutes on a 2-core CPU (``DEFAULTS``): the mbv3 space at ``space.width_mult=0.5
space.num_layers=4`` (1.3-3.0M MACs, no FLOPs budget), 1,000 training images per query
(``train.train_samples=1000``, one pass per epoch: ``train.epoch_images=null``; 4 x 1,000 images at
batch 32, the batch ``train.min_steps=125`` asks for), scored on 500 held-out training images
(``train.val_samples=500``), retrained networks tested on 2,000 test images. One query, alone:
about 5-6 s (a 2-core x86_64 machine, 1 torch thread, load ~2.7; about 0.3-1.4 s more with the
per-epoch evaluations a pruned search makes). Any ``train.*``, ``space.*``, ``search.*`` (e.g.
``search.pruner_reduction_factor``), ``data.*`` or ``launcher=`` override applies to both arms.

One row per (arm, seed), written to ``out=FILE.json`` after each; rerunning with the same ``out=``
skips the rows already there (``bench.seeds`` may grow between calls), and refuses rows of other
settings. The table is built from the rows alone.
"""

from __future__ import annotations

import statistics
from typing import Any

from xsearch.config import build_data
from xsearch.core.errors import UserError
from xsearch.core.pruning import PRUNERS

from ._harness import configure, machine, markdown_table, output_path, read_rows, refuse, retrain, search, write_rows

DEFAULTS = ["strategy=random", "search.max_trials=30", "evaluator=classification", "data=fashion_mnist", "space=mbv3",
            "space.width_mult=0.5", "space.num_layers=4", "constraints.flops=null", "train.epochs=4",
            "train.train_samples=1000", "train.epoch_images=null", "train.val_samples=500", "train.test_samples=2000",
            "progress=false"]
NONE = "none"
TARGET_EPOCHS_RATIO = 0.4
# overrides that only choose which part of the benchmark a call runs or where it reports
SPLITTING = ("out", "progress", "runs_root", "bench.seeds")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def bench_fidelity(overrides: list[str]) -> list[dict[str, Any]]:
    """Both arms (no pruner, ``bench.fidelity_pruner``) at every seed, each best network retrained; resumes from out=."""
    refuse(overrides, ("strategy", "search.pruner", "seed"),
           "bench fidelity runs strategy=random with search.pruner=none and bench.fidelity_pruner at seeds "
           "0..bench.seeds-1; set bench.fidelity_pruner and bench.seeds instead of strategy=, search.pruner= or seed=")
    base = configure(DEFAULTS, *overrides)
    bench = base["bench"]
    pruner, seeds = str(bench["fidelity_pruner"]), int(bench["seeds"])
    if pruner not in PRUNERS or pruner == NONE:
        raise UserError(f"bench.fidelity_pruner={pruner!r}: use one of {', '.join(p for p in PRUNERS if p != NONE)} "
                        "(the other arm is search.pruner=none)")
    if seeds < 1:
        raise UserError(f"bench.seeds must be at least 1, got {seeds}")
    arms = [NONE, pruner]
    configs = {(arm, seed): configure(DEFAULTS, *overrides, f"search.pruner={arm}", f"seed={seed}")
               for seed in range(seeds) for arm in arms}  # every configuration checked before any work

    out = output_path(base)
    settings = sorted(o for o in overrides if _key(o) not in SPLITTING)
    rows = read_rows(out)
    other = next((r.get("settings") for r in rows if r.get("settings") != settings), None)
    if rows and other is not None:
        raise UserError(f"out={out} holds rows of other settings {other} than this call's {settings}; rerun with "
                        f"those to continue it, or write to another out= file (only {', '.join(SPLITTING)} may "
                        "change between the calls of one benchmark)")
    done = {(r["arm"], r["seed"]) for r in rows}
    todo = [key for key in configs if key not in done]
    print(f"[bench] {len(configs) - len(todo)} of {len(configs)} rows already in out=, {len(todo)} to run", flush=True)
    data = build_data(base) if todo else None
    for arm, seed in todo:
        cfg = configs[arm, seed]
        label = f"pruner={arm} seed {seed}"
        print(f"[bench] {label}: searching ...", flush=True)
        s = search(cfg, data)
        result = s.result
        metrics = result.metrics
        row: dict[str, Any] = {
            "arm": arm, "seed": seed, "search_seconds": s.seconds, "queries": metrics["queries"],
            "epochs_trained": metrics["epochs_trained"], "full_epochs": metrics["queries"] * cfg["train"]["epochs"],
            "pruned_queries": metrics.get("pruned_queries", 0), "best_score": metrics["score"],
            "best_query": metrics["best_query"], "arch": result.arch, "flops": result.flops, "params": result.params,
            "pruned_epochs": [h.metrics.get("pruned_epoch") for h in result.history]}
        print(f"[bench] {label}: {s.seconds:.0f} s, {row['epochs_trained']} epochs, {row['pruned_queries']} pruned, "
              f"best held-out {100 * row['best_score']:.1f} %", flush=True)
        same = next((r for r in rows if r["arch"] == result.arch), None)  # a seeded retraining: the same number
        trained = ({k: same[k] for k in ("test_accuracy", "test_accuracy_std", "test_accuracies")} if same else
                   retrain(cfg, s.space, result.arch, data, 1, label))
        row.update(trained, retrained_as=(same["arm"], same["seed"]) if same else None, pruner=pruner,
                   train_epochs=cfg["train"]["epochs"], train_samples=cfg["train"]["train_samples"],
                   data=cfg["data"]["name"], overrides=overrides, settings=settings, machine=machine())
        rows.append(row)
        write_rows(out, rows)
        print(f"[bench] {label}: retrained {100 * row['test_accuracy']:.2f} % test", flush=True)
    print(format_fidelity_table(rows))
    return rows


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def paired(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Pruned arm against none, paired by seed: the epochs ratio and the test accuracy difference (mean, SE)."""
    by = {(r["arm"], r["seed"]): r for r in rows}
    pruners = sorted({r["arm"] for r in rows} - {NONE})
    if len(pruners) != 1:
        return None
    seeds = sorted(s for (arm, s) in by if arm == NONE and (pruners[0], s) in by)
    if not seeds:
        return None
    ratios = [by[pruners[0], s]["epochs_trained"] / by[NONE, s]["epochs_trained"] for s in seeds]
    diffs = [by[pruners[0], s]["test_accuracy"] - by[NONE, s]["test_accuracy"] for s in seeds]
    spread = _stats([by[NONE, s]["test_accuracy"] for s in seeds])[1]
    mean = statistics.mean(diffs)
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    ratio = statistics.mean(ratios)
    return {"pruner": pruners[0], "seeds": seeds, "epochs_ratio": ratio, "accuracy_difference": mean,
            "standard_error": se, "seed_spread": spread,
            "target_met": ratio <= TARGET_EPOCHS_RATIO and len(seeds) > 1 and abs(mean) <= spread}


def format_fidelity_table(rows: list[dict[str, Any]]) -> str:
    """The README table: per arm, epochs trained, queries pruned, search time, retrained test accuracy; the pairing."""
    body = []
    for arm in sorted({r["arm"] for r in rows}, key=lambda a: (a != NONE, a)):
        group = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
        epochs, epochs_sd = _stats([r["epochs_trained"] for r in group])
        seconds, _ = _stats([r["search_seconds"] for r in group])
        acc, acc_sd = _stats([r["test_accuracy"] for r in group])
        body.append([f"search.pruner={arm}", str(len(group)), f"{epochs:.1f} +- {epochs_sd:.1f}",
                     f"{statistics.mean(r['epochs_trained'] / r['full_epochs'] for r in group):.2f}",
                     f"{statistics.mean(r['pruned_queries'] for r in group):.1f}", f"{seconds:.0f}",
                     f"{100 * statistics.mean(r['best_score'] for r in group):.1f}",
                     f"{100 * acc:.2f} +- {100 * acc_sd:.2f}"])
    table = markdown_table(["arm", "seeds", "epochs trained", "of full", "queries pruned", "search (s)",
                            "best held-out (%)", "retrained test accuracy (%) mean +- std over seeds"],
                           "lrrrrrrr", body)
    pair = paired(rows)
    if pair is None:
        return table
    se = "-" if pair["standard_error"] is None else f"{100 * pair['standard_error']:.2f}"
    return (f"{table}\n\nPaired by seed ({len(pair['seeds'])}): epochs {pair['epochs_ratio']:.2f}x the unpruned "
            f"search's (target <= {TARGET_EPOCHS_RATIO}); test accuracy {pair['pruner']} - none "
            f"{100 * pair['accuracy_difference']:+.2f} points (SE {se}; seed spread of none "
            f"{100 * pair['seed_spread']:.2f}). Target met: {'yes' if pair['target_met'] else 'no'}.")
