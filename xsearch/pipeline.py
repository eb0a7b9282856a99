"""From a validated configuration to a finished run: data -> space -> strategy -> evaluator -> records."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from .config import build_data, build_evaluator, build_space, build_strategy, needs_data
from .core.errors import UserError
from .core.io import write_json
from .records import default_storage, new_run_dir, open_study, plot_search, write_tables


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Search, retrain the found network from scratch, and record everything. Resumable."""
    from xsearch.search_spaces import save_arch
    from xsearch.strategies import Constraints, SearchResult

    strategy = build_strategy(cfg)
    evaluator = build_evaluator(cfg)
    data = build_data(cfg) if needs_data(strategy, evaluator) else None
    space = build_space(cfg, data)
    evaluator.check(space)
    max_flops = cfg["constraints"]["flops"]
    space.check_budget(max_flops)
    if cfg.get("_run_dir"):
        run_dir = Path(cfg["_run_dir"])
    else:
        run_dir = new_run_dir(cfg["runs_root"], space.name, cfg["strategy"]["name"], cfg.get("run_dir"))
        cfg = {**cfg, "_run_dir": str(run_dir)}
        if not cfg.get("storage"):
            cfg["storage"] = default_storage(cfg["runs_root"])
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    study = open_study(cfg["storage"], run_dir.name)
    study.set_user_attr("run_dir", str(run_dir.resolve()))
    study.set_user_attr("space", space.name)
    study.set_user_attr("strategy", cfg["strategy"]["name"])
    study.set_user_attr("data", cfg["data"]["name"] if data is not None else f"table ({cfg['evaluator']['name']})")
    study.set_user_attr("flops_budget", max_flops)

    search_file = run_dir / "search.json"
    if search_file.exists():
        result = SearchResult(**json.loads(search_file.read_text()))
    else:
        result = strategy.search(space, evaluator, data, Constraints(max_flops), study,
                                 checkpoint=run_dir / "search_checkpoint.pt")
        write_json(search_file, result.to_dict())
    if max_flops is not None and result.flops > max_flops:  # the contract every strategy must keep
        raise RuntimeError(f"strategy returned {result.flops} MACs over the budget {max_flops}")
    write_tables(run_dir, result.history, result.metrics.get("epochs", []))
    plot_search(run_dir, result.history, result.metrics.get("epochs", []),
                f"{cfg['strategy']['name']} on {cfg['data']['name']} ({space.name})")

    t0 = time.time()
    metrics = evaluator.evaluate(space, result.arch, data, seed=cfg["seed"], workdir=run_dir / "retrain")
    from xsearch.strategies import record_trial

    value = metrics["test_accuracy"] if evaluator.reports_accuracy else metrics["score"]
    kind = "retrained" if cfg["evaluator"]["name"] == "classification" else "evaluated"
    record_trial(study, space, result.arch, value, "retrained",
                 {"kind": kind, "search_seconds": result.search_seconds,
                  **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}})
    study.set_user_attr("test_accuracy", metrics.get("test_accuracy"))
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    record = save_arch(run_dir / "arch.json", space, result.arch,
                       metrics={**scalars, "search_seconds": result.search_seconds,
                                "search_queries": result.metrics.get("queries"),
                                "inherited_val_accuracy": result.metrics.get("inherited_val_accuracy")},
                       strategy=cfg["strategy"]["name"], evaluator=cfg["evaluator"]["name"],
                       data=cfg["data"]["name"] if data is not None else None, flops_budget=max_flops)
    write_json(run_dir / "metrics.json", {"search": {k: v for k, v in result.metrics.items() if k != "epochs"},
                                          "search_seconds": result.search_seconds, "retrain": metrics,
                                          "retrain_wall_seconds": time.time() - t0})
    (run_dir / "DONE").write_text("finished\n")
    return {"run_dir": run_dir, "record": record, "result": result, "metrics": metrics, "cfg": cfg}


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"resume={run_dir!s}: no run there ({path} is missing); pass a folder made by 'xsearch run'")
    cfg = yaml.safe_load(path.read_text())
    cfg["_run_dir"] = str(Path(run_dir))
    return cfg
