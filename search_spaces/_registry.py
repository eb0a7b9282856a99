"""The registry of search spaces."""

from __future__ import annotations

from xsearch.core.registry import Registry

SPACES: Registry = Registry("space")
