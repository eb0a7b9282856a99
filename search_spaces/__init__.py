"""Search spaces: what can be built. ``get_space("mbv3", num_classes=10, in_chans=1)``."""

from __future__ import annotations

import inspect
from typing import Any

from xsearch.core.errors import SettingError, UserError

from . import dyhead, focalnet, mbv3, micronet, nasbench_macro  # noqa: F401  (registers the spaces)
from ._base import (
    COSTS,
    SKIP,
    Arch,
    ChainNetwork,
    Choice,
    Constraints,
    FeatureNetwork,
    SearchSpace,
    as_constraints,
    format_flops,
)
from ._registry import SPACES

__all__ = [
    "COSTS",
    "SKIP",
    "Arch",
    "ChainNetwork",
    "Choice",
    "Constraints",
    "FeatureNetwork",
    "SearchSpace",
    "arch_from_record",
    "arch_record",
    "as_constraints",
    "format_flops",
    "get_space",
    "list_spaces",
]


def list_spaces() -> list[str]:
    """Names of the registered spaces."""
    return SPACES.names()


def get_space(name: str, **kwargs: Any) -> SearchSpace:
    """Build space ``name`` with its keyword arguments (e.g. ``num_classes``, ``in_chans``, ``image_size``).

    An argument the space does not take, or a setting it refuses (``SettingError``), is a UserError;
    any other exception from the constructor is a bug and keeps its traceback.
    """
    cls = SPACES.get(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        raise UserError(f"space {name!r} got invalid arguments {kwargs}: {exc}") from None
    try:
        return cls(**kwargs)
    except SettingError as exc:
        raise UserError(f"space {name!r}: {exc}") from None


def arch_record(space: SearchSpace, arch: Arch, **extra: Any) -> dict[str, Any]:
    """What ``arch.json`` holds for ``arch``: space, space_kwargs, arch, flops, params, timm_arch_def and ``extra``."""
    record: dict[str, Any] = {
        "space": space.name,
        "space_kwargs": space.space_kwargs,
        "arch": space.validate(arch),
        "flops": space.flops(arch),
        "params": space.params(arch),
        "timm_arch_def": space.to_timm(arch),
    }
    record.update(extra)
    return record


def arch_from_record(record: Any, source: str = "the architecture record") -> tuple[SearchSpace, Arch]:
    """``(space, arch)`` back from an ``arch_record`` (e.g. a run's parsed ``arch.json``); ``source`` names it in errors."""
    try:  # the record is a file's content: settings of any type a space may fail on
        space = get_space(record["space"], **record.get("space_kwargs", {}))
        arch = space.validate(record["arch"])
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise UserError(f"{source} is not a valid arch.json (needs 'space', 'space_kwargs', 'arch'): "
                        f"{type(exc).__name__}: {exc}") from None
    return space, arch
