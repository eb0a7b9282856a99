"""FLOPs under the project's convention, counted independently of the spaces' tables (via fvcore).

Convention: multiply-accumulates of convolutions, linear layers and matrix products, one image,
batch norm, activations and pooling not counted (fvcore's ``conv``, ``linear``, ``addmm``,
``matmul``, ``bmm``, ``einsum`` and ``mm`` operator counts).

Deformable convolution (``torchvision.ops.deform_conv2d``, traced as ``torchvision::deform_conv2d``)
is a convolution too, but fvcore has no handle for it and silently leaves it out (it only lists
it among the unsupported ops). ``fvcore_macs`` registers :func:`deform_conv2d_flop_jit`, which
counts it like a dense convolution of the same shapes, ``batch * out_channels * in_channels/groups
* kh * kw * out_h * out_w``, under the key ``deform_conv2d``. The bilinear sampling at the offsets
and the DCNv2 mask multiply are not counted (they are interpolation and elementwise work, like
pooling and activations).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

COUNTED = {"conv", "linear", "addmm", "matmul", "bmm", "einsum", "mm", "deform_conv2d"}
DEFORM_CONV2D_OP = "torchvision::deform_conv2d"


def deform_conv2d_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter[str]:
    """fvcore op handle for ``torchvision::deform_conv2d``: dense-conv MACs of the same shapes.

    The op's inputs are (input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
    dil_h, dil_w, weight_groups, offset_groups, use_mask); the weight is
    (out_channels, in_channels / groups, kh, kw), so MACs = numel(output) * prod(weight[1:]).
    """
    w_shape = inputs[1].type().sizes()
    out_shape = outputs[0].type().sizes()
    return Counter({"deform_conv2d": math.prod(out_shape) * math.prod(w_shape[1:])})


def fvcore_macs(model: nn.Module, input_shape: tuple[int, ...] | None = None,
                inputs: torch.Tensor | Sequence[Any] | None = None) -> int:
    """fvcore's MAC count of ``model`` under the convention above.

    Give either ``input_shape`` (one image of that (C, H, W) shape, zeros, batch 1) or ``inputs``:
    a tensor, a list (passed as the single argument, e.g. a feature pyramid) or a tuple of
    positional arguments. ``inputs`` are counted as given, so use batch 1 for per-image MACs.
    """
    with warnings.catch_warnings():
        # fvcore scripts helpers with torch.jit, which torch 2.x flags as deprecated; counts are unaffected
        warnings.filterwarnings("ignore", category=FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    if (input_shape is None) == (inputs is None):
        raise ValueError("give exactly one of input_shape and inputs")
    if inputs is None:
        args: tuple[Any, ...] = (torch.zeros(1, *input_shape),)
    elif isinstance(inputs, tuple):
        args = inputs
    else:
        args = (inputs,)
    model = model.eval()
    analysis = FlopCountAnalysis(model, args).set_op_handle(DEFORM_CONV2D_OP, deform_conv2d_flop_jit)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        by_operator = analysis.by_operator()
    return int(sum(v for k, v in by_operator.items() if k in COUNTED))
