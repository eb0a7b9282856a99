"""MicroNet operators (Li et al. 2021): micro-factorized convolutions, Dynamic Shift-Max, Micro-Blocks.

MicroNet keeps networks wide at a few million MACs by lowering *connectivity* instead of width
(low-rank, grouped pointwise and separable depthwise convolutions), and buys back depth-lost
non-linearity with Dynamic Shift-Max, an input-dependent maximum over fusions of a feature map
with circular channel shifts of itself.

Every module here has ``macs(height, width)``: MACs of one image of that input size under the
project's convention (convolutions and linear layers only; batch norm, activations, pooling,
channel shuffles and element-wise products not counted), equal to what ``xsearch.core.flops.fvcore_macs``
counts. Nothing hard-codes a device or dtype.

Group settings are validated at construction; impossible ones raise ``ValueError`` naming the
offending widths, so a search space can filter its candidates by catching it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .mbv3 import conv_out_size, make_divisible

GroupsArg = int | tuple[int, int] | None


def micro_groups(channels: int, reduction: float = 2.0, *also_divides: int) -> int:
    """Group count G closest to the paper's sqrt(C / R) that divides ``channels`` (and ``also_divides``).

    sqrt(C/R) is the paper's balance point: with C/R squeezed channels in G groups each output
    reaches every input through exactly one path. Ties go to the smaller G; never below 1.
    """
    if channels < 1 or reduction <= 0:
        raise ValueError(f"micro_groups needs channels >= 1 and reduction > 0, got {channels}, {reduction}")
    common = math.gcd(channels, *also_divides) if also_divides else channels
    target = math.sqrt(channels / reduction)
    divisors = [g for g in range(1, common + 1) if common % g == 0]
    return min(divisors, key=lambda g: (abs(g - target), g))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet shuffle: view channels as (groups, C/groups), transpose, flatten.

    Output channel ``j * groups + i`` is input channel ``i * (C / groups) + j``, so consecutive
    output channels come from different input groups.
    """
    if groups == 1:
        return x
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _pair(groups: int | tuple[int, int]) -> tuple[int, int]:
    g = (groups, groups) if isinstance(groups, int) else tuple(groups)
    if len(g) != 2 or any(not isinstance(v, int) or v < 1 for v in g):
        raise ValueError(f"groups must be a positive int or a pair of positive ints, got {groups!r}")
    return g  # type: ignore[return-value]


def _check_divides(owner: str, what: str, channels: int, groups: int) -> None:
    if channels % groups:
        raise ValueError(f"{owner}: {what}={channels} is not divisible by groups={groups}")


class MicroPointwiseConv(nn.Module):
    """Micro-factorized 1x1 conv W = P Phi Q^T: grouped squeeze, BN, shuffle, grouped expand, BN.

    ``groups`` is ``(g1, g2)``: g1 groups for the squeeze Q (in -> mid), g2 for the expand P
    (mid -> out); an int means g1 = g2; None picks ``micro_groups`` of the smaller width. Phi is a
    channel shuffle with g1 groups, so each expand group draws equally on every squeeze group as
    long as mid / g2 is a multiple of g1 (mid = g1 * g2 is the paper's minimal full coverage).

    Squeezed width: ``mid_channels`` if given, else ``min(in, out) / reduction`` rounded by
    ``make_divisible`` to a multiple of lcm(g1, g2). The paper has square W and mid = C / R; taking
    the smaller side keeps the factorization low-rank when the conv expands or projects.
    The op is linear (no activation between Q and P), so it is exactly one dense 1x1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: GroupsArg = None,
                 reduction: float = 2.0, mid_channels: int | None = None) -> None:
        super().__init__()
        if reduction <= 0:
            raise ValueError(f"MicroPointwiseConv: reduction must be > 0, got {reduction}")
        if groups is None:
            g = micro_groups(min(in_channels, out_channels), reduction, in_channels, out_channels)
            groups = (g, g)
        g1, g2 = _pair(groups)
        name = "MicroPointwiseConv"
        _check_divides(name, "in_channels", in_channels, g1)
        _check_divides(name, "out_channels", out_channels, g2)
        lcm = g1 * g2 // math.gcd(g1, g2)
        if mid_channels is None:
            mid_channels = make_divisible(min(in_channels, out_channels) / reduction, lcm)
        _check_divides(name, "mid_channels (squeeze groups)", mid_channels, g1)
        _check_divides(name, "mid_channels (expand groups)", mid_channels, g2)
        self.squeeze = nn.Conv2d(in_channels, mid_channels, 1, groups=g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.expand = nn.Conv2d(mid_channels, out_channels, 1, groups=g2, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid_channels
        self.groups, self.reduction = (g1, g2), reduction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channel_shuffle(self.bn1(self.squeeze(x)), self.groups[0])
        return self.bn2(self.expand(x))

    def macs(self, height: int, width: int) -> int:
        g1, g2 = self.groups
        per_pixel = self.mid_channels * self.in_channels // g1 + self.out_channels * self.mid_channels // g2
        return height * width * per_pixel


class MicroDepthwiseConv(nn.Module):
    """Micro-factorized depthwise conv: kx1 depthwise then 1xk depthwise, then BN.

    Equals one kxk depthwise conv whose kernel is rank 1 (outer product), at 2k instead of k^2
    MACs per output. The kx1 conv carries the vertical stride, the 1xk the horizontal one, and the
    kx1 conv also applies the channel ``multiplier`` (input channel c feeds outputs
    c*m .. c*m+m-1), which is how Micro-Block-A/B expand channels.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, multiplier: int = 1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"MicroDepthwiseConv: kernel_size must be odd and positive, got {kernel_size}")
        if stride < 1 or not isinstance(multiplier, int) or multiplier < 1:
            raise ValueError(f"MicroDepthwiseConv: need stride >= 1 and integer multiplier >= 1, "
                             f"got stride={stride}, multiplier={multiplier}")
        out = channels * multiplier
        pad = kernel_size // 2
        self.vertical = nn.Conv2d(channels, out, (kernel_size, 1), (stride, 1), (pad, 0), groups=channels, bias=False)
        self.horizontal = nn.Conv2d(out, out, (1, kernel_size), (1, stride), (0, pad), groups=out, bias=False)
        self.bn = nn.BatchNorm2d(out)
        self.in_channels, self.out_channels = channels, out
        self.kernel_size, self.stride, self.multiplier = kernel_size, stride, multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.horizontal(self.vertical(x)))

    def macs(self, height: int, width: int) -> int:
        oh = conv_out_size(height, self.kernel_size, self.stride)
        ow = conv_out_size(width, self.kernel_size, self.stride)
        return self.out_channels * self.kernel_size * (oh * width + oh * ow)


class DynamicShiftMax(nn.Module):
    """Dynamic Shift-Max: y_i = max_k sum_j a^k_{i,j}(x) * x_{(i + j*C/G) mod C}, j < J, k < K.

    Shift j moves by j whole groups (C/G channels), so channel i mixes with its counterparts in
    the next J-1 groups of the neighbouring grouped conv, re-linking the groups that
    micro-factorization cuts apart. Coefficients come from GAP -> Linear -> ReLU -> Linear ->
    h-sigmoid and are mapped to ``a = init + coeff_range * (2 * hsigmoid(z) - 1)`` with ``init``
    1 for (j=0, k=0) and 0 elsewhere. The last Linear starts at zero, so z = 0 and the op starts
    exactly as ReLU: y = max(x, 0) (identity on non-negative inputs), a DY-ReLU-style start.
    Re-initialising all Linear layers afterwards loses that start.
    """

    def __init__(self, channels: int, groups: int, reduction: int = 4, shifts: int = 2, pieces: int = 2,
                 coeff_range: float = 1.0) -> None:
        super().__init__()
        _check_divides("DynamicShiftMax", "channels", channels, groups)
        if shifts < 1 or pieces < 1 or reduction < 1:
            raise ValueError(f"DynamicShiftMax: shifts, pieces and reduction must be >= 1, "
                             f"got {shifts}, {pieces}, {reduction}")
        self.hidden = max(4, channels // reduction)
        self.fc1 = nn.Linear(channels, self.hidden)
        self.fc2 = nn.Linear(self.hidden, channels * shifts * pieces)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        init = torch.zeros(shifts, pieces)
        init[0, 0] = 1.0
        self.register_buffer("init_coeffs", init, persistent=False)
        self.channels, self.groups, self.shifts, self.pieces = channels, groups, shifts, pieces
        self.coeff_range = coeff_range

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample coefficients a, shape (B, C, J, K)."""
        z = self.fc2(F.relu(self.fc1(x.mean((2, 3)))))
        a = self.coeff_range * (2.0 * F.hardsigmoid(z) - 1.0)
        return a.view(x.shape[0], self.channels, self.shifts, self.pieces) + self.init_coeffs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = self.channels // self.groups
        a = self.coefficients(x)[..., None, None]  # B, C, J, K, 1, 1
        shifted = [x if j == 0 else torch.roll(x, -j * step, dims=1) for j in range(self.shifts)]
        out = None
        for k in range(self.pieces):
            piece = a[:, :, 0, k] * shifted[0]
            for j in range(1, self.shifts):
                piece = piece + a[:, :, j, k] * shifted[j]
            out = piece if out is None else torch.maximum(out, piece)
        return out

    def macs(self, height: int, width: int) -> int:
        return self.channels * self.hidden + self.hidden * self.fc2.out_features


def _activation(use_dsm: bool, channels: int, groups: int, reduction: int) -> nn.Module:
    return DynamicShiftMax(channels, groups, reduction) if use_dsm else nn.ReLU(inplace=True)


def _act_macs(act: nn.Module, height: int, width: int) -> int:
    return act.macs(height, width) if isinstance(act, DynamicShiftMax) else 0


class _MicroBlock(nn.Module):
    """Shared bookkeeping: residual when stride 1 and widths match."""

    def _setup(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, use_dsm: bool) -> None:
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"{type(self).__name__}: channels must be >= 1, got {in_channels}, {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.use_dsm = kernel_size, stride, use_dsm
        self.has_residual = stride == 1 and in_channels == out_channels

    def _out_size(self, height: int, width: int) -> tuple[int, int]:
        return conv_out_size(height, self.kernel_size, self.stride), conv_out_size(width, self.kernel_size, self.stride)


class MicroBlockA(_MicroBlock):
    """Micro-Block-A, the "lite combination" for early, high-resolution layers.

    Micro depthwise conv expanding in -> in*multiplier, activation (DSM over the lite conv's
    groups, or ReLU), grouped 1x1 conv + BN squeezing to out, channel shuffle, residual when
    shapes allow. Spends MACs on spatial filtering rather than channel fusion.
    Deviation: the paper leaves the lite pointwise's groups to the configuration; ``groups=None``
    picks ``micro_groups(min(hidden, out), reduction)``. The trailing shuffle (free) keeps stacked
    A blocks from splitting into isolated group paths when DSM is off. No activation after the
    squeeze (linear bottleneck, as MobileNetV2/V3).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 multiplier: int = 2, groups: int | None = None, reduction: float = 2.0,
                 use_dsm: bool = True, dsm_reduction: int = 4) -> None:
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, use_dsm)
        hidden = in_channels * multiplier if isinstance(multiplier, int) else -1
        self.depthwise = MicroDepthwiseConv(in_channels, kernel_size, stride, multiplier)
        if groups is None:
            groups = micro_groups(min(hidden, out_channels), reduction, hidden, out_channels)
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"MicroBlockA: groups must be a positive int, got {groups!r}")
        _check_divides("MicroBlockA", "hidden channels (in*multiplier)", hidden, groups)
        _check_divides("MicroBlockA", "out_channels", out_channels, groups)
        self.act = _activation(use_dsm, hidden, groups, dsm_reduction)
        self.pointwise = nn.Conv2d(hidden, out_channels, 1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.hidden_channels, self.multiplier, self.groups = hidden, multiplier, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.pointwise(self.act(self.depthwise(x))))
        out = channel_shuffle(out, self.groups)
        return out + x if self.has_residual else out

    def macs(self, height: int, width: int) -> int:
        oh, ow = self._out_size(height, width)
        pw = oh * ow * self.out_channels * self.hidden_channels // self.groups
        return self.depthwise.macs(height, width) + _act_macs(self.act, oh, ow) + pw


class MicroBlockB(_MicroBlock):
    """Micro-Block-B, the bridge between A and C blocks (used once per MicroNet).

    Micro depthwise conv expanding in -> in*multiplier, activation, then a full micro-factorized
    pointwise conv (squeeze by R, shuffle, expand to out), activation; residual when shapes allow.
    DSM after the depthwise shifts by the squeeze's groups (g1), after the pointwise by the
    expand's groups (g2). ``groups``: (g1, g2), int, or None for ``micro_groups``.
    Deviation: no activation between the pointwise's squeeze and expand (it stays one low-rank W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 multiplier: int = 2, groups: GroupsArg = None, reduction: float = 2.0,
                 use_dsm: bool = True, dsm_reduction: int = 4) -> None:
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, use_dsm)
        self.depthwise = MicroDepthwiseConv(in_channels, kernel_size, stride, multiplier)
        hidden = self.depthwise.out_channels
        self.pointwise = MicroPointwiseConv(hidden, out_channels, groups, reduction)
        g1, g2 = self.pointwise.groups
        self.act1 = _activation(use_dsm, hidden, g1, dsm_reduction)
        self.act2 = _activation(use_dsm, out_channels, g2, dsm_reduction)
        self.hidden_channels, self.multiplier, self.groups = hidden, multiplier, (g1, g2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act2(self.pointwise(self.act1(self.depthwise(x))))
        return out + x if self.has_residual else out

    def macs(self, height: int, width: int) -> int:
        oh, ow = self._out_size(height, width)
        return (self.depthwise.macs(height, width) + _act_macs(self.act1, oh, ow)
                + self.pointwise.macs(oh, ow) + _act_macs(self.act2, oh, ow))


class MicroBlockC(_MicroBlock):
    """Micro-Block-C, for later layers where channel fusion deserves more MACs.

    Micro-factorized pointwise expand in -> hidden + activation, micro depthwise (stride here) +
    activation, micro-factorized pointwise project hidden -> out (no activation); residual when
    shapes allow. hidden = ``make_divisible(in * expansion, lcm of the groups involved)``.
    ``groups`` applies to both pointwise convs ((g1, g2) or int); None picks ``micro_groups`` for
    each separately. DSM after the expand shifts by its g2, after the depthwise by the project's g1.
    Deviation: the paper describes C as depthwise + full pointwise; this inverted-bottleneck form
    (expand, depthwise, project) follows the brief and the authors' released configurations as
    we understand them. No activation between a pointwise's squeeze and expand.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 expansion: float = 4.0, groups: GroupsArg = None, reduction: float = 2.0,
                 use_dsm: bool = True, dsm_reduction: int = 4) -> None:
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, use_dsm)
        if expansion <= 0:
            raise ValueError(f"MicroBlockC: expansion must be > 0, got {expansion}")
        unit = 1
        if groups is not None:
            g1, g2 = _pair(groups)
            unit = g1 * g2 // math.gcd(g1, g2)
        hidden = make_divisible(in_channels * expansion, unit)
        self.expand = MicroPointwiseConv(in_channels, hidden, groups, reduction)
        self.depthwise = MicroDepthwiseConv(hidden, kernel_size, stride)
        self.project = MicroPointwiseConv(hidden, out_channels, groups, reduction)
        self.act1 = _activation(use_dsm, hidden, self.expand.groups[1], dsm_reduction)
        self.act2 = _activation(use_dsm, hidden, self.project.groups[0], dsm_reduction)
        self.hidden_channels, self.expansion = hidden, expansion
        self.groups = (self.expand.groups, self.project.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.expand(x))
        out = self.project(self.act2(self.depthwise(out)))
        return out + x if self.has_residual else out

    def macs(self, height: int, width: int) -> int:
        oh, ow = self._out_size(height, width)
        return (self.expand.macs(height, width) + _act_macs(self.act1, height, width)
                + self.depthwise.macs(height, width) + _act_macs(self.act2, oh, ow)
                + self.project.macs(oh, ow))
