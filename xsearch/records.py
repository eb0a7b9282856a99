"""The run recorder: the one place that writes a run folder and the trials of its Optuna study.

Strategies report stages and queries (``SearchEvents``); the pipeline and ``xsearch train`` hand
over the rest; ``xsearch.core.study`` opens, names and shares the study. Every file is written
atomically (``xsearch.core.io``), so a kill or a full disk leaves the previous version intact, and
every study trial is added once per record id, so a resumed run never duplicates one.

A run folder holds ``config.yaml``, ``search.json`` (the ``SearchResult``), ``search_trials.json``
(the queries a resumed multi-trial search replays), ``stages.csv`` or ``trials.csv``,
``epochs.csv``, ``search.png``, ``arch.json``, ``metrics.json``, ``DONE`` and the strategy's and
evaluator's own checkpoints.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import yaml

from xsearch.search_spaces import Arch, SearchSpace, arch_from_record, arch_record, format_flops
from xsearch.strategies import QueryRecord, SearchResult, SharedStudy, StageRecord

from .core.errors import UserError
from .core.io import atomic_write, check_writable, write_json, write_text
from .core.recipe import RecipeRanges, recipe_key
from .core.recipe import params as recipe_params
from .core.study import distributions, find_trial, query_attrs, trial_attrs

SEARCH_FILE, REPLAY_FILE, ARCH_FILE = "search.json", "search_trials.json", "arch.json"


# --- run folders and studies ------------------------------------------------------------
def check_new_run_dir(run_dir: str | Path) -> None:
    """Refuse a ``run_dir`` that already holds a run or cannot be written."""
    if (Path(run_dir) / "config.yaml").exists():
        raise UserError(f"run_dir {str(run_dir)!r} already holds a run; resume it with resume={run_dir} "
                        "or choose another run_dir")
    check_writable(run_dir, "run_dir")


def check_run_location(runs_root: str | Path, run_dir: str | Path | None = None) -> None:
    """Refuse, before any work, the folder a new run would be written to (``run_dir``, else under ``runs_root``)."""
    if run_dir:
        check_new_run_dir(run_dir)
    else:
        check_writable(runs_root, "runs_root")


def _mkdir(path: Path, what: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{what}={str(path)!r} cannot be created: {exc.strerror or exc}; choose a writable {what}") from None
    return path


def default_storage(runs_root: str | Path) -> str:
    """The SQLite study file every run under ``runs_root`` shares."""
    root = _mkdir(Path(runs_root), "runs_root").resolve()
    return f"sqlite:///{root / 'xsearch.db'}"


def new_run_dir(runs_root: str | Path, space: str, strategy: str, run_dir: str | None = None) -> Path:
    """``<runs_root>/<YYYYmmdd-HHMMSS>-<space>-<strategy>`` (or ``run_dir``), created; never reuses a folder."""
    if run_dir:
        check_new_run_dir(run_dir)
        return _mkdir(Path(run_dir), "run_dir")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    _mkdir(Path(runs_root), "runs_root")
    for i in range(10_000):  # mkdir without exist_ok: workers started in the same second get a folder each
        path = Path(runs_root) / (f"{stamp}-{space}-{strategy}" + (f"-{i}" if i else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"runs_root={str(runs_root)!r}: {str(path)!r} cannot be created: "
                            f"{exc.strerror or exc}; choose a writable runs_root") from None
    raise UserError(f"runs_root={str(runs_root)!r} already holds 10000 runs named {stamp}-{space}-{strategy}-*")


# --- arch.json --------------------------------------------------------------------------
def save_arch(path: str | Path, space: SearchSpace, arch: Arch, **extra: Any) -> dict[str, Any]:
    """Write ``arch.json`` atomically (see ``arch_record`` for its fields); returns the record."""
    record = arch_record(space, arch, **extra)
    write_json(path, record)
    return record


def read_arch_record(path: str | Path) -> dict[str, Any]:
    """The parsed ``arch.json`` at ``path`` (or in run folder ``path``), or a UserError saying what is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / ARCH_FILE
    if not path.is_file():
        raise UserError(f"architecture file {str(path)!r} does not exist; pass a run's arch.json or run folder")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{str(path)!r} is not a valid arch.json: {exc}") from None
    if not isinstance(record, dict):
        raise UserError(f"{str(path)!r} is not a valid arch.json: it holds a {type(record).__name__}, not an object "
                        "with 'space', 'space_kwargs', 'arch'")
    return record


def load_arch(path: str | Path) -> tuple[SearchSpace, Arch]:
    """Read an ``arch.json`` written by a run: returns ``(space, arch)``."""
    return arch_from_record(read_arch_record(path), repr(str(path)))


# --- the recorder -----------------------------------------------------------------------
class RunRecorder:
    """Writes one run folder and its Optuna study; a strategy's ``SearchEvents``.

    ``study`` may be None (``xsearch train`` records no trials). Record ids make trials
    idempotent: a resumed run reports its finished stages and queries again, and each stays one trial.
    ``shared``: several workers share ``study`` (``study=NAME``); this run is one of them, named by
    ``worker.txt`` in its folder (the run folder's name and a random suffix, kept across resumes),
    every trial it adds carries ``worker``, and record ids are unique per worker.
    """

    def __init__(self, run_dir: str | Path, space: SearchSpace, study: optuna.Study | None = None,
                 shared: bool = False) -> None:
        self.run_dir, self.space, self.study = Path(run_dir), space, study
        self._replay: dict[tuple[str, ...], dict[str, Any]] | None = None
        self._replay_seconds = 0.0
        self.worker: str | None = self._worker_id() if shared and study is not None else None
        self.recipe_ranges: RecipeRanges | None = None  # search.tune_recipe: the ranges queries' recipes come from

    def _worker_id(self) -> str:
        path = self.path("worker.txt")
        if path.is_file():
            return path.read_text().strip()
        worker = f"{self.run_dir.name}-{uuid.uuid4().hex[:8]}"
        write_text(path, worker + "\n")
        return worker

    def shared_study(self) -> SharedStudy | None:
        """The study this run shares with other workers (``study=NAME``), or None."""
        return SharedStudy(self.study, self.worker) if self.worker is not None else None

    def path(self, name: str) -> Path:
        return self.run_dir / name

    # --- the study ----------------------------------------------------------------------
    def describe(self, **attrs: Any) -> None:
        """Study-level facts (space, strategy, data, budget...), shown by the dashboard."""
        if self.study is not None:
            for key, value in attrs.items():
                self.study.set_user_attr(key, value)

    def trial(self, arch: Arch, value: float | None, record_id: str, attrs: dict[str, Any],
              study: optuna.Study | None = None, intermediate: list[list[float]] | None = None,
              recipe: dict[str, Any] | None = None) -> optuna.trial.FrozenTrial | None:
        """Add ``arch`` as a finished trial with values (``value``, FLOPs), once per ``record_id``, to the run's
        study (or ``study``: the final networks' study); returns the trial (None without a study).

        ``intermediate``: ``[[epoch, value], ...]``, the trial's per-epoch values (a query of a pruned
        search); ``value`` None: a query stopped early, added in state PRUNED (no values; its attrs
        keep the last value as ``score`` and ``pruned_epoch``). ``recipe``: the training recipe the query
        trained with (``search.tune_recipe``), its settings parameters ``train.<key>`` beside the choices."""
        study = study if study is not None else self.study
        if study is None:
            return None
        found = find_trial(study, record_id, self.worker)
        if found is not None:
            return found
        space = self.space
        attrs = trial_attrs(record_id, space.flops(arch), space.params(arch), self.worker, attrs)
        state = optuna.trial.TrialState.COMPLETE if value is not None else optuna.trial.TrialState.PRUNED
        ranges = self.recipe_ranges or RecipeRanges()
        study.add_trial(optuna.trial.create_trial(
            params={**arch, **recipe_params(recipe or {})},
            distributions={**distributions(space), **ranges.distributions(recipe or {})}, state=state,
            values=[float(value), float(space.flops(arch))] if value is not None else None,
            intermediate_values={int(epoch): float(v) for epoch, v in intermediate or []}, user_attrs=attrs))
        return find_trial(study, record_id, self.worker)  # the latest: other workers may add trials too

    # --- SearchEvents -------------------------------------------------------------------
    def stage(self, record: StageRecord) -> None:
        """A finished stage: its derived architecture becomes a ``derived`` trial, valued by its inherited
        accuracy on all classes (comparable across stages); the stage classes' accuracy is an attribute."""
        alive = record.alive_per_layer
        self.trial(record.derived_arch, record.val_accuracy_all_classes, record.record_id,
                   {"stage": record.stage, "kind": "derived", "num_classes": record.num_classes,
                    "classes": ", ".join(record.classes), "alive_per_layer": alive,
                    "alive_candidates": " ".join(str(n) for n in alive.values()),
                    "alive_mean_per_layer": round(sum(alive.values()) / max(1, len(alive)), 2),
                    "stage_seconds": record.seconds, "stage_classes_accuracy": record.val_accuracy,
                    "val_accuracy_all_classes": record.val_accuracy_all_classes,
                    "flops_readable": format_flops(record.derived_flops)})

    def query(self, record: QueryRecord, seconds: float) -> None:
        """A finished query: a ``query`` trial (PRUNED when the pruner stopped it), and (if new) a line in the replay
        file (its metrics, ``pruned`` included, so a resumed search replays it as it was)."""
        pruned = bool(record.metrics.get("pruned"))
        self.trial(record.arch, None if pruned else record.score, record.record_id, query_attrs(record),
                   intermediate=record.metrics.get("epoch_scores"), recipe=record.recipe)
        replay = self._load_replay()
        key = self._key(record.arch, record.recipe)
        if key not in replay:
            replay[key] = {"arch": record.arch, "metrics": record.metrics,
                           **({"recipe": record.recipe} if record.recipe else {})}
            self._replay_seconds = seconds
            write_json(self.path(REPLAY_FILE), {"queries": list(replay.values()), "seconds": seconds})

    def saved_queries(self) -> tuple[list[dict[str, Any]], float]:
        """The queries of an interrupted multi-trial search and the time they took."""
        return list(self._load_replay().values()), self._replay_seconds

    def _key(self, arch: Arch, recipe: dict[str, Any] | None = None) -> tuple[str, ...]:
        return tuple(arch[label] for label in self.space.labels) + ((recipe_key(recipe),) if recipe else ())

    def _load_replay(self) -> dict[tuple[str, ...], dict[str, Any]]:
        if self._replay is None:
            self._replay = {}
            path = self.path(REPLAY_FILE)
            if path.is_file():
                payload = self._read_json(path, "queries")
                try:
                    self._replay = {self._key(q["arch"], q.get("recipe")): {
                        "arch": q["arch"], "metrics": q["metrics"], **({"recipe": q["recipe"]} if q.get("recipe") else {})}
                        for q in payload["queries"]}
                    self._replay_seconds = float(payload.get("seconds", 0.0))
                except (KeyError, TypeError, ValueError) as exc:
                    raise UserError(f"{str(path)!r} is not a replay file of this run ({type(exc).__name__}: {exc}); "
                                    "move it away to repeat the queries") from None
        return self._replay

    # --- files --------------------------------------------------------------------------
    def write_config(self, cfg: dict[str, Any]) -> None:
        write_text(self.path("config.yaml"), yaml.safe_dump(cfg, sort_keys=False))

    def saved_result(self) -> SearchResult | None:
        """The finished search of an interrupted run (``search.json``), or None."""
        path = self.path(SEARCH_FILE)
        if not path.exists():
            return None
        try:
            return SearchResult.from_dict(self._read_json(path, "search result"))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{str(path)!r} is not a search result ({type(exc).__name__}: {exc}); "
                            "move it away to search again") from None

    def save_result(self, result: SearchResult) -> None:
        write_json(self.path(SEARCH_FILE), result.to_dict())

    def write_search(self, result: SearchResult, title: str) -> None:
        """The search's tables and plot (see ``write_tables``, ``plot_search``)."""
        epochs = result.metrics.get("epochs", [])
        write_tables(self.run_dir, result.history, epochs)
        plot_search(self.run_dir, result.history, epochs, title)

    def save_arch(self, arch: Arch, **extra: Any) -> dict[str, Any]:
        return save_arch(self.path(ARCH_FILE), self.space, arch, **extra)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path("metrics.json"), metrics)

    def finish(self) -> None:
        """Mark the run complete: a resumed run with ``DONE`` has nothing left to do."""
        write_text(self.path("DONE"), "finished\n")

    @staticmethod
    def _read_json(path: Path, what: str) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{str(path)!r} is not a readable {what} file: {exc}") from None


class ReadOnlyRecorder(RunRecorder):
    """The recorder of the processes other than rank 0 under ``torchrun``: reads the run folder, writes nothing.

    They run the same search as rank 0 (same seed, their slices of each batch) and resume from what
    rank 0 wrote (``saved_result``, ``saved_queries``, checkpoints: the run folder must be on a file
    system every node sees to resume a run across nodes), but only rank 0 writes the folder and the study.
    """

    def __init__(self, run_dir: str | Path, space: SearchSpace) -> None:
        super().__init__(run_dir, space, study=None)
        self._load_replay()  # now, before rank 0 can write new queries: a resumed run's queries only

    def query(self, record: QueryRecord, seconds: float) -> None:
        pass

    def write_config(self, cfg: dict[str, Any]) -> None:
        pass

    def save_result(self, result: SearchResult) -> None:
        pass

    def write_search(self, result: SearchResult, title: str) -> None:
        pass

    def save_arch(self, arch: Arch, **extra: Any) -> dict[str, Any]:
        return arch_record(self.space, arch, **extra)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


# --- tables and plots -------------------------------------------------------------------
def write_tables(run_dir: Path, history: list[Any], epochs: list[dict[str, Any]]) -> None:
    """``stages.csv`` (staged searches) or ``trials.csv`` (multi-trial searches), and ``epochs.csv``."""
    import pandas as pd

    stages = [h for h in history if isinstance(h, StageRecord)]
    queries = [h for h in history if isinstance(h, QueryRecord)]
    if queries:
        pruning = any(h.metrics.get("pruned") for h in queries)  # a pruned search: the epoch each query stopped at
        rows = [{"query": h.query, "score": h.score, "best_score": h.best_score, "flops": h.flops,
                 "params": h.params, "proposals": h.proposals,
                 **({"pruned_epoch": h.metrics.get("pruned_epoch")} if pruning else {}), **h.arch,
                 **recipe_params(h.recipe or {})} for h in queries]
        _write_csv(run_dir / "trials.csv", pd.DataFrame(rows))
    if stages:
        rows = [{"stage": h.stage, "num_classes": h.num_classes, "classes": ";".join(h.classes),
                 "alive_total": sum(h.alive_per_layer.values()),
                 "alive_mean_per_layer": sum(h.alive_per_layer.values()) / len(h.alive_per_layer),
                 "seconds": h.seconds, "val_accuracy": h.val_accuracy,
                 "val_accuracy_all_classes": h.val_accuracy_all_classes, "derived_flops": h.derived_flops}
                for h in stages]
        _write_csv(run_dir / "stages.csv", pd.DataFrame(rows))
    if epochs:
        _write_csv(run_dir / "epochs.csv", pd.DataFrame(epochs))


def _write_csv(path: Path, frame: Any) -> None:
    write_text(path, frame.to_csv(index=False))


def plot_search(run_dir: Path, history: list[Any], epochs: list[dict[str, Any]], title: str) -> Path | None:
    """``search.png``: per stage, accuracy and alive candidates; per epoch, the losses (or, for a
    multi-trial search, each query's score and the best so far, and score against FLOPs)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queries = [h for h in history if isinstance(h, QueryRecord)]
    stages = [h for h in history if isinstance(h, StageRecord)]
    if stages:  # a staged search (its derivation queries, if any, in a fourth panel)
        fig = _plot_stages(plt, stages, epochs, queries)
    else:
        fig = _plot_queries(plt, queries)
    fig.suptitle(title)
    fig.tight_layout()
    path = run_dir / "search.png"
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100), binary=True)
    plt.close(fig)
    return path


def _plot_queries(plt: Any, history: list[QueryRecord]) -> Any:
    """Multi-trial searches: each query's score and the best so far; score against FLOPs."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    q = [h.query for h in history]
    pruned = [h for h in history if h.metrics.get("pruned")]
    axes[0].plot([h.query for h in history if not h.metrics.get("pruned")],
                 [h.score for h in history if not h.metrics.get("pruned")], ".", alpha=0.6, label="query")
    if pruned:  # stopped early: their last value, not a result
        axes[0].plot([h.query for h in pruned], [h.score for h in pruned], "x", color="grey", alpha=0.6,
                     label="pruned (last value)")
    axes[0].step(q, [h.best_score for h in history], where="post", label="best so far")
    axes[0].set(xlabel="query", ylabel="score", title="search progress")
    axes[0].legend()
    axes[1].scatter([h.flops / 1e6 for h in history], [h.score for h in history], c=q, cmap="viridis", s=12)
    axes[1].set(xlabel="FLOPs (M MACs)", ylabel="score", title="queried architectures (colour: query)")
    return fig


def _plot_stages(plt: Any, history: list[StageRecord], epochs: list[dict[str, Any]],
                 queries: list[QueryRecord] | None = None) -> Any:
    """Staged searches: per stage, accuracy and alive candidates; per epoch, the supernet losses; and the
    derivation's queries (inherited accuracy against FLOPs) when the search derived by accuracy."""
    stages = [h.stage for h in history]
    fig, axes = plt.subplots(1, 4 if queries else 3, figsize=(18 if queries else 14, 4))
    if queries:
        ax = axes[3]
        ax.scatter([q.flops / 1e6 for q in queries], [100 * q.score for q in queries], c=[q.query for q in queries],
                   cmap="viridis", s=14)
        best = max(queries, key=lambda q: q.score)
        ax.scatter([best.flops / 1e6], [100 * best.score], marker="*", s=120, c="red", label="chosen")
        ax.set(xlabel="FLOPs (M MACs)", ylabel="held-out accuracy (%), all classes",
               title=f"derivation: {len(queries)} queries, inherited weights")
        ax.legend()
    ax = axes[0]
    ax.plot(stages, [100 * h.val_accuracy for h in history], "o-", label="stage classes")
    ax.plot(stages, [100 * h.val_accuracy_all_classes for h in history], "s--", label="all classes")
    for h in history:
        ax.annotate(f"{h.num_classes} cls", (h.stage, 100 * h.val_accuracy), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax.set(xlabel="stage", ylabel="held-out accuracy (%)", title="derived network, inherited weights")
    ax.set_xticks(stages)
    ax.legend()
    ax = axes[1]
    ax.bar(stages, [sum(h.alive_per_layer.values()) / len(h.alive_per_layer) for h in history])
    ax.set(xlabel="stage", ylabel="alive candidates per layer", title="candidate set during the stage")
    ax.set_xticks(stages)
    ax = axes[2]
    search = [e for e in epochs if e.get("phase") == "search"]
    if search:
        xs = range(1, len(search) + 1)
        ax.plot(xs, [e["train_loss"] for e in search], "o-", label="weights (train half)")
        ax.plot(xs, [e["arch_loss"] for e in search], "s-", label="logits (held-out half)")
        ax.set(xlabel="search epoch", ylabel="loss", title="supernet losses (classes grow by stage)")
        ax.legend()
    return fig
