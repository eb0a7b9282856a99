"""Dynamic Head block (Dai et al. 2021): scale-, spatial- and task-aware attention over a feature pyramid.

Input: a list of ``num_levels`` NCHW maps with the same channel count, each level about half the
size of the previous one. Output: a list with the same shapes. For level ``l``:

1. **Spatial-aware** (``spatial=True``): one modulated deformable 3x3 conv (DCNv2, via
   ``torchvision.ops.deform_conv2d`` with a mask), its weight shared across every level it reads,
   produces up to three maps on level ``l``'s grid: level ``l`` itself (stride 1), level ``l-1``
   read with stride 2, and level ``l+1`` read at its own resolution then upsampled bilinearly.
   Offsets (18 channels) and mask logits (9, sigmoid) come from one shared 3x3 conv applied to
   each level's own feature, so they live on that level's grid:

   - the stride-2 read of ``l-1`` outputs on level ``l``'s grid, so it uses level ``l``'s
     offsets (this requires ``ceil(H_{l-1} / 2) == H_l``, checked, and likewise for widths);
   - the read of ``l+1`` outputs on level ``l+1``'s grid, so it uses level ``l+1``'s offsets,
     which makes it exactly level ``l+1``'s own stride-1 read: it is computed once and reused.

   Every deformable read is normalised by one GroupNorm (``min(16, C)``-ish groups dividing ``C``,
   shared across levels), as in the paper's implementation: without it a stack of blocks
   shrinks and averages the features until the spatial signal is gone (six blocks trained to
   0 box AP in ``bench downstream``). The offset conv is zero-initialised: the block starts as
   the GroupNorm of a plain conv on the regular grid, scaled by sigmoid(0) = 0.5 (plus bias). With ``spatial=False`` nothing is read from the
   neighbours: level ``l``'s only map is its own feature, untouched (the paper puts the
   cross-level aggregation inside the spatial attention, so without it levels stay separate).
2. **Scale-aware** (``scale=True``): each map ``m`` is multiplied by the scalar
   ``hard_sigmoid(relu(conv1x1_{C->1}(GAP(m))))``; the 1x1 conv is shared across maps and levels.
3. The (weighted) maps are averaged.
4. **Task-aware** (``task=True``): DyReLU-B on the average, coefficients from its own GAP.

So every flag combination is well defined, and all three off is the identity.

``macs(sizes)`` counts one image under the project's convention (convolutions and linear layers,
including the deformable conv as ``out_channels * in_channels/groups * kh * kw`` per output pixel;
mask multiply, bilinear sampling, upsampling, pooling and activations not counted), the number
``xsearch.core.flops.fvcore_macs`` gives with its ``deform_conv2d`` handle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dynamic import DyReLU

_K = 3  # deformable kernel size, as in the paper


class DyHeadBlock(nn.Module):
    """One DyHead block: ``task(mean_m(scale(m) * m))`` over the spatial reads ``m`` of each level."""

    def __init__(self, channels: int, num_levels: int, scale: bool = True, spatial: bool = True,
                 task: bool = True, dyrelu_reduction: int = 4) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.channels, self.num_levels = channels, num_levels
        self.use_scale, self.use_spatial, self.use_task = scale, spatial, task
        if spatial:
            self.dcn_weight = nn.Parameter(torch.empty(channels, channels, _K, _K))
            self.dcn_bias = nn.Parameter(torch.empty(channels))
            self.offset_conv = nn.Conv2d(channels, 3 * _K * _K, _K, padding=_K // 2)
            self.norm = nn.GroupNorm(math.gcd(16, channels), channels)
        self.scale_attn = nn.Conv2d(channels, 1, 1) if scale else None
        self.task_attn = DyReLU(channels, reduction=dyrelu_reduction) if task else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if not self.use_spatial:
            return
        # Same init as nn.Conv2d for the DCN weight; zero offsets and mask logits for a regular grid.
        nn.init.kaiming_uniform_(self.dcn_weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.channels * _K * _K)
        nn.init.uniform_(self.dcn_bias, -bound, bound)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def offsets_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets (N, 18, H, W) and sigmoid mask (N, 9, H, W) on ``x``'s grid."""
        out = self.offset_conv(x)
        return out[:, :2 * _K * _K], torch.sigmoid(out[:, 2 * _K * _K:])

    def deform_read(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor,
                    stride: int = 1) -> torch.Tensor:
        """The shared modulated deformable 3x3 conv of ``x``; ``offset``/``mask`` sized for its output."""
        # imported here: torchvision.ops pulls in torch._dynamo and Triton (about 1.4 s and 300 MB resident
        # on this machine), which a classification run never needs
        from torchvision.ops import deform_conv2d

        return deform_conv2d(x, offset, self.dcn_weight, self.dcn_bias, stride=stride, padding=_K // 2,
                             mask=mask)

    def _check(self, features: list[torch.Tensor]) -> None:
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels, got {len(features)}")
        for level, x in enumerate(features):
            if x.dim() != 4 or x.shape[1] != self.channels:
                raise ValueError(f"level {level}: expected (N, {self.channels}, H, W), got {tuple(x.shape)}")
        if self.use_spatial:
            for level in range(1, self.num_levels):
                (h0, w0), (h1, w1) = features[level - 1].shape[-2:], features[level].shape[-2:]
                if ((h0 + 1) // 2, (w0 + 1) // 2) != (h1, w1):
                    raise ValueError(f"level {level} is {h1}x{w1} but the stride-2 read of level {level - 1} "
                                     f"({h0}x{w0}) gives {(h0 + 1) // 2}x{(w0 + 1) // 2}")

    def _scaled(self, m: torch.Tensor) -> torch.Tensor:
        if self.scale_attn is None:
            return m
        return m * F.hardsigmoid(F.relu(self.scale_attn(m.mean((2, 3), keepdim=True))))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        features = list(features)
        self._check(features)
        return self.combine(self.spatial_reads(features) if self.use_spatial else [[x] for x in features])

    def spatial_reads(self, features: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per level, the maps the spatial-aware attention reads: own level, the level below (stride 2), the level above.

        Needs ``spatial=True`` (the deformable conv's weights). A supernet whose DyHead candidates share
        these weights computes this once per forward for all of them (``supernets.shared_dyhead``).
        """
        offsets = [self.offsets_and_mask(x) for x in features]
        own = [self.norm(self.deform_read(x, off, mask)) for x, (off, mask) in zip(features, offsets)]
        reads = []
        for level in range(self.num_levels):
            maps = [own[level]]
            if level > 0:
                maps.append(self.norm(self.deform_read(features[level - 1], *offsets[level], stride=2)))
            if level < self.num_levels - 1:
                maps.append(F.interpolate(own[level + 1], size=own[level].shape[-2:], mode="bilinear",
                                          align_corners=False))
            reads.append(maps)
        return reads

    def combine(self, reads: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """Scale-aware attention on each map, their mean per level, then the task-aware attention."""
        outputs = []
        for maps in reads:
            maps = [self._scaled(m) for m in maps]
            fused = maps[0] if len(maps) == 1 else torch.stack(maps).mean(0)
            outputs.append(fused if self.task_attn is None else self.task_attn(fused))
        return outputs

    def macs(self, sizes: list[tuple[int, int]]) -> int:
        """MACs of one image whose levels have spatial ``sizes`` [(H_0, W_0), ...]."""
        if len(sizes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} sizes, got {len(sizes)}")
        c, total = self.channels, 0
        dcn = c * c * _K * _K
        offset = 3 * _K * _K * c * _K * _K
        for level, (h, w) in enumerate(sizes):
            reads = 1
            if self.use_spatial:
                reads += (level > 0) + (level < self.num_levels - 1)
                # offset conv + own read, plus the stride-2 read of the level below (on this grid);
                # the read of the level above is that level's own read, already counted there.
                total += h * w * (offset + dcn * (1 + (level > 0)))
            if self.use_scale:
                total += reads * c
            if self.task_attn is not None:
                total += self.task_attn.macs(h, w)
        return total

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, num_levels={self.num_levels}, scale={self.use_scale}, "
                f"spatial={self.use_spatial}, task={self.use_task}")
