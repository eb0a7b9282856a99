"""Search spaces: what can be built. ``get_space("mbv3", num_classes=10, in_chans=1)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xsearch.core.errors import UserError

from . import dyhead, focalnet, mbv3, micronet, nasbench_macro  # noqa: F401  (registers the spaces)
from ._base import SKIP, Arch, ChainNetwork, Choice, SearchSpace, format_flops
from ._registry import SPACES

__all__ = ["SKIP", "Arch", "ChainNetwork", "Choice", "SearchSpace", "format_flops",
           "get_space", "list_spaces", "load_arch", "save_arch"]


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


def load_arch(path: str | Path) -> tuple[SearchSpace, Arch]:
    """Read an ``arch.json`` written by a run: returns ``(space, arch)``."""
    path = Path(path)
    if path.is_dir():
        path = path / "arch.json"
    if not path.is_file():
        raise UserError(f"architecture file {str(path)!r} does not exist; pass a run's arch.json or run folder")
    try:
        record = json.loads(path.read_text())
        space = get_space(record["space"], **record.get("space_kwargs", {}))
        arch = space.validate(record["arch"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{str(path)!r} is not a valid arch.json (needs 'space', 'space_kwargs', 'arch'): {exc}") from None
    return space, arch


def save_arch(path: str | Path, space: SearchSpace, arch: Arch, **extra: Any) -> dict[str, Any]:
    """Write ``arch.json``: space, space_kwargs, arch, flops, params, timm_arch_def and ``extra`` fields."""
    record: dict[str, Any] = {
        "space": space.name,
        "space_kwargs": space.space_kwargs,
        "arch": space.validate(arch),
        "flops": space.flops(arch),
        "params": space.params(arch),
        "timm_arch_def": space.to_timm(arch),
    }
    record.update(extra)
    Path(path).write_text(json.dumps(record, indent=2) + "\n")
    return record
