"""Atomic file writes (a temporary file beside the target, then ``os.replace``) and the check that a folder is writable.

A kill or a full disk during a write leaves the previous file intact, never a half-written one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError


def atomic_write(path: str | Path, write: Callable[[Any], None], binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then move it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def write_json(path: str | Path, payload: Any) -> Path:
    """``payload`` as indented JSON (non-JSON values through ``str``), atomically."""
    return write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def check_writable(path: str | Path, what: str) -> None:
    """Refuse (UserError) a folder that cannot be created or written, before any work is done.

    Probes the nearest existing folder with a temporary subfolder: permission bits alone do not
    tell (root may write anywhere, yet not into /proc or a read-only disk).
    """
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what}={str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder; "
                        f"choose another {what}")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as exc:
        raise UserError(f"{what}={str(path)!r} cannot be written ({exc.strerror or exc} in {str(existing)!r}); "
                        f"choose a writable {what}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
