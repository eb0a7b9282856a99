"""The one seam through which a mixed layer runs its candidates.

``naive_mixed_forward`` runs each active candidate and sums the weighted outputs. A fused
implementation (merged depthwise kernels, horizontally fused candidates, Triton kernels) plugs in
by replacing a supernet's ``executor`` with a function of the same signature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from .mixed import MixedLayer

Executor = Callable[["MixedLayer", torch.Tensor, torch.Tensor | None, list[int]], torch.Tensor]


def naive_mixed_forward(layer: "MixedLayer", x: torch.Tensor, weights: torch.Tensor | None,
                        active: list[int]) -> torch.Tensor:
    """Sum over ``active`` candidates of ``weights[i] * candidate_i(x)`` (no weighting when ``weights`` is None)."""
    out = None
    for i in active:
        y = layer.candidates[i](x)
        if weights is not None:
            y = y * weights[i]
        out = y if out is None else out + y
    assert out is not None, "a mixed layer needs at least one active candidate"
    return out
