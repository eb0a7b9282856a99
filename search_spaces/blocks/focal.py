"""Focal modulation (Yang et al. 2022) on NCHW maps, and the FocalNet block built around it.

Focal modulation replaces self-attention's query-key interaction with a cheap, translation-
equivariant context: a stack of depthwise convolutions (growing receptive field) plus a global
average, each level gated per pixel and summed, then turned into a modulator that multiplies
the query. Everything here is convolutional (1x1 convs instead of linear layers) so the block
keeps NCHW layout like the rest of the project.

``macs(height, width)`` follows the project's FLOPs convention (convolutions and linear layers,
one image; norms, activations, pooling and elementwise products not counted), the same number
``xsearch.core.flops.fvcore_macs`` gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of an NCHW map (what FocalNet's token LayerNorm is).

    ``GroupNorm(1, C)`` would normalise over channels *and* space, which is a different operator.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels, self.eps = channels, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's residual branch with probability ``p``.

    Survivors are scaled by ``1 / (1 - p)`` so the expectation matches eval, where this is identity.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class FocalModulation(nn.Module):
    """Focal modulation: ``proj(q * h(sum_l gate_l * ctx_l + gate_L * GELU(mean(ctx_{L-1}))))``.

    ``ctx_l = GELU(dwconv_l(ctx_{l-1}))`` with kernel ``focal_factor * l + focal_window``, so the
    levels are hierarchical (each sees further than the last); the gates are per pixel.
    """

    def __init__(self, dim: int, focal_level: int = 2, focal_window: int = 3, focal_factor: int = 2,
                 normalize_modulator: bool = False, proj_drop: float = 0.0) -> None:
        super().__init__()
        if focal_level < 1:
            raise ValueError(f"focal_level must be >= 1, got {focal_level}")
        self.dim, self.focal_level = dim, focal_level
        self.focal_window, self.focal_factor = focal_window, focal_factor
        self.normalize_modulator = normalize_modulator
        self.kernel_sizes = [focal_factor * level + focal_window for level in range(focal_level)]
        self.f = nn.Conv2d(dim, 2 * dim + focal_level + 1, 1)
        self.focal_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False), nn.GELU())
            for k in self.kernel_sizes
        )
        self.h = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, ctx, gates = torch.split(self.f(x), [self.dim, self.dim, self.focal_level + 1], dim=1)
        ctx_all = torch.zeros_like(q)
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            ctx_all = ctx_all + ctx * gates[:, level:level + 1]
        ctx_global = F.gelu(ctx.mean((2, 3), keepdim=True))
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level:]
        if self.normalize_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        return self.proj_drop(self.proj(q * self.h(ctx_all)))

    def macs(self, height: int, width: int) -> int:
        d = self.dim
        per_pixel = d * (2 * d + self.focal_level + 1) + sum(d * k * k for k in self.kernel_sizes) + 2 * d * d
        return height * width * per_pixel

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, focal_level={self.focal_level}, kernel_sizes={self.kernel_sizes}, "
                f"normalize_modulator={self.normalize_modulator}")


class FocalNetBlock(nn.Module):
    """Pre-norm FocalNet block: focal modulation then a 1x1-conv MLP, each a (layer-scaled) residual."""

    def __init__(self, dim: int, focal_level: int = 2, focal_window: int = 3, mlp_ratio: float = 4.0,
                 layer_scale: float | None = None, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dim, self.hidden = dim, int(dim * mlp_ratio)
        self.norm1 = LayerNorm2d(dim)
        self.modulation = FocalModulation(dim, focal_level, focal_window)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, self.hidden, 1), nn.GELU(), nn.Conv2d(self.hidden, dim, 1))
        self.drop_path = DropPath(drop_path)
        # Layer scale (CaiT): small per-channel gains that keep deep stacks near identity at init.
        if layer_scale is not None:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma1 = self.gamma2 = None

    @staticmethod
    def _scale(x: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
        return x if gamma is None else x * gamma.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._scale(self.modulation(self.norm1(x)), self.gamma1))
        return x + self.drop_path(self._scale(self.mlp(self.norm2(x)), self.gamma2))

    def macs(self, height: int, width: int) -> int:
        return self.modulation.macs(height, width) + height * width * 2 * self.dim * self.hidden
