"""From a validated configuration to a finished run: data -> space -> strategy -> evaluator -> records."""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import yaml

from .data import ImageData, load_dataset
from .errors import UserError
from .records import default_storage, new_run_dir, open_study, plot_search, write_json, write_tables


def build_data(cfg: dict[str, Any]) -> ImageData:
    kwargs = {k: v for k, v in cfg["data"].items() if k != "name"}
    return load_dataset(cfg["data"]["name"], **kwargs)


def build_space(cfg: dict[str, Any], data: ImageData):
    from xsearch.search_spaces import get_space

    c, h, w = data.input_shape
    kwargs = {k: v for k, v in cfg["space"].items() if k != "name"}
    return get_space(cfg["space"]["name"], num_classes=data.num_classes, in_chans=c, image_size=h, **kwargs)


def _construct(factory: Any, kind: str, name: str, knobs: dict[str, Any], extra: dict[str, Any]) -> Any:
    """Call ``factory`` with the knobs it accepts (budgets set knobs shared by several strategies)."""
    params = inspect.signature(factory).parameters
    accepts_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if accepts_all:  # subclasses forward **kwargs to the base: collect the whole chain's parameters
        names: set[str] = set()
        for klass in getattr(factory, "__mro__", [factory]):
            if "__init__" in vars(klass):
                names |= set(inspect.signature(klass.__init__).parameters) - {"self", "kwargs"}
    else:
        names = set(params)
    args = {k: v for k, v in {**knobs, **extra}.items() if k in names}
    try:
        return factory(**args)
    except ValueError as exc:
        raise UserError(f"{kind} {name!r}: {exc}") from None


def build_strategy(cfg: dict[str, Any]):
    from xsearch.strategies import STRATEGIES

    name = cfg["strategy"]["name"]
    return _construct(STRATEGIES.get(name), "strategy", name, cfg.get("search", {}),
                      {"seed": cfg["seed"], "device": cfg["device"], "show_progress": cfg["progress"]})


def build_evaluator(cfg: dict[str, Any]):
    from xsearch.evaluators import EVALUATORS

    name = cfg["evaluator"]["name"]
    return _construct(EVALUATORS.get(name), "evaluator", name, cfg.get("train", {}),
                      {"device": cfg["device"], "show_progress": cfg["progress"]})


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Search, retrain the found network from scratch, and record everything. Resumable."""
    from xsearch.search_spaces import save_arch
    from xsearch.strategies import Constraints, SearchResult

    data = build_data(cfg)
    space = build_space(cfg, data)
    max_flops = cfg["constraints"]["flops"]
    space.check_budget(max_flops)
    strategy = build_strategy(cfg)
    evaluator = build_evaluator(cfg)
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
    study.set_user_attr("data", cfg["data"]["name"])
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

    record_trial(study, space, result.arch, metrics["test_accuracy"], "retrained",
                 {"kind": "retrained", "test_accuracy": metrics["test_accuracy"],
                  "search_seconds": result.search_seconds})
    study.set_user_attr("test_accuracy", metrics["test_accuracy"])
    record = save_arch(run_dir / "arch.json", space, result.arch,
                       metrics={"test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"],
                                "search_seconds": result.search_seconds, "train_seconds": metrics["train_seconds"],
                                "train_epochs": metrics["train_epochs"],
                                "inherited_val_accuracy": result.metrics.get("inherited_val_accuracy")},
                       strategy=cfg["strategy"]["name"], data=cfg["data"]["name"], flops_budget=max_flops)
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
