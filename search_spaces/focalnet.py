"""``focalnet``: a small hierarchical FocalNet space for small images.

Three stages of FocalNet blocks (focal modulation + MLP, pre-norm residuals) at widths 24/48/96
(times ``width_mult``). A 3x3 stride-2 patch embedding opens the network, and each later stage
opens with its own 3x3 stride-2 patch embedding (conv + channel LayerNorm), run as part of the
stage's first layer. Layer scale is off by default (``layer_scale``): with short schedules gains
starting at 0.01 leave the blocks near identity. Each layer searches its focal level (1/2/3), focal window (3/5) and MLP
ratio (2/4), named ``l2_w3_m4``; every layer but a stage's first may also be ``skip``, which
makes each stage's depth searchable (1 to ``depths[i]`` blocks). Head: LayerNorm, global
average pool, linear classifier.

Feature levels (``build_features``): the stages' last layers; at ``image_size=128`` (patch-embed
stride 2, ``stem_stride``) strides 2, 4, 8 with 24/48/96 channels (x ``width_mult``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from xsearch.core.errors import SettingError

from ._base import SKIP, Choice, SearchSpace
from ._registry import SPACES
from .blocks.focal import FocalNetBlock, LayerNorm2d
from .blocks.head import ClassifierHead
from .blocks.mbv3 import conv_out_size

LEVELS, WINDOWS, MLP_RATIOS = (1, 2, 3), (3, 5), (2, 4)


def option_name(level: int, window: int, mlp_ratio: int) -> str:
    return f"l{level}_w{window}_m{mlp_ratio}"


def parse_option(option: str) -> tuple[int, int, int]:
    """'l2_w3_m4' -> (2, 3, 4)."""
    level, window, mlp = option.split("_")
    return int(level[1:]), int(window[1:]), int(mlp[1:])


class PatchEmbed(nn.Sequential):
    """3x3 stride-2 convolution and channel LayerNorm: halves the resolution, sets the width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, 2, 1), LayerNorm2d(out_channels))
        self.in_channels, self.out_channels = in_channels, out_channels

    def macs(self, height: int, width: int) -> int:
        return conv_out_size(height, 3, 2) * conv_out_size(width, 3, 2) * self.in_channels * self.out_channels * 9


class DownsampleBlock(nn.Module):
    """A stage's first layer: patch embedding to the stage's width, then a FocalNet block."""

    def __init__(self, embed: PatchEmbed, block: FocalNetBlock) -> None:
        super().__init__()
        self.embed, self.block = embed, block

    def forward(self, x):
        return self.block(self.embed(x))

    def macs(self, height: int, width: int) -> int:
        h, w = conv_out_size(height, 3, 2), conv_out_size(width, 3, 2)
        return self.embed.macs(height, width) + self.block.macs(h, w)


@SPACES.register("focalnet")
class FocalNetSpace(SearchSpace):
    """Hierarchical FocalNet with searchable focal level, focal window, MLP ratio and depth per stage."""

    name = "focalnet"
    stem_stride = 2  # the 3x3 stride-2 patch embedding
    optimizer = "adamw"  # trainers' optimizer=auto: SGD trains this attention-like net poorly (see README)

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 28, width_mult: float = 1.0,
                 depths: Sequence[int] = (2, 2, 3), dropout: float = 0.1, layer_scale: float | None = None) -> None:
        super().__init__(num_classes, in_chans, image_size)
        depths = tuple(int(d) for d in depths)
        if len(depths) != 3 or min(depths) < 1:
            raise SettingError(f"depths must be three positive stage depths, e.g. [2, 2, 3], got {list(depths)}")
        if width_mult <= 0:
            raise SettingError(f"width_mult must be positive, got {width_mult}")
        self.width_mult, self.depths, self.dropout, self.layer_scale = width_mult, depths, dropout, layer_scale
        self.widths = tuple(max(8, round(w * width_mult / 8) * 8) for w in (24, 48, 96))
        # each later stage opens with a stride-2 patch embedding inside its first layer
        self._plan_layers(self.widths[0], conv_out_size(image_size, 3, 2), zip(self.widths, (1, 2, 2), depths))
        options = tuple(option_name(lv, w, m) for lv in LEVELS for w in WINDOWS for m in MLP_RATIOS)
        first_of_stage = {sum(depths[:s]) for s in range(3)}
        for i in range(len(self.plan)):
            self.choices.append(Choice(f"layer{i + 1}", options + (() if i in first_of_stage else (SKIP,))))
        self._build_tables()

    def build_stem(self) -> nn.Module:
        return PatchEmbed(self.in_chans, self.widths[0])

    def build_head(self) -> nn.Module:
        return ClassifierHead(self.final_channels, self.num_classes, dropout=self.dropout)

    def build_candidate(self, index: int, option: str) -> nn.Module:
        if option == SKIP:
            return nn.Identity()
        cin, cout, stride, _ = self.plan[index]
        level, window, mlp = parse_option(option)
        block = FocalNetBlock(cout, level, window, float(mlp), layer_scale=self.layer_scale)
        return DownsampleBlock(PatchEmbed(cin, cout), block) if stride == 2 else block

    def fixed_macs(self) -> int:
        return self.stem_macs() + self.final_channels * self.num_classes

    def candidate_macs(self, index: int, module: nn.Module) -> int:
        size = self.plan[index][3]
        return 0 if isinstance(module, nn.Identity) else module.macs(size, size)
