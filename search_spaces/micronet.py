"""``micronet``: a MicroNet-style space for very low FLOPs (1.1 to 4.7 million MACs at 28x28).

A 3x3 stem (stride 2 for inputs over 16 pixels) to 24 channels, then stages of widths 32/48/96/128
(times ``width_mult``) with strides 1/2/2/1 and ``depths`` layers each. Every layer chooses its
Micro-Block type (A: micro depthwise that expands + lite grouped pointwise; B: micro depthwise +
micro-factorized pointwise; C: micro-factorized pointwise expand, micro depthwise, micro-factorized
pointwise project), its kernel (3/5), its expansion (2/4: the depthwise multiplier of A and B, the
expansion of C; the group counts follow from the widths as G = sqrt(C/R), R = 2) and Dynamic
Shift-Max on or off (off: ReLU), named like ``B_k5_e2_dsm``; plus ``skip`` where the layer keeps
its shape. Head: 1x1 conv to 384 channels, global pool, dropout, linear classifier.

Feature levels (``build_features``): at ``image_size=128`` (stem stride 2) strides 2, 4, 8 with
32/48/128 channels (x ``width_mult``; the last layers of the stride-2, stride-4 and stride-8 stages).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from xsearch.core.errors import SettingError

from ._base import SKIP, Choice, SearchSpace
from ._registry import SPACES
from .blocks.head import ClassifierHead
from .blocks.mbv3 import ConvBNAct, conv_out_size, make_divisible
from .blocks.micronet import MicroBlockA, MicroBlockB, MicroBlockC

STAGE_WIDTHS = (32, 48, 96, 128)
STAGE_STRIDES = (1, 2, 2, 1)
BLOCK_TYPES, KERNELS, EXPANSIONS = ("A", "B", "C"), (3, 5), (2, 4)


def option_name(block: str, kernel_size: int, expansion: int, dsm: bool) -> str:
    return f"{block}_k{kernel_size}_e{expansion}" + ("_dsm" if dsm else "")


def parse_option(option: str) -> tuple[str, int, int, bool]:
    """'B_k5_e2_dsm' -> ('B', 5, 2, True)."""
    parts = option.split("_")
    return parts[0], int(parts[1][1:]), int(parts[2][1:]), parts[-1] == "dsm"


def micro_block(cin: int, cout: int, stride: int, option: str) -> nn.Module:
    """The Micro-Block an option names."""
    block, k, e, dsm = parse_option(option)
    if block == "A":
        return MicroBlockA(cin, cout, k, stride, multiplier=e, use_dsm=dsm)
    if block == "B":
        return MicroBlockB(cin, cout, k, stride, multiplier=e, use_dsm=dsm)
    return MicroBlockC(cin, cout, k, stride, expansion=e, use_dsm=dsm)


@SPACES.register("micronet")
class MicroNetSpace(SearchSpace):
    """Micro-Blocks A/B/C with searchable type, kernel, expansion, Dynamic Shift-Max and depth."""

    name = "micronet"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, width_mult: float = 1.0,
                 depths: Sequence[int] = (1, 2, 3, 2), dropout: float = 0.1) -> None:
        super().__init__(num_classes, in_chans, image_size)
        depths = tuple(int(d) for d in depths)
        if len(depths) != len(STAGE_WIDTHS) or min(depths) < 1:
            raise SettingError(f"depths must be four positive stage depths, e.g. [1, 2, 3, 2], got {list(depths)}")
        if width_mult <= 0:
            raise SettingError(f"width_mult must be positive, got {width_mult}")
        self.width_mult, self.depths, self.dropout = width_mult, depths, dropout
        self.stem_channels = make_divisible(24 * width_mult, 8)
        self.stem_stride = 2 if image_size > 16 else 1
        self.last_channels = make_divisible(384 * width_mult, 8)
        widths = [make_divisible(w * width_mult, 8) for w in STAGE_WIDTHS]
        self._plan_layers(self.stem_channels, conv_out_size(image_size, 3, self.stem_stride),
                          zip(widths, STAGE_STRIDES, depths))
        options = tuple(option_name(b, k, e, d) for b in BLOCK_TYPES for k in KERNELS for e in EXPANSIONS
                        for d in (False, True))
        for i, layer in enumerate(self.plan):
            self.choices.append(Choice(f"layer{i + 1}", options + ((SKIP,) if layer.keeps_shape else ())))
        self._build_tables()

    def build_stem(self) -> nn.Module:
        return ConvBNAct(self.in_chans, self.stem_channels, 3, self.stem_stride, act="relu")

    def build_head(self) -> nn.Module:
        return ClassifierHead(self.final_channels, self.num_classes, self.last_channels, act="relu",
                              dropout=self.dropout)

    def build_candidate(self, index: int, option: str) -> nn.Module:
        if option == SKIP:
            return nn.Identity()
        cin, cout, stride, _ = self.plan[index]
        return micro_block(cin, cout, stride, option)

    def fixed_macs(self) -> int:
        head = self.final_size ** 2 * self.final_channels * self.last_channels
        return self.stem_macs() + head + self.last_channels * self.num_classes

    def candidate_macs(self, index: int, module: nn.Module) -> int:
        size = self.plan[index][3]
        return 0 if isinstance(module, nn.Identity) else module.macs(size, size)
