"""Run folders, the Optuna study of each run, tables and plots."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna

from .core.errors import UserError


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


def write_tables(run_dir: Path, history: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> None:
    """``stages.csv`` (staged searches) or ``trials.csv`` (multi-trial searches), and ``epochs.csv``."""
    import pandas as pd

    if history and "query" in history[0]:
        rows = [{"query": h["query"], "score": h["score"], "best_score": h["best_score"], "flops": h["flops"],
                 "params": h["params"], "proposals": h["proposals"], **h["arch"]} for h in history]
        pd.DataFrame(rows).to_csv(run_dir / "trials.csv", index=False)
    elif history:
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
    """``search.png``: per stage, accuracy and alive candidates; per epoch, the losses (or, for a
    multi-trial search, each query's score and the best so far, and score against FLOPs)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "query" in history[0]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        q = [h["query"] for h in history]
        axes[0].plot(q, [h["score"] for h in history], ".", alpha=0.6, label="query")
        axes[0].step(q, [h["best_score"] for h in history], where="post", label="best so far")
        axes[0].set(xlabel="query", ylabel="score", title="search progress")
        axes[0].legend()
        axes[1].scatter([h["flops"] / 1e6 for h in history], [h["score"] for h in history], c=q, cmap="viridis", s=12)
        axes[1].set(xlabel="FLOPs (M MACs)", ylabel="score", title="queried architectures (colour: query)")
    else:
        fig = _plot_stages(plt, history, epochs)
    fig.suptitle(title)
    fig.tight_layout()
    path = run_dir / "search.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_stages(plt: Any, history: list[dict[str, Any]], epochs: list[dict[str, Any]]) -> Any:
    """Staged searches: per stage, accuracy and alive candidates; per epoch, the supernet losses."""
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
    return fig
