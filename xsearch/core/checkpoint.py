"""One checkpoint format for supernet training and retraining: written atomically, validated on resume.

A checkpoint holds everything a training run needs to continue exactly where it stopped::

    {"format": "xsearch-checkpoint", "version": 1, "kind": "search" | "retrain",
     "model": state_dict, "optimizers": {name: state_dict}, "schedulers": {name: state_dict},
     "generator": batch-order generator state, "rng": global RNG states, "state": the run's own progress}

``Resumable.save`` writes it; ``Resumable.restore`` reads it back through ``read_checkpoint``, which
refuses a truncated, corrupt or foreign file with a ``CheckpointError`` naming the file, so a run
never starts over silently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .io import atomic_write

FORMAT = "xsearch-checkpoint"
VERSION = 1
KINDS = ("search", "retrain")


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from: unreadable, truncated, foreign, or not this run's."""


def _broken(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {str(path)!r} {problem}. It cannot be resumed from: delete it to start that phase over "
        "(the rest of the run folder is kept), or resume another run folder.")


def rng_state() -> dict[str, Any]:
    """The global random states (Python, NumPy, torch CPU and CUDA) a training step may draw from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global random states saved by ``rng_state``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any] | None:
    """The validated checkpoint at ``path`` (``None`` when there is no file); ``CheckpointError`` when it is unusable.

    ``kind`` ('search' or 'retrain'), when given, must match what the file says it is.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a truncated or non-torch file
        raise _broken(path, f"is unreadable ({type(exc).__name__}: {exc}); it is truncated, corrupt or not a "
                            "checkpoint") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise _broken(path, f"is not an xsearch checkpoint (no format={FORMAT!r} field; written by another "
                            "program or an older xsearch)")
    if payload.get("version") != VERSION:
        raise _broken(path, f"has format version {payload.get('version')!r}; this xsearch reads version {VERSION}")
    if kind is not None and payload.get("kind") != kind:
        raise _broken(path, f"is a {payload.get('kind')!r} checkpoint where a {kind!r} one was expected")
    missing = [k for k in ("model", "optimizers", "schedulers", "generator", "rng", "state") if k not in payload]
    if missing:
        raise _broken(path, f"lacks {', '.join(missing)}")
    return payload


@dataclass
class Resumable:
    """What a training run checkpoints: its model, optimizers, schedulers and batch-order generator, by name."""

    model: nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any] = field(default_factory=dict)
    generator: torch.Generator = field(default_factory=torch.Generator)

    def save(self, path: str | Path, kind: str, state: dict[str, Any]) -> None:
        """Write every part, the global RNG states and ``state`` (the run's progress) to ``path``, atomically."""
        if kind not in KINDS:
            raise ValueError(f"checkpoint kind must be one of {KINDS}, got {kind!r}")
        payload = {"format": FORMAT, "version": VERSION, "kind": kind, "model": self.model.state_dict(),
                   "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                   "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                   "generator": self.generator.get_state(), "rng": rng_state(), "state": state}
        atomic_write(path, lambda f: torch.save(payload, f), binary=True)

    def restore(self, path: str | Path, kind: str) -> dict[str, Any] | None:
        """Load ``path`` into every part and the global RNG; return the saved ``state`` (``None``: no checkpoint yet)."""
        payload = read_checkpoint(path, kind)
        if payload is None:
            return None
        try:
            self.model.load_state_dict(payload["model"])
            for name, parts, saved in (("optimizer", self.optimizers, payload["optimizers"]),
                                       ("scheduler", self.schedulers, payload["schedulers"])):
                if set(saved) != set(parts):
                    raise ValueError(f"{name}s {sorted(saved)} saved, {sorted(parts)} expected")
                for key, part in parts.items():
                    part.load_state_dict(saved[key])
            self.generator.set_state(payload["generator"])
            set_rng_state(payload["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise _broken(Path(path), f"does not match this run's model or settings ({exc})") from None
        return payload["state"]
