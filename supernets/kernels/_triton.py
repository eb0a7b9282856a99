"""Lazy Triton plumbing shared by the kernel modules.

The kernel modules do not import Triton themselves (PyTorch may, on its own): kernels are plain
functions wrapped by ``jit``, which imports Triton and calls ``triton.jit`` on their first launch. Triton decides at ``triton.jit`` time
whether a kernel runs compiled or through its interpreter (``TRITON_INTERPRET=1``), so a process may
set that variable any time before its first launch (tests do, to run the kernels on the CPU).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch


@functools.cache
def triton_importable() -> bool:
    """True when ``import triton`` works (cached; imports Triton on first call)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 (ImportError, or a broken install)
        return False
    return True


def interpret_mode() -> bool:
    """True when ``TRITON_INTERPRET`` asks for Triton's interpreter (kernels then run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


def triton_available() -> bool:
    """True when Triton imports and can run here: CUDA is available, or ``TRITON_INTERPRET=1``."""
    return triton_importable() and (interpret_mode() or torch.cuda.is_available())


class _DeferredKernel:
    """A kernel whose ``triton.jit`` happens at its first launch (``kernel[grid](...)``)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self._jitted: Any = None
        functools.update_wrapper(self, fn)

    def _compiled(self) -> Any:
        if self._jitted is None:
            import triton
            import triton.language as tl

            # kernels name the language ``tl`` as a module global that stays unbound until now
            self.fn.__globals__["tl"] = tl
            self._jitted = triton.jit(self.fn)
        return self._jitted

    def __getitem__(self, grid: Any) -> Any:
        return self._compiled()[grid]


def jit(fn: Callable) -> _DeferredKernel:
    """Decorator: ``triton.jit`` deferred to the first launch (see the module docstring)."""
    return _DeferredKernel(fn)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pixel_block(n: int, cap: int = 1024) -> int:
    """A power-of-two block covering ``n`` elements, at least 16 and at most ``cap``."""
    return max(16, min(cap, 1 << max(0, (n - 1).bit_length())))


def resolve_backend(backend: str, *tensors: torch.Tensor) -> str:
    """``"triton"`` or ``"torch"`` for ``backend`` in ``auto | triton | torch``.

    ``auto`` picks Triton for CUDA tensors when Triton imports, else PyTorch. ``triton`` insists:
    it raises when Triton is missing, or when the tensors are on the CPU outside interpreter mode.
    """
    if backend == "torch":
        return "torch"
    on_cuda = all(t.is_cuda for t in tensors)
    if backend == "auto":
        return "triton" if on_cuda and triton_importable() else "torch"
    if backend != "triton":
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if not triton_importable():
        raise RuntimeError("backend='triton' but triton is not installed")
    if not on_cuda and not interpret_mode():
        raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before the first launch")
    return "triton"


def ieee_dot() -> bool:
    """Whether ``tl.dot`` should use exact float32 (no TF32), following PyTorch's matmul setting."""
    return not torch.backends.cuda.matmul.allow_tf32
