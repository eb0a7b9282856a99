"""``xsearch tune ARCH_JSON``: Optuna TPE over the training recipe of a found network; writes ``recipe.yaml``.

Each trial is a real stand-alone training (``evaluator.score``: the training split minus the
held-out images, scored on those; never the test split) with a recipe drawn from the ``tune.*``
ranges (``xsearch.core.recipe``): optimizer, its learning rate and weight decay, label smoothing,
batch size, augmentation strength. Every trial trains with the run's ``seed``, so trials differ by
their recipe only. Trial 0 is the recipe the evaluator is configured with (``train.*``, a
``recipe=FILE``, the budget): enqueued, so TPE learns from it, and the baseline the result is
compared with. ``search.pruner`` stops unpromising trials after an epoch (PRUNED trials; their
values are their last epoch's, never a result); ``search.max_trials`` counts finished trials,
pruned ones included; ``search.n_startup_trials`` random trials come before TPE's model.

The study (one objective, held-out accuracy) is ``tune/<space>/<data>/<run name>`` in the run's
Optuna storage (``storage=``, default ``<runs_root>/xsearch.db``), so ``xsearch dashboard`` shows it
with a note and the plot. The run folder ``<runs_root>/<time>-<space>-tune/`` holds ``config.yaml``,
``arch.json`` (a copy of the tuned network's), ``trials.csv`` and ``tune.png`` (after every trial),
``recipe.yaml`` (the best finished trial's recipe), ``metrics.json`` and ``DONE``. An interrupted
tune continues its study with ``xsearch tune resume=RUN_DIR``: finished trials stay, the trial cut
short is trained again.
"""

from __future__ import annotations

import inspect
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from .config import build_data, build_evaluator, build_strategy, compose, validate, write_recipe
from .core.errors import UserError
from .core.io import atomic_write, write_json, write_text
from .core.pruning import check_pruner, make_pruner
from .core.recipe import RecipeRanges, check_tunable, default_recipe, from_params, params, with_recipe
from .core.study import check_storage, open_storage, set_metric_names
from .core.training import TrainingDiverged, progress
from .pipeline import check_arch_data, load_run_config, open_recorder
from .records import ARCH_FILE, check_run_location, check_writable, default_storage, load_arch, read_arch_record

TUNE_METRIC = "held-out accuracy"
SEARCH_KEYS = ("max_trials", "n_startup_trials", "pruner", "pruner_min_epochs", "pruner_reduction_factor")
RECIPE_FILE = "recipe.yaml"


@dataclass
class TuneResult:
    """A finished tune: where it is, its best recipe and the default recipe's score, and its trials."""

    run_dir: Path
    arch_path: str
    study: str
    storage: str
    recipe: dict[str, Any]
    score: float
    best_trial: int
    default_recipe: dict[str, Any]
    default_score: float | None
    finished: int
    pruned: int
    recipe_path: Path
    seconds: float


# --- configuration ------------------------------------------------------------------------
def tune_config(args: list[str]) -> tuple[dict[str, Any], str]:
    """(configuration, ARCH_JSON) of ``xsearch tune`` arguments: ``ARCH_JSON [key=value ...]`` or ``resume=RUN_DIR``."""
    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if resume:
        others = [a for a in args if not a.startswith(("resume=", "progress="))]
        if others:
            raise UserError(f"resume=RUN_DIR continues a tune with its saved configuration; drop {others}")
        cfg = load_run_config(resume)
        if not (Path(resume) / ARCH_FILE).is_file() or cfg.get("command") != "tune":
            raise UserError(f"resume={resume}: not a folder made by 'xsearch tune' (it has no {ARCH_FILE} or its "
                            "config.yaml is another command's); resume a run with 'xsearch run resume=...'")
        progress_arg = next((a.split("=", 1)[1] for a in args if a.startswith("progress=")), None)
        if progress_arg is not None:
            cfg["progress"] = progress_arg.lower() in ("true", "1", "yes")
        return cfg, str(Path(resume) / ARCH_FILE)
    if not args or "=" in args[0]:
        raise UserError("usage: xsearch tune ARCH_JSON [key=value ...] | xsearch tune resume=RUN_DIR; ARCH_JSON is "
                        "a run's arch.json")
    path, overrides = args[0], list(args[1:])
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+")
        if key == "strategy" and item.split("=", 1)[1] != "tpe":
            raise UserError(f"xsearch tune searches the recipe with TPE; drop {item}")
        if key.startswith("search.") and key[len("search."):] not in SEARCH_KEYS:
            raise UserError(f"xsearch tune reads {', '.join('search.' + k for k in SEARCH_KEYS)}; {key} means "
                            "nothing to it")
    saved = read_arch_record(path)
    if not any(o.startswith("data=") for o in overrides) and saved.get("data"):
        overrides = [f"data={saved['data']}", *overrides]
    cfg = validate(compose(["strategy=tpe", *overrides]))
    build_strategy(cfg)  # the search.* settings checked as the tpe strategy checks them
    return {**cfg, "command": "tune", "arch_json": path}, path


def check_recipe_ranges(ranges: RecipeRanges, default: dict[str, Any]) -> None:
    """Refuse ranges that do not hold the default recipe (trial 0 must be a point TPE can model)."""
    problems = ranges.outside(default)
    if problems:
        raise UserError(f"the default recipe (trial 0: the configured train.* settings) lies outside the tuned "
                        f"ranges: {'; '.join(problems)}. Widen the tune.* range or change the train.* setting")


# --- the study ----------------------------------------------------------------------------
def open_tune_study(storage: str, name: str, seed: int, n_startup_trials: int, pruner: Any) -> optuna.Study:
    """The tune study (one objective, maximized), created or loaded, with a seeded multivariate TPE sampler."""
    with warnings.catch_warnings():  # multivariate and group are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True,
                                             group=True)
    try:
        study = optuna.create_study(storage=open_storage(storage), study_name=name, direction="maximize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    except ValueError as exc:  # a study of that name with other directions
        raise UserError(f"cannot open study {name!r} in {storage}: {exc}") from None
    set_metric_names(study, [TUNE_METRIC])
    return study


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count toward ``max_trials``: COMPLETE and PRUNED."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def prepare(study: optuna.Study, default: dict[str, Any]) -> None:
    """Make a new or interrupted study ready to go on: fail trials a killed process left RUNNING, and enqueue
    the default recipe unless it has finished or waits already."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.WAITING)
    if not any(t.user_attrs.get("default") for t in study.get_trials(deepcopy=False, states=states)):
        study.enqueue_trial(params(default), user_attrs={"default": True})


def reports_epochs(evaluator: Any) -> bool:
    """Whether ``evaluator.score`` reports per-epoch values to a ``report`` callable (what pruning needs)."""
    takes = "report" in inspect.signature(evaluator.score).parameters
    return bool(getattr(evaluator, "reports_epochs", False)) and takes


def objective(evaluator: Any, space: Any, arch: dict[str, str], data: Any, seed: int, ranges: RecipeRanges,
              prune: bool = False) -> Any:
    """The function of an Optuna trial: draw a recipe, train with it (reporting each epoch), the held-out score.

    With ``prune`` the evaluator's ``score`` gets a ``report`` that reports ``(epoch, value)`` to the trial
    (measuring each epoch costs a held-out evaluation, so only a pruned study asks for it) and raises
    ``optuna.TrialPruned`` when the pruner says so; the evaluator then returns its metrics
    with ``pruned`` (or lets the exception through), and the trial ends PRUNED. A training that
    diverges scores 0, as a search's query does.
    """
    reports = prune and reports_epochs(evaluator)
    last = getattr(evaluator, "epochs", None)

    def run(trial: optuna.Trial) -> float:
        recipe = ranges.suggest(trial)

        def report(epoch: int, value: float) -> None:
            trial.report(float(value), int(epoch))
            if (last is None or epoch < last) and trial.should_prune():  # a finished training is a result
                raise optuna.TrialPruned(f"pruned after epoch {epoch} at {TUNE_METRIC} {value:.4f}")

        try:
            metrics = with_recipe(evaluator, recipe).score(space, arch, data, seed=seed,
                                                           **({"report": report} if reports else {}))
        except TrainingDiverged as exc:
            trial.set_user_attr("diverged", str(exc))
            return 0.0
        for key, value in metrics.items():
            if isinstance(value, (int, float, str)) and not isinstance(value, bool) and key != "score":
                trial.set_user_attr(key, value)
        if metrics.get("pruned"):
            raise optuna.TrialPruned(f"pruned at {TUNE_METRIC} {metrics['score']:.4f}")
        return float(metrics["score"])

    return run


# --- tables, plot, note -----------------------------------------------------------------------
def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per finished or failed trial: number, state, value, best so far, epochs, seconds, the recipe."""
    rows, best = [], None
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.WAITING or t.state == optuna.trial.TrialState.RUNNING:
            continue
        if t.state == optuna.trial.TrialState.COMPLETE:
            best = t.value if best is None else max(best, t.value)
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"trial": t.number, "state": t.state.name, TUNE_METRIC: t.value, "best_so_far": best,
                     "epochs": t.last_step if t.last_step is not None else t.user_attrs.get("train_epochs"),
                     "seconds": seconds, "default": bool(t.user_attrs.get("default")), **t.params})
    return rows


def write_trials(run_dir: Path, study: optuna.Study) -> None:
    """``trials.csv`` and ``tune.png`` of the study as it stands."""
    import pandas as pd

    rows = trial_rows(study)
    if rows:
        write_text(run_dir / "trials.csv", pd.DataFrame(rows).to_csv(index=False))
        plot_tune(run_dir / "tune.png", study, f"recipe tuning: {study.study_name}")


def plot_tune(path: Path, study: optuna.Study, title: str) -> Path:
    """``tune.png``: each trial's held-out accuracy and the best so far (pruned at their last epoch, the default
    recipe starred); and every trial's per-epoch values (pruned ones grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.value is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    axes[0].plot([t.number for t in done], [100 * t.value for t in done], "o", label="trained to the end")
    if pruned:
        axes[0].plot([t.number for t in pruned], [100 * t.value for t in pruned], "x", c="grey",
                     label="pruned (last epoch's value)")
    best, steps = None, []
    for t in done:
        best = t.value if best is None else max(best, t.value)
        steps.append((t.number, 100 * best))
    if steps:
        axes[0].step(*zip(*steps), where="post", label="best so far")
    default = [t for t in done if t.user_attrs.get("default")]
    if default:
        axes[0].plot([default[0].number], [100 * default[0].value], "*", ms=14, c="red", label="default recipe")
    axes[0].set(xlabel="trial", ylabel=f"{TUNE_METRIC} (%)", title="tuning history")
    axes[0].legend(fontsize=8)
    if not any(t.intermediate_values for t in trials):
        axes[1].text(0.5, 0.5, "no per-epoch values (search.pruner=none)", ha="center", va="center",
                     transform=axes[1].transAxes)
    for t in trials:
        curve = sorted(t.intermediate_values.items())
        if curve:
            axes[1].plot([e for e, _ in curve], [100 * v for _, v in curve], "-o" if len(curve) > 1 else "o", ms=3,
                         c="grey" if t.state == optuna.trial.TrialState.PRUNED else None, alpha=0.7)
    axes[1].set(xlabel="epoch", ylabel=f"{TUNE_METRIC} (%)", title="per-epoch values (grey: pruned)")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
    plt.close(fig)
    return path


def tune_note(result: TuneResult, study: optuna.Study) -> str:
    """The study's dashboard note (markdown): what was tuned, the best recipe against the default one."""
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.recipe.items())
    default = (f"{100 * result.default_score:.2f} %" if result.default_score is not None else "not finished")
    return "\n".join([
        f"## Recipe tuning of `{result.arch_path}`",
        (f"TPE over the training recipe; each trial a stand-alone training scored on held-out training images "
        f"({TUNE_METRIC}, higher is better). Run folder: `{result.run_dir.resolve()}`."), "",
        f"- finished trials: {result.finished} ({result.pruned} pruned)",
        f"- best: trial {result.best_trial}, **{100 * result.score:.2f} %** ({shown})",
        f"- default recipe (trial 0): {default}",
        f"- recipe file: `{result.recipe_path.resolve()}`", "",
        "Plot: tune.png (Study Artifacts)."]) + "\n"


# --- the command ------------------------------------------------------------------------------
def run_tune(cfg: dict[str, Any], arch_path: str) -> TuneResult:
    """Tune the training recipe of the network in ``arch_path`` as ``cfg`` says (see the module doc)."""
    t0 = time.time()
    space, arch = load_arch(arch_path)
    resuming = bool(cfg.get("_run_dir"))
    if not resuming:  # refuse an unusable run folder or storage before loading data
        check_run_location(cfg["runs_root"], cfg.get("run_dir"))
        if cfg.get("storage"):
            check_storage(cfg["storage"])
        else:
            check_writable(cfg["runs_root"], "runs_root")
    search = cfg["search"]
    max_trials, n_startup = int(search["max_trials"]), int(search.get("n_startup_trials", 10))
    evaluator = build_evaluator(cfg)
    check_tunable(evaluator)
    pruner_name = check_pruner(search.get("pruner"))
    if pruner_name != "none" and not reports_epochs(evaluator):
        raise UserError(f"search.pruner={pruner_name}: evaluator {evaluator.name!r} reports no per-epoch values to "
                        "prune on; use search.pruner=none")
    ranges = RecipeRanges(**cfg["tune"])
    default = default_recipe(evaluator, space)
    check_recipe_ranges(ranges, default)
    data = build_data(cfg)
    evaluator.check_data(data)
    evaluator.check(space)
    check_arch_data(space, data, cfg["data"]["name"])
    recorder, opened = open_recorder(cfg, space, "tune")
    cfg.update(opened)  # the caller's configuration learns the run folder (the Ctrl-C message names it)
    run_dir = recorder.run_dir
    if not cfg.get("storage"):
        cfg["storage"] = default_storage(cfg["runs_root"])
    if not resuming:
        recorder.write_config(cfg)
        shutil.copyfile(arch_path, run_dir / ARCH_FILE)
    name = f"tune/{space.name}/{cfg['data']['name']}/{run_dir.name}"
    pruner = make_pruner(pruner_name, getattr(evaluator, "epochs", None), int(search.get("pruner_min_epochs", 1)),
                         int(search.get("pruner_reduction_factor", 4)))
    study = open_tune_study(cfg["storage"], name, int(cfg["seed"]), n_startup, pruner)
    for key, value in {"kind": "tune", "space": space.name, "data": cfg["data"]["name"], "run_dir":
                       str(run_dir.resolve()), "arch": " ".join(arch.values()), "flops": space.flops(arch),
                       "seed": cfg["seed"]}.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    prepare(study, default)
    left = max_trials - len(finished(study))
    print(f"tuning the training recipe of {arch_path} in {run_dir}: {max(0, left)} of {max_trials} trials left "
          f"(study {name!r} in {cfg['storage']})", flush=True)
    if left > 0:
        bar = progress(None, max_trials, "tune trials", cfg.get("progress", True))
        bar.update(max_trials - left)

        def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            write_trials(run_dir, study)
            bar.update(1)
            best = [t.value for t in finished(study) if t.state == optuna.trial.TrialState.COMPLETE]
            if best:
                bar.set_postfix(best=f"{max(best):.4f}", refresh=False)

        try:
            study.optimize(objective(evaluator, space, arch, data, int(cfg["seed"]), ranges, pruner_name != "none"),
                           n_trials=left,
                           callbacks=[after], gc_after_trial=False)
        finally:
            bar.close()
    write_trials(run_dir, study)
    return finish(cfg, run_dir, study, str(cfg.get("arch_json") or arch_path), default, time.time() - t0)


def finish(cfg: dict[str, Any], run_dir: Path, study: optuna.Study, arch_path: str, default: dict[str, Any],
           seconds: float) -> TuneResult:
    """Write ``recipe.yaml`` (the best finished trial's recipe), ``metrics.json``, ``DONE`` and the study's note."""
    from .dashboard import artifact_dir, attach, save_note

    done = [t for t in finished(study) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise UserError(f"study {study.study_name!r} has no trial trained to the end (every trial was pruned or "
                        "failed); raise search.max_trials or use search.pruner=none")
    best = max(done, key=lambda t: (t.value, -t.number))
    base = next((t for t in done if t.user_attrs.get("default")), None)
    recipe = from_params(best.params)
    recipe_path = write_recipe(run_dir / RECIPE_FILE, recipe, arch=arch_path, study=study.study_name,
                               storage=cfg["storage"], trial=best.number, held_out_score=best.value,
                               default_held_out_score=base.value if base is not None else None,
                               trials=len(finished(study)), train_epochs=best.user_attrs.get("train_epochs"),
                               seed=cfg["seed"], made=time.strftime("%Y-%m-%d %H:%M:%S"))
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in finished(study))
    result = TuneResult(run_dir=run_dir, arch_path=arch_path, study=study.study_name, storage=cfg["storage"],
                        recipe=recipe, score=float(best.value), best_trial=best.number, default_recipe=default,
                        default_score=float(base.value) if base is not None else None,
                        finished=len(finished(study)), pruned=pruned, recipe_path=recipe_path, seconds=seconds)
    write_json(run_dir / "metrics.json", {"best_trial": best.number, "held_out_score": result.score,
                                          "recipe": recipe, "default_recipe": default,
                                          "default_held_out_score": result.default_score,
                                          "finished_trials": result.finished, "pruned_trials": pruned,
                                          "study": study.study_name, "storage": cfg["storage"]})
    attach(study, artifact_dir(cfg["storage"], cfg["runs_root"]), run_dir / "tune.png")
    save_note(study, tune_note(result, study))
    write_text(run_dir / "DONE", "finished\n")
    return result


def summary_lines(result: TuneResult, cfg: dict[str, Any]) -> list[str]:
    """What ``xsearch tune`` prints at the end: the best recipe, its score against the default's, what to run."""
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.recipe.items())
    if result.default_score is None:
        versus = "the default recipe's trial did not finish"
    else:
        versus = (f"default recipe {100 * result.default_score:.2f}% "
                  f"({100 * (result.score - result.default_score):+.2f} points)")
    data = f" data={cfg['data']['name']}"
    return [f"xsearch tune finished: {result.run_dir}",
            f"  best recipe    {shown} (trial {result.best_trial})",
            f"  {TUNE_METRIC} {100 * result.score:.2f}% against {versus}",
            (f"  trials         {result.finished} finished ({result.pruned} pruned), "
            f"{result.seconds / 60:.1f} min this session"),
            f"  recipe file    {result.recipe_path}",
            f"  retrain        xsearch train {result.arch_path} recipe={result.recipe_path}{data}",
            f"  dashboard      xsearch dashboard {result.storage}"]
