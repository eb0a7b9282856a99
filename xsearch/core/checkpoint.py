"""Checkpoints: written atomically, read back on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .io import atomic_write


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically, so a kill mid-write never leaves a broken checkpoint."""
    atomic_write(path, lambda f: torch.save(payload, f), binary=True)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
