"""Search spaces: what can be built. ``get_space("mbv3", num_classes=10, in_chans=1)``."""

from __future__ import annotations

from typing import Any

from xsearch.core.errors import UserError

from . import dyhead, focalnet, mbv3, micronet, nasbench_macro  # noqa: F401  (registers the spaces)
from ._base import SKIP, Arch, ChainNetwork, Choice, FeatureNetwork, SearchSpace, format_flops
from ._registry import SPACES

__all__ = [
    "SKIP",
    "Arch",
    "ChainNetwork",
    "Choice",
    "FeatureNetwork",
    "SearchSpace",
    "arch_from_record",
    "arch_record",
    "format_flops",
    "get_space",
    "list_spaces",
]


def list_spaces() -> list[str]:
    """Names of the registered spaces."""
    return SPACES.names()


def get_space(name: str, **kwargs: Any) -> SearchSpace:
    """Build space ``name`` with its keyword arguments (e.g. ``num_classes``, ``in_chans``, ``image_size``)."""
    cls = SPACES.get(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"space {name!r} got invalid arguments {kwargs}: {exc}") from None
    except ValueError as exc:
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
    try:
        space = get_space(record["space"], **record.get("space_kwargs", {}))
        arch = space.validate(record["arch"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{source} is not a valid arch.json (needs 'space', 'space_kwargs', 'arch'): "
                        f"{type(exc).__name__}: {exc}") from None
    return space, arch
