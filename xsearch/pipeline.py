"""From a validated configuration to a finished run: data -> space -> strategy -> evaluator -> records."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xsearch.strategies import STRATEGIES, Constraints, StageRecord

from .config import (
    DEFAULT_CHOICES,
    build_data,
    build_evaluator,
    build_launcher,
    build_space,
    build_strategy,
    needs_data,
    write_recipe,
)
from .core import distributed
from .core.errors import UserError
from .core.recipe import check_tunable, with_recipe
from .core.study import FLOPS, check_storage, open_study, search_metric
from .core.training import release_memory
from .dashboard import publish_run, record_final
from .latency import use_table
from .records import (
    ReadOnlyRecorder,
    RunRecorder,
    check_run_location,
    check_writable,
    default_storage,
    new_run_dir,
)
from .top_k import retrain_top

# what a saved config.yaml must hold for a run to resume: sections with a "name", then the others
_NAMED_SECTIONS = ("space", "strategy", "data", "evaluator")
_SECTIONS = ("search", "train", "constraints")
_VALUES = ("seed", "device", "storage", "progress")
# the files of a run folder a user opens, in the order the summary lists them
_SHOWN_FILES = ("arch.json", "search.png", "stages.csv", "trials.csv", "predictions.png", "recipe.yaml",
                "retrain/model.pt")


def check_distributed(cfg: dict[str, Any], evaluator: Any) -> None:
    """Refuse, under torchrun with several processes, what does not split one global batch across them.

    The strategy must be ``data_parallel`` (its supernet training is one loop), and the evaluator must
    train data-parallel too, or train nothing.
    """
    strategy_name = cfg["strategy"]["name"]
    if not STRATEGIES.get(strategy_name).data_parallel or (evaluator.trains and not evaluator.data_parallel):
        parallel = [name for name in STRATEGIES.names() if STRATEGIES.get(name).data_parallel]
        raise UserError(f"torchrun with {distributed.world()} processes runs strategy={'|'.join(parallel)} "
                        f"on classification; got strategy={strategy_name} with evaluator={evaluator.name}. Run this "
                        "one as a single process (plain 'xsearch run'), or pick one of those strategies")
    others = {"launcher": (cfg.get("launcher") or "local") != "local", "retrain_top": bool(cfg.get("retrain_top")),
              "study": bool(cfg.get("study"))}
    if any(others.values()):
        raise UserError(f"torchrun with {distributed.world()} processes trains one network data-parallel; "
                        f"{', '.join(k for k, v in others.items() if v)} set: drop it, or run without torchrun")


def check_arch_data(space: Any, data: Any, data_name: str) -> None:
    """Refuse ``data`` whose classes or image size differ from those the classifier ``space`` was built for."""
    if (data.num_classes, *data.input_shape) != (space.num_classes, space.in_chans, space.image_size, space.image_size):
        raise UserError(f"the architecture was built for {space.num_classes} classes of {space.input_shape} images, "
                        f"but data={data_name} has {data.num_classes} classes of {data.input_shape}; "
                        "pass the data it was searched on")


def open_recorder(cfg: dict[str, Any], space: Any, label: str,
                  metric: str | None = None) -> tuple[RunRecorder, dict[str, Any]]:
    """The run folder's recorder, and ``cfg`` with the folder (``_run_dir``) and the default storage filled in.

    A new run gets ``run_dir=`` or ``<runs_root>/<time>-<space>-<label>``, created by rank 0 under
    torchrun (the other ranks learn its name and only read it); a resumed one (``_run_dir``) reopens
    its folder. With ``metric`` (the name of the study trials' value) rank 0 opens the run's study:
    ``study=NAME`` when workers share one, else the folder's name, on ``storage=`` or
    ``<runs_root>/xsearch.db``. ``xsearch run`` and ``xsearch train`` (no study) both start here.
    """
    if cfg.get("_run_dir"):
        run_dir = Path(cfg["_run_dir"])
    else:
        # rank 0 creates the (time-stamped) folder; under torchrun the others learn its name from it
        made = new_run_dir(cfg["runs_root"], space.name, label, cfg.get("run_dir")) if distributed.is_main() else None
        run_dir = Path(distributed.broadcast_object(str(made) if made else None))
        cfg = {**cfg, "_run_dir": str(run_dir)}
        if metric is not None and not cfg.get("storage") and distributed.is_main():
            cfg["storage"] = default_storage(cfg["runs_root"])  # the default study file lives in runs_root
    if not distributed.is_main():
        return ReadOnlyRecorder(run_dir, space), cfg
    if metric is None:
        return RunRecorder(run_dir, space), cfg
    # study=NAME: every worker started with that name and storage joins one search (core.study.SharedClaims)
    heartbeat = int(cfg.get("heartbeat") or 30) if cfg.get("study") else None  # frees a killed worker's claim
    study = open_study(cfg["storage"], cfg.get("study") or run_dir.name, [metric, FLOPS], heartbeat)
    return RunRecorder(run_dir, space, study, shared=bool(cfg.get("study"))), cfg


@dataclass
class RunSummary:
    """What a finished run produced, as ``xsearch run`` reports it (the CLI only formats these facts).

    ``result``: the final evaluation's metrics (``test_accuracy``, ``score``, COCOeval's ``*_ap``, the
    retraining's images and steps...); ``stages``: per search stage, its classes and mean alive candidates
    per layer; ``search``: the search's own metrics (queries, derivation, phases...); ``commands``:
    (what, command line) follow-ups such as retraining or exporting the network.
    """

    run_dir: Path
    arch: list[str]
    flops: int
    params: int
    flops_budget: int | None
    strategy: str
    evaluator: str
    result: dict[str, Any]
    search_seconds: float
    search: dict[str, Any]
    stages: list[tuple[int, float]]
    files: list[str]
    commands: list[tuple[str, str]]
    warning: str | None = None
    latency_ms: float | None = None  # predicted by the latency table (a latency budget was set)
    latency_budget: float | None = None
    latency_runtime: str | None = None


def summarize(cfg: dict[str, Any], space: Any, evaluator: Any, record: dict[str, Any], result: Any,
              metrics: dict[str, Any]) -> RunSummary:
    """The summary of a finished run in ``cfg["_run_dir"]``: its record (``arch.json``), search result and metrics.

    The follow-up commands come from the components' capabilities: a trained classifier can be
    exported and, when its space builds classifiers, retrained downstream; ``evaluator=`` is repeated
    unless it is the default one.
    """
    from xsearch.evaluators import CLASSIFICATION, task_of

    run_dir = Path(cfg["_run_dir"])
    stages = [(h.num_classes, sum(h.alive_per_layer.values()) / len(h.alive_per_layer))
              for h in result.history if isinstance(h, StageRecord)]
    classifier = evaluator.trains and task_of(evaluator).name == CLASSIFICATION.name  # trained an image classifier
    arch_json = f"{run_dir}/arch.json"
    same = "" if cfg["evaluator"]["name"] == DEFAULT_CHOICES["evaluator"] else f" evaluator={cfg['evaluator']['name']}"
    commands = [("dashboard", f"xsearch dashboard {cfg['storage']}"),
                ("retrain again", f"xsearch train {arch_json}{same} train.epochs=20"
                                  + (f" recipe={run_dir}/recipe.yaml" if (run_dir / "recipe.yaml").exists() else ""))]
    if classifier and space.task == CLASSIFICATION.name:  # a backbone for the dense tasks
        commands.append(("downstream", f"xsearch train {arch_json} evaluator=detection data=coco data.root=DIR"))
    if classifier and (run_dir / "retrain" / "model.pt").exists():
        commands.append(("export", f"xsearch export {arch_json} --format onnx"))
    return RunSummary(run_dir=run_dir, arch=list(record["arch"].values()), flops=record["flops"],
                      params=record["params"], flops_budget=cfg["constraints"]["flops"],
                      strategy=cfg["strategy"]["name"], evaluator=cfg["evaluator"]["name"], result=metrics,
                      search_seconds=result.search_seconds, search=result.metrics, stages=stages,
                      files=[f for f in _SHOWN_FILES if (run_dir / f).exists()], commands=commands,
                      warning=result.metrics.get("warning"), latency_ms=record.get("latency_ms"),
                      latency_budget=record.get("latency_budget"), latency_runtime=record.get("latency_runtime"))


def latency_record(space: Any, arch: dict[str, str], constraints: Constraints) -> dict[str, Any]:
    """What ``arch.json`` says of latency: the predicted time, the budget and where it was measured (a latency
    budget only)."""
    if constraints.latency is None:
        return {}
    return {"latency_ms": space.latency(arch), "latency_budget": constraints.latency,
            "latency_runtime": space.latency_source.get("runtime"), "latency_table": space.latency_source.get("table")}


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Search, retrain the found network from scratch, and record everything. Resumable.

    Returns the run folder, its ``arch.json`` record, the search result, the final metrics, the
    configuration and the ``RunSummary``. Under ``torchrun`` every process runs this
    (``core.distributed``): rank 0 chooses and writes the run folder and the study, the others train
    their slices of each batch and write nothing.
    """
    distributed.init(str(cfg.get("device", "auto")))
    launcher = build_launcher(cfg)  # launcher=ray: Ray starts below, once the cheap checks have passed
    strategy = build_strategy(cfg, launcher)
    evaluator = build_evaluator(cfg)
    if distributed.world() > 1:
        check_distributed(cfg, evaluator)
    resuming = bool(cfg.get("_run_dir"))
    if not resuming:  # refuse an unusable run folder before loading data or searching
        check_run_location(cfg["runs_root"], cfg.get("run_dir"))
        if not cfg.get("storage"):  # the default study file lives in runs_root
            check_writable(cfg["runs_root"], "runs_root")
        elif distributed.is_main():  # a bad URL or an unreachable server: refused before a run folder exists
            check_storage(cfg["storage"])  # (rank 0 only: the others never open the study)
    if getattr(strategy, "tune_recipe", False):  # search.tune_recipe: queries train with their own recipes
        check_tunable(evaluator)
        if cfg.get("study"):
            raise UserError("search.tune_recipe=true does not work with workers sharing a study (study=NAME) yet; "
                            "drop study=, or tune the found network's recipe afterwards with 'xsearch tune'")
    launcher.check(evaluator, "the evaluator")  # launcher=ray: it must travel to Ray workers
    launcher.connect()  # launcher=ray: Ray started or the cluster joined; an unreachable one is a UserError here
    data = build_data(cfg) if needs_data(strategy, evaluator) else None
    space = build_space(cfg, data)
    evaluator.check(space)
    evaluator.check_data(data)
    max_flops = cfg["constraints"]["flops"]
    constraints = Constraints(flops=max_flops, latency=cfg["constraints"].get("latency"))
    if constraints.latency is not None:  # the space predicts latency from its table (built here when missing)
        use_table(cfg, space)
    space.check_budget(constraints)
    metric = search_metric(strategy, evaluator)  # what the run study's trials are valued by (the dashboard's axis)
    recorder, cfg = open_recorder(cfg, space, cfg["strategy"]["name"], metric)
    run_dir = recorder.run_dir
    recorder.recipe_ranges = getattr(strategy, "recipe_ranges", None)  # search.tune_recipe's trial parameters
    if not resuming:
        recorder.write_config(cfg)
    launcher.storage_path = run_dir / "ray"  # launcher=ray: Ray Tune's trial folders
    data_name = cfg["data"]["name"] if data is not None else None
    recorder.describe(run_dir=str(run_dir.resolve()), space=space.name, strategy=cfg["strategy"]["name"],
                      data=data_name or f"table ({cfg['evaluator']['name']})", flops_budget=max_flops)

    result = recorder.saved_result()
    if result is None:
        result = strategy.search(space, evaluator, data, constraints, recorder,
                                 checkpoint=recorder.path("search_checkpoint.pt"))
        recorder.save_result(result)
    release_memory()  # the search's supernet and batches are gone; give their memory back before retraining
    result.arch = distributed.broadcast_object(result.arch)  # every rank retrains the architecture rank 0 records
    if not space.fits(result.arch, constraints):  # the contract every strategy must keep
        raise RuntimeError(f"strategy returned {result.arch} ({result.flops} MACs) over the budget "
                           f"{constraints.describe()}")
    recorder.write_search(result, f"{cfg['strategy']['name']} on {cfg['data']['name']} ({space.name})")
    if distributed.is_main():  # under torchrun only rank 0 writes the study
        publish_run(recorder, cfg, result, metric, data_name)  # the dashboard's note and plots for the run study

    recipe = result.metrics.get("recipe")  # search.tune_recipe: the answer retrains with the recipe it was found with
    if recipe and distributed.is_main():
        write_recipe(run_dir / "recipe.yaml", recipe, arch=str(run_dir / "arch.json"), study=cfg.get("study")
                     or run_dir.name, storage=cfg["storage"], query=result.metrics.get("best_query"),
                     held_out_score=result.metrics.get("score"), made=time.strftime("%Y-%m-%d %H:%M:%S"))
    evaluator = with_recipe(evaluator, recipe)
    t0 = time.time()
    if cfg.get("retrain_top"):  # the k best distinct networks retrained as launcher trials; the best one is the answer
        result, metrics = retrain_top(cfg, space, evaluator, data, result, launcher, recorder)
    else:
        metrics = evaluator.evaluate(space, result.arch, data, seed=cfg["seed"], workdir=run_dir / "retrain")
    if distributed.is_main() and (run_dir / "retrain" / "predictions.png").exists():  # a downstream task's picture
        shutil.copyfile(run_dir / "retrain" / "predictions.png", run_dir / "predictions.png")
    value = metrics["test_accuracy"] if evaluator.reports_accuracy else metrics["score"]
    kind = "retrained" if evaluator.trains else "evaluated"
    # the final network goes to the study of every run's final networks on this space, data and evaluator
    if distributed.is_main():  # under torchrun only rank 0 writes the studies
        final = record_final(recorder, cfg, evaluator, data_name, result, metrics, value, kind)
        publish_run(recorder, cfg, result, metric, data_name, final)
    recorder.describe(test_accuracy=metrics.get("test_accuracy"))
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    record = recorder.save_arch(result.arch,
                                metrics={**scalars, "search_seconds": result.search_seconds,
                                         "search_queries": result.metrics.get("queries"),
                                         "inherited_val_accuracy": result.metrics.get("inherited_val_accuracy")},
                                strategy=cfg["strategy"]["name"], evaluator=cfg["evaluator"]["name"],
                                data=data_name, flops_budget=max_flops, **latency_record(space, result.arch, constraints))
    recorder.write_metrics({"search": {k: v for k, v in result.metrics.items() if k != "epochs"},
                            "search_seconds": result.search_seconds, "retrain": metrics,
                            "retrain_wall_seconds": time.time() - t0})
    recorder.finish()
    summary = summarize(cfg, space, evaluator, record, result, metrics)
    return {"run_dir": run_dir, "record": record, "result": result, "metrics": metrics, "cfg": cfg,
            "summary": summary}


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
