"""Weight sharing for DyHead layers: every attention combination of a layer uses one block's weights.

A ``dyhead`` layer's candidates differ only in which attentions are on (scale, spatial, task) and
whether the layer is skipped. ``SharedDyHeadLayer`` holds one full ``DyHeadBlock`` (``shared``)
and points each candidate's deformable conv, offset conv, norm, scale conv and DyReLU at its modules,
so a candidate trained in the supernet is that combination of the shared weights, and extraction
copies them. A mixture computes the spatial reads (the deformable convolutions, the costly part
on every device) once for all candidates with spatial attention, then each candidate's cheap
scale and task attentions on them, and sums the outputs weighted, level by level. A step over
the full mixture so costs about one full block, as the inverted-residual sharing does for its
layers (``supernets.shared``); a single path runs the candidate's own forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xsearch.search_spaces.blocks.dyhead import DyHeadBlock

from .mixed import MixedLayer


def can_share_dyhead(candidates: Sequence[nn.Module]) -> bool:
    """At least two DyHead candidates of one width and level count."""
    blocks = [c for c in candidates if isinstance(c, DyHeadBlock)]
    return len(blocks) >= 2 and len({(b.channels, b.num_levels) for b in blocks}) == 1


class SharedDyHeadLayer(MixedLayer):
    """A mixed layer of DyHead candidates tied to one full block's weights (see the module doc)."""

    def __init__(self, label: str, options: Sequence[str], candidates: Sequence[nn.Module]) -> None:
        blocks = [c for c in candidates if isinstance(c, DyHeadBlock)]
        shared = DyHeadBlock(blocks[0].channels, blocks[0].num_levels)
        for block in blocks:
            if block.use_spatial:
                block.dcn_weight, block.dcn_bias = shared.dcn_weight, shared.dcn_bias
                block.offset_conv, block.norm = shared.offset_conv, shared.norm
            if block.use_scale:
                block.scale_attn = shared.scale_attn
            if block.use_task:
                block.task_attn = shared.task_attn
        super().__init__(label, options, candidates)
        self.shared = shared

    def run(self, x: list[torch.Tensor], weights: torch.Tensor | None, active: list[int]) -> list[torch.Tensor]:
        if weights is None or len(active) == 1:
            return super().run(x, weights, active)
        features = list(x)
        reads = None
        out: list[torch.Tensor] | None = None
        for i in active:
            candidate = self.candidates[i]
            if isinstance(candidate, DyHeadBlock):
                candidate._check(features)
                if candidate.use_spatial and reads is None:
                    reads = self.shared.spatial_reads(features)
                y = candidate.combine(reads if candidate.use_spatial else [[f] for f in features])
            else:
                y = list(candidate(features))
            y = [t * weights[i] for t in y]
            out = y if out is None else [a + b for a, b in zip(out, y)]
        assert out is not None, "a mixed layer needs at least one active candidate"
        return out
