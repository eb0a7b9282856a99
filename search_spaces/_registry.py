"""The registry of search spaces."""

from __future__ import annotations

from xsearch._registry import Registry

SPACES: Registry = Registry("space")
