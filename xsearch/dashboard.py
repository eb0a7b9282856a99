"""What the Optuna dashboard shows of the runs, and ``xsearch dashboard``'s checks before it serves.

Two kinds of study (see the README, "The dashboard"):

- the run's study (``<run name>``, or ``study=NAME`` when workers share one) holds the search's
  trials only: for a supernet strategy (danas, dnas, spos) each stage's derived network and the
  derivation's queries, valued by their inherited accuracy on all classes, so they compare across
  stages; for a multi-trial strategy its queries, valued by the evaluator's score;
- the final study (``retrained/<space>/<data>/<evaluator>``, ``evaluated/...`` for a table or a
  proxy) holds one trial per run: the found network retrained from scratch, valued by its test
  accuracy, so the runs' final networks form one comparable front.

Every study has metric names (``xsearch.core.study`` opens the studies and names their values).
A run's study gets a note (markdown: the stage table or the query summary, and the result) and its
plots (``search.png``, ``predictions.png``) as artifacts in a ``FileSystemArtifactStore``
(``artifacts/`` beside the SQLite study file, else under ``runs_root``); ``xsearch dashboard``
serves the same store.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from .core.errors import UserError
from .core.study import (
    FLOPS,
    compatible_space,
    distributions,
    final_metric,
    final_study_name,
    find_trial,
    open_storage,
    open_study,
    sqlite_path,
)

if TYPE_CHECKING:  # the dashboard command imports this module: no torch at import time
    from xsearch.strategies import QueryRecord, StageRecord

ARTIFACTS = "artifacts"


# --- artifacts --------------------------------------------------------------------------
def artifact_dir(storage: str, runs_root: str | Path) -> Path:
    """Where the runs' plots are kept for the dashboard: ``artifacts/`` beside a SQLite study file, else
    ``<runs_root>/artifacts``."""
    path = sqlite_path(storage)
    return (path.parent if path is not None else Path(runs_root)) / ARTIFACTS


def attach(study: optuna.Study, store_dir: Path, path: Path, trial: optuna.trial.FrozenTrial | None = None,
           storage: optuna.storages.BaseStorage | None = None) -> bool:
    """Upload file ``path`` as an artifact of ``trial`` (or of the study) once: a file of the same name
    already attached is kept. ``storage``: the study's (``open_storage``), needed for a ``trial``. Returns
    whether it uploaded."""
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

    if not path.is_file():
        return False
    target = trial if trial is not None else study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if any(m.filename == path.name for m in get_all_artifact_meta(target, storage=storage)):
            return False
        store_dir.mkdir(parents=True, exist_ok=True)
        upload_artifact(artifact_store=FileSystemArtifactStore(store_dir), file_path=str(path),
                        study_or_trial=target, storage=storage)
    return True


# --- notes ------------------------------------------------------------------------------
def format_flops(n: int) -> str:
    from xsearch.search_spaces import format_flops as fmt

    return fmt(n)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f} %"


def _value(value: float, metric: str) -> str:
    return _pct(value) if "accuracy" in metric or "AP" in metric else f"{value:.4g}"


def _classes(names: list[str], shown: int = 10) -> str:
    text = ", ".join(names[:shown]) + (f", ... (+{len(names) - shown})" if len(names) > shown else "")
    return f"{len(names)}: {text}".replace("|", "/")


def stage_table(stages: list[StageRecord]) -> str:
    """The DA-NAS stages as a markdown table: classes, alive candidates per layer, accuracies, FLOPs, time."""
    lines = [("| stage | classes | alive candidates per layer | inherited accuracy, stage classes | "
             "inherited accuracy, all classes | derived FLOPs | seconds |"), "|---|---|---|---|---|---|---|"]
    for h in stages:
        alive = list(h.alive_per_layer.values())
        lines.append(f"| {h.stage} | {_classes(h.classes)} | {' '.join(map(str, alive))} "
                     f"(mean {sum(alive) / len(alive):.1f}) | {_pct(h.val_accuracy)} | "
                     f"{_pct(h.val_accuracy_all_classes)} | {format_flops(h.derived_flops)} | {h.seconds:.0f} |")
    return "\n".join(lines)


def query_summary(queries: list[QueryRecord], metric: str, top: int = 5) -> str:
    """The queries in a few lines: how many, the best, and a table of the ``top`` best (pruned ones are not)."""
    finished = [q for q in queries if not q.metrics.get("pruned")] or queries
    best = sorted(finished, key=lambda q: q.score, reverse=True)[:top]
    pruned = len(queries) - len(finished)
    lines = [(f"{len(queries)} queries ({queries[0].source or 'search'}"
             f"{f', {pruned} pruned early' if pruned else ''}); best: query {best[0].query}, "
             f"{metric} {_value(best[0].score, metric)} at {format_flops(best[0].flops)} FLOPs."), "",
             f"| query | {metric} | FLOPs | architecture |", "|---|---|---|---|"]
    lines += [f"| {q.query} | {_value(q.score, metric)} | {format_flops(q.flops)} | {' '.join(q.arch.values())} |"
              for q in best]
    return "\n".join(lines)


def run_note(run_dir: Path, facts: dict[str, Any], history: list[Any], metric: str,
             final: dict[str, Any] | None = None, warning: str | None = None) -> str:
    """The run study's note (markdown): what the run is, a warning if its supernet did not learn, its stages or queries, its result."""
    known = ", ".join(f"{k} **{v}**" for k, v in facts.items() if v is not None)
    parts = [f"## Run {run_dir.name}", f"{known}. Run folder: `{run_dir.resolve()}`.", ""]
    if warning:
        parts += [f"> **Warning:** {warning}", ""]
    parts += [f"Trial values: **{metric}** (higher is better) and **{FLOPS}** (multiply-accumulates, lower is better)."]
    stages = [h for h in history if getattr(h, "kind", None) == "stage"]  # StageRecord, QueryRecord rows
    queries = [h for h in history if getattr(h, "kind", None) == "query"]
    if stages:
        parts += [("Each stage's derived network is valued by its held-out accuracy on **all** classes with the "
                  "supernet's weights (batch norm recalibrated), so stages compare; the accuracy on the stage's "
                  "classes is the trial attribute `stage_classes_accuracy`."), "", "### Stages", "",
                  stage_table(stages)]
    if queries:
        parts += ["", "### Queries" if not stages else "### Derivation queries (inherited weights, all classes)", "",
                  query_summary(queries, metric)]
    if final is not None:
        parts += ["", "### Result", "",
                  (f"The found network ({' '.join(final['arch'].values())}), {final['kind']}: "
                  f"**{final['metric']} {_value(final['value'], final['metric'])}** at "
                  f"{format_flops(final['flops'])} FLOPs. It is a trial of study `{final['study']}`, where every "
                  "run's final network is compared with the others.")]
    plots = [name for name in ("search.png", "predictions.png") if (run_dir / name).is_file()]
    if plots:
        parts += ["", f"Plots: {', '.join(plots)} (Study Artifacts, at the foot of the study's main page)."]
    return "\n".join(parts) + "\n"


FINAL_NOTE = """## {name}

One trial per run: the network the run found, {how}, valued by **{metric}** and **{flops}**, so the runs'
final networks form one front. Each trial's attributes name its run (`run`, `run_dir`, `strategy`,
`search_seconds`); its artifacts hold that run's plots. The search trials (inherited or held-out scores)
stay in each run's own study.
"""


def save_note(study: optuna.Study, body: str) -> None:
    """Replace the study's dashboard note with ``body`` (markdown) unless it already reads so."""
    from optuna_dashboard import get_note
    from optuna_dashboard import save_note as _save

    if get_note(study) != body:
        _save(study, body)


# --- what a run publishes ----------------------------------------------------------------
def _facts(cfg: dict[str, Any], space: str, data: str | None) -> dict[str, Any]:
    budget = cfg["constraints"]["flops"]
    return {"space": space, "strategy": cfg["strategy"]["name"], "data": data or "none (table)",
            "evaluator": cfg["evaluator"]["name"], "budget": cfg.get("budget"),
            "FLOPs budget": format_flops(budget) if budget else None, "seed": cfg.get("seed")}


def publish_run(recorder: Any, cfg: dict[str, Any], result: Any, metric: str, data: str | None,
                final: dict[str, Any] | None = None) -> None:
    """The run study's note (stage table or query summary, and ``final`` once known) and its plots as
    artifacts. Nothing without a study (``xsearch train``, ranks other than 0 under torchrun)."""
    study = recorder.study
    if study is None:
        return
    store = artifact_dir(cfg["storage"], cfg["runs_root"])
    for name in ("search.png", "predictions.png"):
        attach(study, store, recorder.path(name))
    note = run_note(recorder.run_dir, _facts(cfg, recorder.space.name, data), result.history, metric, final,
                    result.metrics.get("warning"))
    if getattr(recorder, "worker", None):  # workers sharing a study: each one's note replaces the last one's
        note = note.replace(f"## Run {recorder.run_dir.name}", f"## Worker {recorder.worker} (latest to write)", 1)
    save_note(study, note)


def _add_with_artifacts(study: optuna.Study, storage: optuna.storages.BaseStorage, arch: dict[str, str],
                        params: dict[str, Any], values: list[float], attrs: dict[str, Any], files: list[Path],
                        store: Path) -> None:
    """Add a finished trial with ``files`` as its artifacts, once per ``attrs["record_id"]`` (``params``: its
    distributions; ``storage``: the study's).

    Optuna attaches artifacts only to a running trial: the trial is added running, gets its files, then
    its values (``study.tell``). A trial left running by a killed run is finished by the resumed one.
    """
    trial = find_trial(study, attrs["record_id"])
    if trial is not None and trial.state.is_finished():
        return
    if trial is None:
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, params=dict(arch),
                                                  distributions=params, user_attrs=attrs))
        trial = find_trial(study, attrs["record_id"])
    for path in files:
        attach(study, store, path, trial, storage)
    study.tell(trial.number, values)


def final_study(recorder: Any, cfg: dict[str, Any], evaluator: Any, data: str | None,
                kind: str) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """The study of every run's final networks on this space, data and evaluator (``final_study_name``; a
    space with other choices under the same name gets ``~<hash of its settings>``), created or loaded, and
    its storage."""
    import hashlib
    import json

    space = recorder.space
    metric = final_metric(evaluator)
    name = final_study_name(kind, space.name, data, evaluator)
    storage = open_storage(cfg["storage"])
    study = open_study(storage, name, [metric, FLOPS])
    if not compatible_space(study, distributions(space)):  # the same space name, other choices (space.* settings)
        kwargs = json.dumps(getattr(space, "space_kwargs", {}), sort_keys=True, default=str)
        name = f"{name}~{hashlib.sha1(kwargs.encode()).hexdigest()[:8]}"
        study = open_study(storage, name, [metric, FLOPS])
    return study, storage


def record_final(recorder: Any, cfg: dict[str, Any], evaluator: Any, data: str | None, result: Any,
                 metrics: dict[str, Any], value: float, kind: str) -> dict[str, Any] | None:
    """Add the run's found network (retrained, or looked up) to the final study of its space, data and
    evaluator, with the run's plots as the trial's artifacts; returns what the run's note says of it."""
    import json

    if recorder.study is None:
        return None
    space = recorder.space
    metric = final_metric(evaluator)
    study, storage = final_study(recorder, cfg, evaluator, data, kind)
    name = study.study_name
    kwargs = json.dumps(getattr(space, "space_kwargs", {}), sort_keys=True, default=str)
    run_dir = recorder.run_dir.resolve()
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    attrs = {**scalars, "record_id": str(run_dir), "kind": kind, "run": run_dir.name, "run_dir": str(run_dir),
             "run_study": recorder.study.study_name, "strategy": cfg["strategy"]["name"],
             "search_seconds": result.search_seconds, "flops": space.flops(result.arch),
             "params": space.params(result.arch), "space_kwargs": kwargs}
    _add_with_artifacts(study, storage, result.arch, distributions(space), [value, float(space.flops(result.arch))],
                        attrs, [recorder.path(f) for f in ("search.png", "predictions.png")],
                        artifact_dir(cfg["storage"], cfg["runs_root"]))
    how = "retrained from scratch" if kind == "retrained" else f"scored by evaluator {evaluator.name}"
    save_note(study, FINAL_NOTE.format(name=name, how=how, metric=metric, flops=FLOPS))
    for key, fact in (("space", space.name), ("data", data or "none (table)"), ("evaluator", evaluator.name)):
        if study.user_attrs.get(key) != fact:
            study.set_user_attr(key, fact)
    recorder.describe(final_study=name)
    return {"arch": result.arch, "kind": how, "metric": metric, "value": value, "flops": space.flops(result.arch),
            "study": name}


# --- xsearch dashboard: checks before serving ---------------------------------------------
def check_port(host: str, port: Any) -> int:
    """``port`` as an int in 1..65535 that ``host`` can listen on now, or a UserError saying why not."""
    try:
        number = int(port)
    except (TypeError, ValueError):
        raise UserError(f"port must be a number from 1 to 65535, got {port!r}; e.g. port=8080") from None
    if not 1 <= number <= 65535:
        raise UserError(f"port={number} is outside 1..65535; choose e.g. port=8080")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, number))
        except socket.gaierror as exc:
            raise UserError(f"host={host!r} is not a name or address of this machine ({exc.strerror}); "
                            "use host=127.0.0.1 (this machine only) or host=0.0.0.0 (every interface)") from None
        except PermissionError:
            raise UserError(f"port {number} needs administrator rights on {host}; choose a port above 1023, "
                            "e.g. port=8080") from None
        except OSError as exc:
            if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise UserError(f"port {number} on {host} is already in use (another dashboard?); choose another, "
                                f"e.g. port={number + 1 if number < 65535 else 8080}") from None
            raise UserError(f"cannot listen on {host}:{number}: {exc.strerror or exc}; choose another host= or "
                            "port=") from None
    return number


def _hide_password(url: str) -> str:
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def served_storage(storage: str) -> tuple[optuna.storages.BaseStorage, list[str]]:
    """The dashboard's storage and its study names; a UserError when it is missing, unreadable or empty."""
    shown = _hide_password(storage)
    path = sqlite_path(storage)
    if storage.startswith("sqlite:") and path is not None:
        if not path.is_file():
            raise UserError(f"no SQLite study file at {str(path)!r}; run 'xsearch run' first (it writes "
                            "runs/xsearch.db) or pass the file a run printed")
        try:  # read-only: never turn a stranger's file into a study database
            with sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True) as db:
                db.execute("SELECT count(*) FROM studies").fetchone()
        except sqlite3.Error as exc:
            raise UserError(f"{str(path)!r} is not an Optuna study file ({exc}); pass the xsearch.db a run "
                            "wrote") from None
    kwargs: dict[str, Any] = {}
    if storage.startswith(("postgresql", "mysql")):
        kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": 10}}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        rdb = optuna.storages.RDBStorage(storage, **kwargs)
        names = [s.study_name for s in rdb.get_all_studies()]
    except (ValueError, ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"cannot open Optuna storage {shown!r}: {exc}. Use a storage URL such as "
                        "sqlite:///runs/xsearch.db or postgresql://user:pass@host/db") from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy errors: bad URL, unreachable server, bad credentials
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"cannot open Optuna storage {shown!r}: {type(exc).__name__}: {first}. Check the URL, "
                        "that the server is up and reachable, and the credentials") from None
    if not names:
        raise UserError(f"storage {shown!r} holds no studies yet; run 'xsearch run storage={shown}' first")
    return rdb, names
