"""The registry of datasets (``data=NAME``) and ``load_dataset``, the one way to load one by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xsearch.core.data import ImageData
from xsearch.core.registry import Registry

DATASETS: Registry[Callable[..., ImageData]] = Registry("dataset")


def load_dataset(name: str, root: str | None = None, **kwargs: Any) -> ImageData:
    """Load dataset ``name`` (see ``DATASETS.names()``) from ``root``."""
    return DATASETS.get(name)(root=root, **kwargs)
