"""``xsearch bench recipe``: does a tuned training recipe beat the default one on a found network?"""

from __future__ import annotations

import hashlib
import math
import statistics
import time
from pathlib import Path
from typing import Any

from xsearch.config import build_data, build_evaluator, build_space
from xsearch.core.errors import UserError

from ._harness import configure, machine, markdown_table, output_path, read_rows, refuse, retraining_seeds, write_rows

# the benchmark's own defaults, each kept unless the command line sets its key: 16 tune trials, then 2 recipes x 3
# seeds, each training 3 epochs of 10,000 images at batch 128 (237 steps). Measured alone on the 2-core machine
# (2026-12-05): a trial 26 s, a retraining with the 10,000 test images 33 s, so about 10 minutes in all (20 when
# the machine is shared)
DEFAULTS = {"constraints.flops": "5M", "search.max_trials": "16", "search.n_startup_trials": "6",
            "train.epochs": "3", "train.train_samples": "10000", "train.epoch_images": "10000",
            "train.val_samples": "2000", "train.test_samples": "null"}


def bench_recipe(overrides: list[str]) -> dict[str, Any]:
    """Test accuracy of a network retrained with the default recipe and with a recipe ``xsearch tune`` found.

    The network is ``bench.recipe_arch`` (an arch.json) or, by default, the space's hand-designed
    network under ``constraints.flops`` (mbv3, 5M MACs). Its recipe is tuned with ``search.max_trials``
    TPE trials (``xsearch tune``: held-out training images, never the test split); then the
    default recipe (the configured ``train.*``) and the tuned one each retrain it from scratch with
    seeds 0..``bench.seeds``-1 at the same ``train.epochs``, scored on the test split. Reported: each
    recipe's mean and standard deviation, and the paired difference (tuned minus default, per seed)
    with its standard error. The tune's run folder (``<runs_root>/bench-recipe-<hash of the
    settings>/bench-recipe-<hash>-tune``) and the rows in ``out=`` make an interrupted benchmark go on
    where it stopped.
    """
    from xsearch.core.recipe import default_recipe, with_recipe
    from xsearch.pipeline import load_run_config
    from xsearch.records import load_arch, save_arch
    from xsearch.tune import run_tune, tune_config

    refuse(overrides, ("strategy", "run_dir", "resume"), "bench recipe tunes with TPE in its own folder; drop "
                                                         "strategy=, run_dir= and resume=")
    given = {o.split("=", 1)[0] for o in overrides}
    settings = [f"{k}={v}" for k, v in DEFAULTS.items() if k not in given] + list(overrides)
    base = configure(["strategy=tpe", *settings])
    seeds = retraining_seeds(base)
    what = " ".join(s for s in settings if not s.startswith(("out=", "progress=")))  # what the results depend on
    folder = Path(base["runs_root"]) / f"bench-recipe-{hashlib.sha1(what.encode()).hexdigest()[:8]}"
    arch_path = folder / "arch.json"
    if base["bench"].get("recipe_arch"):
        arch_path = Path(base["bench"]["recipe_arch"])
        load_arch(arch_path)  # a bad file is refused before any work
    elif not arch_path.is_file():
        data = build_data(base)
        space = build_space(base, data)
        design = getattr(space, "hand_designed", None)
        if not callable(design):
            raise UserError(f"space {space.name!r} has no hand-designed network; pass bench.recipe_arch=ARCH_JSON")
        space.check_budget(base["constraints"]["flops"])
        folder.mkdir(parents=True, exist_ok=True)
        save_arch(arch_path, space, design(base["constraints"]["flops"]), data=base["data"]["name"],
                  strategy="hand")
    out = output_path(base)
    rows = read_rows(out)
    tune_dir = folder / f"{folder.name}-tune"  # its name is the tune study's last part
    tuned = next((r for r in rows if r.get("kind") == "tune"), None)
    if tuned is None:
        if (tune_dir / "config.yaml").is_file():  # an interrupted tune goes on
            cfg, arch_file = load_run_config(tune_dir), str(tune_dir / "arch.json")
        else:
            cfg, arch_file = tune_config([str(arch_path), *settings, f"run_dir={tune_dir}"])
        print(f"[bench] tuning the recipe of {arch_path} ({cfg['search']['max_trials']} trials) ...", flush=True)
        result = run_tune(cfg, arch_file)
        tuned = {"kind": "tune", "arch": str(arch_path), "recipe": result.recipe,
                 "default_recipe": result.default_recipe, "held_out_score": result.score,
                 "default_held_out_score": result.default_score, "trials": result.finished,
                 "pruned": result.pruned, "tune_seconds": result.seconds, "run_dir": str(result.run_dir),
                 "study": result.study, "machine": machine(), "overrides": overrides}
        rows.append(tuned)
        write_rows(out, rows)
    space, arch = load_arch(arch_path)
    cfg = configure(["strategy=tpe", *settings])
    evaluator = build_evaluator(cfg)
    data = build_data(cfg)
    recipes = {"default": default_recipe(evaluator, space), "tuned": tuned["recipe"]}
    for name, recipe in recipes.items():
        for seed in range(seeds):
            if any(r.get("kind") == "retrain" and r["recipe_name"] == name and r["seed"] == seed for r in rows):
                continue
            same = next((r for r in rows if r.get("kind") == "retrain" and r["recipe"] == recipe and r["seed"] == seed),
                        None)
            if same is not None:  # the tune's best was the default recipe: the same training, already done
                rows.append({**same, "recipe_name": name})
                write_rows(out, rows)
                continue
            print(f"[bench] retraining with the {name} recipe, seed {seed + 1}/{seeds} ...", flush=True)
            t0 = time.time()
            metrics = with_recipe(evaluator, recipe).evaluate(space, arch, data, seed=seed)
            rows.append({"kind": "retrain", "recipe_name": name, "recipe": recipe, "seed": seed,
                         "test_accuracy": metrics["test_accuracy"], "train_epochs": metrics["train_epochs"],
                         "seconds": time.time() - t0})
            write_rows(out, rows)
    summary = summarize(rows, seeds)
    rows = [r for r in rows if r.get("kind") != "summary"] + [summary]
    write_rows(out, rows)
    print(format_recipe_table(rows))
    return summary


def summarize(rows: list[dict[str, Any]], seeds: int) -> dict[str, Any]:
    """Each recipe's mean and standard deviation of test accuracy, and the paired difference with its standard error."""
    accs = {name: {r["seed"]: r["test_accuracy"] for r in rows if r.get("kind") == "retrain"
                   and r["recipe_name"] == name and r["seed"] < seeds} for name in ("default", "tuned")}
    diffs = [accs["tuned"][s] - accs["default"][s] for s in range(seeds)]
    summary: dict[str, Any] = {"kind": "summary", "seeds": seeds, "machine": machine()}
    for name, by_seed in accs.items():
        values = [by_seed[s] for s in range(seeds)]
        summary[name] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if seeds > 1 else 0.0,
                         "test_accuracies": values}
    summary["paired_difference"] = statistics.mean(diffs)
    summary["paired_difference_se"] = statistics.stdev(diffs) / math.sqrt(seeds) if seeds > 1 else None
    return summary


def format_recipe_table(rows: list[dict[str, Any]]) -> str:
    """The README table of a ``bench recipe`` run: one row per recipe, then the paired difference."""
    tune = next(r for r in rows if r.get("kind") == "tune")
    summary = next(r for r in rows if r.get("kind") == "summary")
    held = {"default": tune["default_held_out_score"], "tuned": tune["held_out_score"]}

    def recipe_text(recipe: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in recipe.items())

    table = markdown_table(
        ["recipe", "settings", "held-out (tune)", f"test accuracy, {summary['seeds']} seeds (%)", "per seed (%)"],
        "llrrl",
        [[name, recipe_text(tune["recipe"] if name == "tuned" else tune["default_recipe"]),
          f"{100 * held[name]:.2f}" if held[name] is not None else "-",
          f"{100 * summary[name]['mean']:.2f} ± {100 * summary[name]['std']:.2f}",
          " ".join(f"{100 * a:.2f}" for a in summary[name]["test_accuracies"])] for name in ("default", "tuned")])
    se = summary["paired_difference_se"]
    return (f"{table}\n\npaired difference (tuned - default): {100 * summary['paired_difference']:+.2f} points"
            + (f" ± {100 * se:.2f} (standard error)" if se is not None else "")
            + f"; tune: {tune['trials']} trials ({tune['pruned']} pruned), {tune['tune_seconds'] / 60:.1f} min")
