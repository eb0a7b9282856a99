"""FLOPs under the project's convention, counted independently of the spaces' tables (via fvcore).

Convention: multiply-accumulates of convolutions, linear layers and matrix products, one image,
batch norm, activations and pooling not counted (fvcore's ``conv``, ``linear``, ``addmm``,
``matmul``, ``bmm``, ``einsum`` and ``mm`` operator counts).
"""

from __future__ import annotations

import torch
from torch import nn

COUNTED = {"conv", "linear", "addmm", "matmul", "bmm", "einsum", "mm"}


def fvcore_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """fvcore's MAC count of ``model`` on one image of ``input_shape`` under the convention above."""
    from fvcore.nn import FlopCountAnalysis

    model = model.eval()
    x = torch.zeros(1, *input_shape)
    analysis = FlopCountAnalysis(model, x)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return int(sum(v for k, v in analysis.by_operator().items() if k in COUNTED))
