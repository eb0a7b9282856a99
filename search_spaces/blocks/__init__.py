"""Operators the search spaces are built from. Blocks know nothing of supernets or strategies."""

from __future__ import annotations

from .mbv3 import (
    ConvBNAct,
    DepthwiseSeparable,
    InvertedResidual,
    SqueezeExcite,
    conv_out_size,
    make_divisible,
)

__all__ = [
    "ConvBNAct",
    "DepthwiseSeparable",
    "InvertedResidual",
    "SqueezeExcite",
    "conv_out_size",
    "make_divisible",
]
