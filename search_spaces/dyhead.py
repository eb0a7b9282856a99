"""``dyhead``: a detection-head space of Dynamic Head blocks over a three-level feature pyramid.

A fixed convolutional backbone (strides 8, 16 and 32) and 1x1 lateral convolutions give three
maps of ``channels`` channels; then up to ``num_blocks`` DyHead blocks, each choosing which of its
attentions are on (``scale``, ``spatial``, ``task``: the seven non-empty combinations, named like
``scale_spatial_task``) or ``skip``, which makes the number of blocks searchable (0 to
``num_blocks``; all skipped is the detector without a DyHead); then torchvision's FCOS head with no
tower (``FCOSHead(num_convs=0)``: shared across levels, 3x3 convolutions to ``num_classes`` class
logits, 4 box distances and 1 centre-ness per location, anchor-free as in FCOS/ATSS).

The network maps an image to the FCOS head's output dict (``cls_logits``, ``bbox_regression``,
``bbox_ctrness``, locations of every level concatenated). ``evaluator=detection`` trains it inside
torchvision's ``FCOS`` (losses, decoding, NMS) and scores it with ``COCOeval``; classification
evaluators refuse this space (``task = "detection"``). FLOPs count the deformable convolution
through the project's own fvcore handle (see ``xsearch.core.flops``). ``channels`` is a space
argument, not a per-layer choice: every block of a DyHead shares one width.
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import nn

from xsearch.core.errors import SettingError

from ._base import SKIP, Choice, SearchSpace
from ._registry import SPACES
from .blocks.dyhead import DyHeadBlock
from .blocks.mbv3 import ConvBNAct, conv_out_size

ATTENTIONS = ("scale", "spatial", "task")
NUM_LEVELS = 3


def attention_options() -> tuple[str, ...]:
    """The seven non-empty attention combinations: 'scale', ..., 'scale_spatial_task'."""
    return tuple("_".join(c) for r in (1, 2, 3) for c in combinations(ATTENTIONS, r))


class PyramidBackbone(nn.Module):
    """Five stride-2 3x3 conv stages (16, 32, 64, 128, 256 channels x width), laterals from strides 8, 16, 32."""

    def __init__(self, in_chans: int, channels: int, width: float = 0.5) -> None:
        super().__init__()
        widths = [max(8, int(w * width)) for w in (16, 32, 64, 128, 256)]
        self.stages = nn.ModuleList()
        cin = in_chans
        for w in widths:
            self.stages.append(ConvBNAct(cin, w, 3, 2, act="relu"))
            cin = w
        self.laterals = nn.ModuleList(nn.Conv2d(w, channels, 1) for w in widths[2:])
        self.widths, self.channels = widths, channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                features.append(self.laterals[i - 2](x))
        return features

    def level_sizes(self, size: int) -> list[int]:
        sizes = []
        for i in range(len(self.stages)):
            size = conv_out_size(size, 3, 2)
            if i >= 2:
                sizes.append(size)
        return sizes

    def macs(self, size: int) -> int:
        total, sizes = 0, []
        for i, stage in enumerate(self.stages):
            total += stage.macs(size, size)
            size = conv_out_size(size, 3, 2)
            sizes.append(size)
        return total + sum(s * s * self.widths[i] * self.channels for i, s in enumerate(sizes) if i >= 2)


def prediction_head(channels: int, num_classes: int) -> nn.Module:
    """torchvision's FCOS head without a tower: 3x3 convs to class logits, 4 box distances, 1 centre-ness."""
    from torchvision.models.detection.fcos import FCOSHead

    return FCOSHead(channels, 1, num_classes, num_convs=0)


def prediction_head_macs(channels: int, num_classes: int, sizes: list[int]) -> int:
    return sum(s * s * channels * 9 * (num_classes + 4 + 1) for s in sizes)


@SPACES.register("dyhead")
class DyHeadSpace(SearchSpace):
    """DyHead blocks with searchable attentions and depth over a fixed backbone (detection)."""

    name = "dyhead"
    task = "detection"

    def __init__(self, num_classes: int = 80, in_chans: int = 3, image_size: int = 128, channels: int = 64,
                 num_blocks: int = 6, backbone_width: float = 0.5) -> None:
        super().__init__(num_classes, in_chans, image_size)
        if num_blocks < 1:
            raise SettingError(f"num_blocks must be at least 1, got {num_blocks}")
        if channels < 4:
            raise SettingError(f"channels must be at least 4, got {channels}")
        self.channels, self.num_blocks, self.backbone_width = channels, num_blocks, backbone_width
        self.sizes = self.build_stem().level_sizes(image_size)
        options = attention_options()
        for i in range(num_blocks):
            self.choices.append(Choice(f"block{i + 1}", options + (SKIP,)))
        self._build_tables()

    def build_stem(self) -> PyramidBackbone:
        return PyramidBackbone(self.in_chans, self.channels, self.backbone_width)

    def build_head(self) -> nn.Module:
        return prediction_head(self.channels, self.num_classes)

    def build_candidate(self, index: int, option: str) -> nn.Module:
        if option == SKIP:
            return nn.Identity()
        on = set(option.split("_"))
        return DyHeadBlock(self.channels, NUM_LEVELS, scale="scale" in on, spatial="spatial" in on, task="task" in on)

    def fixed_macs(self) -> int:
        return self.build_stem().macs(self.image_size) + prediction_head_macs(self.channels, self.num_classes, self.sizes)

    def candidate_macs(self, index: int, module: nn.Module) -> int:
        return module.macs([(s, s) for s in self.sizes]) if isinstance(module, DyHeadBlock) else 0
