"""``nasbench_macro``: the NAS-Bench-Macro search space, built to match its benchmark table exactly.

Provenance: NAS-Bench-Macro (Su et al., "Prioritized Architecture Sampling with Monte-Carlo Tree
Search", CVPR 2021; public repository xiusu/NAS-Bench-Macro) trained all 3^8 = 6,561
architectures of this space on CIFAR-10. Its table keys each architecture by 8 digits, one per
searchable layer, the digit being the option index here; ``benchmark_key`` and ``arch_from_key``
convert. This module is written from the published description and checked against the table's
``params`` and ``flops`` columns (all 6,561 entries agree exactly for the defaults
``num_classes=10, in_chans=3, image_size=32``); no code of the benchmark is copied.

Network (no convolution has a bias; every convolution is followed by batch norm):

- stem: 3x3 conv ``in_chans -> 32``, stride 1, BN, ReLU;
- 8 searchable layers in 3 stages of [2, 3, 3] layers at widths 64 / 128 / 256; the first layer
  of each stage has stride 2 (and doubles the width, 32 -> 64 -> 128 -> 256); each layer picks

  * ``identity``: a 1x1 conv (stride 2 where the layer strides) + BN, no activation, where the
    layer changes stride or width; a true ``nn.Identity`` otherwise,
  * ``k3_e3``: inverted residual, 1x1 expand x3 + BN + ReLU, 3x3 depthwise (stride on the
    depthwise conv) + BN + ReLU, 1x1 project + BN; residual only at stride 1 and equal widths,
    no shortcut conv on strided/widening layers,
  * ``k5_e6``: the same with a 5x5 depthwise conv and expansion 6;

  no squeeze-excite; padding is ``kernel_size // 2``;
- head: 1x1 conv ``256 -> 1280`` + BN + ReLU, global average pool, linear ``1280 -> num_classes``
  (with bias).

FLOPs are multiply-accumulates of the convolutions and the linear layer for one image (the
table's ``flops``: 7,713,280 for ``00000000`` up to 105,660,928 for ``22222222``).

Feature levels (``build_features``): the stages' last layers, at 32 px strides 2, 4, 8 with 64/128/256 channels.
"""

from __future__ import annotations

from torch import nn

from xsearch.core.errors import UserError

from ._base import Arch, Choice, SearchSpace
from ._registry import SPACES
from .blocks import ClassifierHead, ConvBNAct, InvertedResidual, conv_out_size
from .mbv3 import mbv3_large_stages, nearest, shrink_to_budget

OPTIONS = ("identity", "k3_e3", "k5_e6")
STEM_CHANNELS = 32
STAGE_WIDTHS = (64, 128, 256)
STAGE_DEPTHS = (2, 3, 3)
LAST_CHANNELS = 1280


@SPACES.register("nasbench_macro")
class NASBenchMacroSpace(SearchSpace):
    """NAS-Bench-Macro: 8 layers, each identity / IR k3 e3 / IR k5 e6 (ReLU, no SE)."""

    name = "nasbench_macro"
    stem_stride = 1

    def __init__(self, num_classes: int = 10, in_chans: int = 3, image_size: int = 32) -> None:
        super().__init__(num_classes, in_chans, image_size)
        self._plan_layers(STEM_CHANNELS, conv_out_size(image_size, 3, 1), zip(STAGE_WIDTHS, (2, 2, 2), STAGE_DEPTHS))
        self.choices = [Choice(f"layer{i + 1}", OPTIONS) for i in range(len(self.plan))]
        self._build_tables()

    def build_stem(self) -> nn.Module:
        return ConvBNAct(self.in_chans, STEM_CHANNELS, 3, 1, act="relu")

    def build_head(self) -> nn.Module:
        return ClassifierHead(self.final_channels, self.num_classes, LAST_CHANNELS, act="relu")

    def build_candidate(self, index: int, option: str) -> nn.Module:
        cin, cout, stride, _ = self.plan[index]
        if option == "identity":
            if stride == 1 and cin == cout:
                return nn.Identity()
            return ConvBNAct(cin, cout, 1, stride, act=None)
        if option == "k3_e3":
            return InvertedResidual(cin, cout, 3, 3, stride, se=False, act="relu")
        if option == "k5_e6":
            return InvertedResidual(cin, cout, 5, 6, stride, se=False, act="relu")
        raise ValueError(f"unknown option {option!r} for layer {index + 1}; valid: {list(OPTIONS)}")

    def fixed_macs(self) -> int:
        head = self.final_size ** 2 * self.final_channels * LAST_CHANNELS + LAST_CHANNELS * self.num_classes
        return self.stem_macs() + head

    def candidate_macs(self, index: int, module: nn.Module) -> int:
        size = self.plan[index][3]
        return module.macs(size, size) if isinstance(module, (ConvBNAct, InvertedResidual)) else 0

    def hand_designed(self, max_flops: int | None = None) -> Arch:
        """MobileNetV3-Large's block pattern on the 8 layers, shrunk to ``max_flops`` if it is over.

        The three stages here (64/128/256, each opening with stride 2) take the paper's first three
        striding stages (widths 24, 40, 80; the table is in ``MobileNetV3Space.hand_designed``), layer
        j of a stage block j of that stage. Each block becomes the option of nearest expansion
        (e6 -> ``k5_e6``, e2.3..e4 -> ``k3_e3``; kernel and SE have no free choice here), never
        ``identity``: ``k3_e3 k3_e3 | k3_e3 k3_e3 k3_e3 | k5_e6 k3_e3 k3_e3`` (table key ``11111211``).

        Over ``max_flops``: repeatedly the single change that saves the most MACs among ``k5_e6`` ->
        ``k3_e3`` and -> ``identity`` (ties in that order, then the earlier layer); UserError when the
        budget is below the space's smallest network. A pattern under the budget is left as it is.
        """
        stages = mbv3_large_stages((24, 40, 80))
        arch: Arch = {}
        labels = iter(self.labels)
        for blocks, depth in zip(stages, STAGE_DEPTHS):
            for j in range(depth):
                block = blocks[min(j, len(blocks) - 1)]
                arch[next(labels)] = "k5_e6" if nearest(block.expansion, (3, 6)) == 6 else "k3_e3"
        return shrink_to_budget(self, arch, max_flops, lambda index, option: (
            "k3_e3" if option == "k5_e6" else None, "identity"))

    # --- the benchmark's keys -------------------------------------------------------------
    def benchmark_key(self, arch: Arch) -> str:
        """The table key of ``arch``: one digit per layer, the option's index (e.g. ``'22212220'``)."""
        arch = self.validate(arch)
        return "".join(str(c.options.index(arch[c.label])) for c in self.choices)

    def arch_from_key(self, key: str) -> Arch:
        """The architecture of table key ``key`` (8 digits, each 0 = identity, 1 = k3_e3, 2 = k5_e6)."""
        n = len(self.choices)
        hint = f"a NAS-Bench-Macro key is {n} digits, each 0 (identity), 1 (k3_e3) or 2 (k5_e6), e.g. '22212220'"
        if not isinstance(key, str):
            raise UserError(f"benchmark key must be a string, got {type(key).__name__}; {hint}")
        if len(key) != n:
            raise UserError(f"benchmark key {key!r} has {len(key)} characters, expected {n}; {hint}")
        if not (key.isascii() and key.isdigit()):
            raise UserError(f"benchmark key {key!r} contains non-digit characters; {hint}")
        bad = [d for d in key if int(d) >= len(OPTIONS)]
        if bad:
            raise UserError(f"benchmark key {key!r} has digit(s) out of range {sorted(set(bad))}; {hint}")
        return {c.label: c.options[int(d)] for c, d in zip(self.choices, key)}
