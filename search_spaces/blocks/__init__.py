"""Operators the search spaces are built from. Blocks know nothing of supernets or strategies."""

from __future__ import annotations

from ._sizes import conv_out_size, make_divisible
from .dyhead import DyHeadBlock
from .dynamic import DynamicConv2d, DyReLU, set_temperature, temperature_at
from .focal import DropPath, FocalModulation, FocalNetBlock, LayerNorm2d
from .head import ClassifierHead
from .mbv3 import (
    ConvBNAct,
    DepthwiseSeparable,
    InvertedResidual,
    SqueezeExcite,
)
from .micronet import (
    DynamicShiftMax,
    MicroBlockA,
    MicroBlockB,
    MicroBlockC,
    MicroDepthwiseConv,
    MicroPointwiseConv,
    channel_shuffle,
    micro_groups,
)

__all__ = [
    "ClassifierHead",
    "ConvBNAct",
    "DepthwiseSeparable",
    "DropPath",
    "DyHeadBlock",
    "DyReLU",
    "DynamicConv2d",
    "DynamicShiftMax",
    "FocalModulation",
    "FocalNetBlock",
    "InvertedResidual",
    "LayerNorm2d",
    "MicroBlockA",
    "MicroBlockB",
    "MicroBlockC",
    "MicroDepthwiseConv",
    "MicroPointwiseConv",
    "SqueezeExcite",
    "channel_shuffle",
    "conv_out_size",
    "make_divisible",
    "micro_groups",
    "set_temperature",
    "temperature_at",
]
