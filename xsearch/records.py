"""Run folders, the Optuna study of each run, tables and plots."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna

from .errors import UserError


def default_storage(runs_root: str | Path) -> str:
    root = Path(runs_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'xsearch.db'}"


def new_run_dir(runs_root: str | Path, space: str, strategy: str, run_dir: str | None = None) -> Path:
    """``<runs_root>/<YYYYmmdd-HHMMSS>-<space>-<strategy>`` (or ``run_dir``), created; never reuses a folder."""
    if run_dir:
        path = Path(run_dir)
        if (path / "config.yaml").exists():
            raise UserError(f"run_dir {str(path)!r} already holds a run; resume it with resume={path} "
                            "or choose another run_dir")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(runs_root) / f"{stamp}-{space}-{strategy}"
        i = 1
        while path.exists():
            path = Path(runs_root) / f"{stamp}-{space}-{strategy}-{i}"
            i += 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_study(storage: str, name: str) -> optuna.Study:
    """The run's study: two objectives (accuracy up, FLOPs down); created or loaded."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"],
                                   load_if_exists=True)
    except (ValueError, ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"cannot open Optuna storage {storage!r}: {exc}. Use an Optuna storage URL such as "
                        "sqlite:///runs/xsearch.db or postgresql://user:pass@host/db") from None
    except Exception as exc:  # SQLAlchemy errors: bad URL, unreachable server
        raise UserError(f"cannot open Optuna storage {storage!r}: {type(exc).__name__}: {exc}") from None


def write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def write_tables(run_dir: Path, history: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> None:
    """``stages.csv`` and ``epochs.csv`` beside the JSON records."""
    import pandas as pd

    if history:
        rows = [{"stage": h["stage"], "num_classes": h["num_classes"], "classes": ";".join(h["classes"]),
                 "alive_total": sum(h["alive_per_layer"].values()),
                 "alive_mean_per_layer": sum(h["alive_per_layer"].values()) / len(h["alive_per_layer"]),
                 "seconds": h["seconds"], "val_accuracy": h["val_accuracy"],
                 "val_accuracy_all_classes": h["val_accuracy_all_classes"], "derived_flops": h["derived_flops"]}
                for h in history]
        pd.DataFrame(rows).to_csv(run_dir / "stages.csv", index=False)
    if epochs:
        pd.DataFrame(epochs).to_csv(run_dir / "epochs.csv", index=False)


def plot_search(run_dir: Path, history: list[dict[str, Any]], epochs: list[dict[str, Any]], title: str) -> Path | None:
    """``search.png``: per stage, accuracy and alive candidates; per epoch, the losses."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [h["stage"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    ax.plot(stages, [100 * h["val_accuracy"] for h in history], "o-", label="stage classes")
    ax.plot(stages, [100 * h["val_accuracy_all_classes"] for h in history], "s--", label="all classes")
    for h in history:
        ax.annotate(f"{h['num_classes']} cls", (h["stage"], 100 * h["val_accuracy"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax.set(xlabel="stage", ylabel="held-out accuracy (%)", title="derived network, inherited weights")
    ax.set_xticks(stages)
    ax.legend()
    ax = axes[1]
    ax.bar(stages, [sum(h["alive_per_layer"].values()) / len(h["alive_per_layer"]) for h in history])
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
    fig.suptitle(title)
    fig.tight_layout()
    path = run_dir / "search.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
