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


def held_in_memory(loader: Callable[..., ImageData]) -> Callable[..., ImageData]:
    """Mark a loader whose images come back as tensors in memory: ``xsearch data folder`` can write them out."""
    loader.in_memory = True  # type: ignore[attr-defined]
    return loader


def in_memory_datasets() -> list[str]:
    """The registered datasets whose loaders hold their images in memory (``held_in_memory``)."""
    return [name for name in DATASETS.names() if getattr(DATASETS.get(name), "in_memory", False)]
