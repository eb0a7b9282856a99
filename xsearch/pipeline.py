"""From a validated configuration to a finished run: data -> space -> strategy -> evaluator -> records."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from xsearch.strategies import Constraints

from .config import build_data, build_evaluator, build_space, build_strategy, needs_data
from .core.errors import UserError
from .records import RunRecorder, check_run_location, check_writable, default_storage, new_run_dir, open_study

# what a saved config.yaml must hold for a run to resume: sections with a "name", then the others
_NAMED_SECTIONS = ("space", "strategy", "data", "evaluator")
_SECTIONS = ("search", "train", "constraints")
_VALUES = ("seed", "device", "storage", "progress")


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Search, retrain the found network from scratch, and record everything. Resumable."""
    strategy = build_strategy(cfg)
    evaluator = build_evaluator(cfg)
    resuming = bool(cfg.get("_run_dir"))
    if not resuming:  # refuse an unusable run folder before loading data or searching
        check_run_location(cfg["runs_root"], cfg.get("run_dir"))
        if not cfg.get("storage"):  # the default study file lives in runs_root
            check_writable(cfg["runs_root"], "runs_root")
    data = build_data(cfg) if needs_data(strategy, evaluator) else None
    space = build_space(cfg, data)
    evaluator.check(space)
    evaluator.check_data(data)
    max_flops = cfg["constraints"]["flops"]
    space.check_budget(max_flops)
    if resuming:
        run_dir = Path(cfg["_run_dir"])
    else:
        run_dir = new_run_dir(cfg["runs_root"], space.name, cfg["strategy"]["name"], cfg.get("run_dir"))
        cfg = {**cfg, "_run_dir": str(run_dir)}
        if not cfg.get("storage"):
            cfg["storage"] = default_storage(cfg["runs_root"])
    recorder = RunRecorder(run_dir, space, open_study(cfg["storage"], run_dir.name))
    if not resuming:
        recorder.write_config(cfg)
    data_name = cfg["data"]["name"] if data is not None else None
    recorder.describe(run_dir=str(run_dir.resolve()), space=space.name, strategy=cfg["strategy"]["name"],
                      data=data_name or f"table ({cfg['evaluator']['name']})", flops_budget=max_flops)

    result = recorder.saved_result()
    if result is None:
        result = strategy.search(space, evaluator, data, Constraints(max_flops), recorder,
                                 checkpoint=recorder.path("search_checkpoint.pt"))
        recorder.save_result(result)
    if max_flops is not None and result.flops > max_flops:  # the contract every strategy must keep
        raise RuntimeError(f"strategy returned {result.flops} MACs over the budget {max_flops}")
    recorder.write_search(result, f"{cfg['strategy']['name']} on {cfg['data']['name']} ({space.name})")

    t0 = time.time()
    metrics = evaluator.evaluate(space, result.arch, data, seed=cfg["seed"], workdir=run_dir / "retrain")
    if (run_dir / "retrain" / "predictions.png").exists():  # a downstream evaluator's picture, shown at the top
        shutil.copyfile(run_dir / "retrain" / "predictions.png", run_dir / "predictions.png")
    value = metrics["test_accuracy"] if evaluator.reports_accuracy else metrics["score"]
    kind = "retrained" if hasattr(evaluator, "epochs") else "evaluated"
    recorder.trial(result.arch, value, "retrained",
                   {"kind": kind, "search_seconds": result.search_seconds,
                    **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}})
    recorder.describe(test_accuracy=metrics.get("test_accuracy"))
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    record = recorder.save_arch(result.arch,
                                metrics={**scalars, "search_seconds": result.search_seconds,
                                         "search_queries": result.metrics.get("queries"),
                                         "inherited_val_accuracy": result.metrics.get("inherited_val_accuracy")},
                                strategy=cfg["strategy"]["name"], evaluator=cfg["evaluator"]["name"],
                                data=data_name, flops_budget=max_flops)
    recorder.write_metrics({"search": {k: v for k, v in result.metrics.items() if k != "epochs"},
                            "search_seconds": result.search_seconds, "retrain": metrics,
                            "retrain_wall_seconds": time.time() - t0})
    recorder.finish()
    return {"run_dir": run_dir, "record": record, "result": result, "metrics": metrics, "cfg": cfg}


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The configuration saved in run folder ``run_dir``, checked so that resuming it cannot fail halfway."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"resume={run_dir!s}: no run there ({path} is missing); pass a folder made by 'xsearch run'")
    fix = "pass a folder made by 'xsearch run', or start a new run"
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"resume={run_dir!s}: {path} is not a readable YAML file ({first}); {fix}") from None
    if not isinstance(cfg, dict) or not cfg:
        what = "empty" if cfg is None or cfg == {} else f"a {type(cfg).__name__}, not a mapping of settings"
        raise UserError(f"resume={run_dir!s}: {path} is {what}; {fix}")
    missing = [k for k in _NAMED_SECTIONS if not isinstance(cfg.get(k), dict) or "name" not in cfg[k]]
    missing += [k for k in _SECTIONS if not isinstance(cfg.get(k), dict)]
    missing += [k for k in _VALUES if k not in cfg]
    if missing:
        raise UserError(f"resume={run_dir!s}: {path} lacks {', '.join(missing)} (a saved run config has "
                        f"{', '.join(_NAMED_SECTIONS + _SECTIONS + _VALUES)}); {fix}")
    cfg["_run_dir"] = str(Path(run_dir))
    return cfg
