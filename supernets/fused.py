"""Fused execution of a supernet: ``FusedExecution``, the policy a supernet owns by default.

Its ``run`` has the contract of ``PlainExecution.run`` (same arguments, same result up to float
rounding, same gradients, same batch-norm buffer updates) but runs a mixed layer's active
``InvertedResidual`` candidates horizontally fused:

1. one 1x1 convolution whose weight is the concatenation of every candidate's expand weight, one
   batch norm over the concatenated channels (concatenated affine parameters and running
   statistics, copied back into each candidate's ``BatchNorm2d``), the activation;
2. one depthwise convolution over all expanded channels, each candidate's channels with their own
   kernel size (``kernels.mixconv_depthwise``: in PyTorch every kernel centre-padded to the largest
   active size, whose zero taps add exact zeros; in Triton on CUDA the zero taps are skipped),
   concatenated batch norm, activation;
3. per group of candidates with equal (mid width, SE): squeeze-excite gates computed per
   candidate from the pooled slice and applied in one multiply, one grouped 1x1 projection
   (groups = candidates), one batch norm whose affine parameters carry each candidate's mixing
   weight (so the weighted sum is a plain sum over the candidate axis);
4. the residual and any ``skip`` (``nn.Identity``) candidates are added once as
   ``x * (their summed weights)``.

Per device type, the policy's ``group_by_kernel`` fuses only candidates of equal kernel size (no
padding) and ``max_fused_bytes`` caps the width of a fused block; by default both are on for the
CPU, where wide fused tensors measured slower than the per-candidate ones (see the notes at
``CPU_GROUP_BY_KERNEL`` and ``CPU_MAX_FUSED_BYTES``).

Its ``install`` swaps every ``DynamicConv2d`` and ``DynamicShiftMax`` of the supernet for
``FusedDynamicConv2d`` / ``FusedDynamicShiftMax``: subclasses on the same parameters whose forward
runs ``kernels.dynamic_conv`` / ``kernels.shift_max`` on the policy's backend.

Pruned (inactive) candidates are never touched. Candidates that do not fit (other module types,
inverted residuals without an expand convolution, mismatched strides or activations) run one by
one as in the plain path and are added to the sum. Batch norms whose running-average factors
differ (``momentum=None`` with different ``num_batches_tracked``) still get exact updates: the
output uses batch statistics and the buffers are updated per candidate from that slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from xsearch.search_spaces.blocks import (
    ConvBNAct,
    DynamicConv2d,
    DynamicShiftMax,
    InvertedResidual,
    SqueezeExcite,
)

from ._execution import Execution, PlainExecution, SwappedOperator, swap_operators
from .kernels import dynamic_conv, mixconv_depthwise, shift_max

if TYPE_CHECKING:
    from .mixed import MixedLayer

# Default of ``FusedExecution(group_by_kernel=...)``, per device type: fuse only candidates of
# equal depthwise kernel size (one fused block per kernel size, no padding) instead of all
# candidates in one block with centre-padded kernels. On the CPU one wide depthwise pass is slower
# than narrower ones (its backward grows faster than linearly in the channel count at small
# spatial sizes, and padding 3x3 kernels to 7x7 multiplies their work); ``xsearch bench supernet``
# measures the whole step.
CPU_GROUP_BY_KERNEL: dict[str, bool] = {"cpu": True}

# Default of ``FusedExecution(max_fused_bytes=...)``, per device type: the largest expanded
# activation (bytes) one fused block may produce; a group whose concatenated expansion would be
# larger is cut into blocks under the cap (a block of one candidate runs as in the plain path).
# On the CPU wide tensors were slower per element than the per-candidate ones: above glibc's mmap
# threshold (32 MiB at most) every allocation is mapped fresh and page-faulted in, and the
# depthwise backward grows faster than linearly in the channel count once a tensor leaves the
# cache. Measured on a 2-core CPU with a one-off timing script (since replaced by ``xsearch bench
# supernet``), fused / plain step time was 1.7 with no cap (group_by_kernel off: worse), 1.4 with
# 32 MiB, about 1.3 with 8-16 MiB and 1.0-1.06 with 4 MiB (at batch 128 and 28x28 that cap leaves
# only the small deep layers fused): on such a CPU the fusion brings no gain, and the cap keeps it
# from costing much.
CPU_MAX_FUSED_BYTES: dict[str, int | None] = {"cpu": 4 * 2 ** 20}

_ELEMENTWISE_ACTS = (nn.Hardswish, nn.ReLU)


class FusedDynamicConv2d(SwappedOperator, DynamicConv2d):
    """``DynamicConv2d`` whose aggregation and convolution run as ``kernels.dynamic_conv`` on ``backend``."""

    replaces = DynamicConv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dynamic_conv(x, self.attention(x), self.weight, self.bias, self.stride, self.groups,
                            backend=self.backend)


class FusedDynamicShiftMax(SwappedOperator, DynamicShiftMax):
    """``DynamicShiftMax`` run as ``kernels.shift_max`` on ``backend``."""

    replaces = DynamicShiftMax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shift_max(x, self.coefficients(x), self.channels // self.groups, backend=self.backend)


FUSED_OPERATORS = {DynamicConv2d: FusedDynamicConv2d, DynamicShiftMax: FusedDynamicShiftMax}


def _apply_act(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # in place, as the candidates' own activations: the batch norm before needs its input only
    if isinstance(module, nn.Hardswish):
        return F.hardswish(x, inplace=True)
    if isinstance(module, nn.ReLU):
        return F.relu(x, inplace=True)
    raise TypeError(f"no fused activation for {type(module).__name__}")


def _act_of(block: ConvBNAct) -> type | None:
    return None if block.act is None else type(block.act)


def _fusable(module: nn.Module) -> bool:
    if not isinstance(module, InvertedResidual) or not isinstance(module.expand, ConvBNAct):
        return False
    if module.dynamic:  # per-sample kernels: run as candidates, through their fused operators
        return False
    for block in (module.expand, module.depthwise):
        if block.act is not None and not isinstance(block.act, _ELEMENTWISE_ACTS):
            return False
    if module.project.act is not None:  # the weighted sum is folded into the projection's batch norm
        return False
    return isinstance(module.se, (nn.Identity, SqueezeExcite))


def _signature(module: InvertedResidual) -> tuple:
    """Candidates with equal signatures can be fused together."""
    return (module.in_channels, module.out_channels, module.stride, module.has_residual,
            _act_of(module.expand), _act_of(module.depthwise), _act_of(module.project))


def _bn_factor(bn: nn.BatchNorm2d) -> float:
    """The running-average factor this BN would use on its next training forward (after increment)."""
    if bn.momentum is None:
        return 1.0 / float(bn.num_batches_tracked.item() + 1)
    return bn.momentum


def fused_batch_norm(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d],
                     scale: torch.Tensor | None = None) -> torch.Tensor:
    """``cat([bn(x_i) * scale_i])`` over channel slices ``x_i`` of ``x``, in one batch-norm call.

    ``scale`` (one value per BN, optional) multiplies each BN's affine output; it is folded into
    the affine parameters. Running statistics and ``num_batches_tracked`` end exactly as the
    separate BNs would leave them.
    """
    first = bns[0]
    for bn in bns:
        if (bn.training, bn.track_running_stats, bn.eps, bn.affine) != (
                first.training, first.track_running_stats, first.eps, first.affine):
            raise ValueError("fused batch norm needs BNs with equal mode, eps and affine")
    sizes = [bn.num_features for bn in bns]
    weight = bias = None
    if first.affine:
        weight = torch.cat([bn.weight for bn in bns])
        bias = torch.cat([bn.bias for bn in bns])
    if scale is not None:
        rep = torch.repeat_interleave(scale, torch.tensor(sizes, device=scale.device), output_size=sum(sizes))
        weight = rep if weight is None else weight * rep
        bias = None if bias is None else bias * rep
    tracking = first.track_running_stats and first.running_mean is not None
    if first.training and tracking:
        factors = [_bn_factor(bn) for bn in bns]
        for bn in bns:
            bn.num_batches_tracked.add_(1)
        if all(f == factors[0] for f in factors):
            running_mean = torch.cat([bn.running_mean for bn in bns])
            running_var = torch.cat([bn.running_var for bn in bns])
            out = F.batch_norm(x, running_mean, running_var, weight, bias, True, factors[0], first.eps)
            with torch.no_grad():
                for bn, m, v in zip(bns, running_mean.split(sizes), running_var.split(sizes)):
                    bn.running_mean.copy_(m)
                    bn.running_var.copy_(v)
            return out
        # different factors: batch statistics for the output, buffers updated per BN
        out = F.batch_norm(x, None, None, weight, bias, True, 0.0, first.eps)
        with torch.no_grad():
            n = x.numel() // x.shape[1]
            mean = x.mean((0, 2, 3))
            var = x.var((0, 2, 3), unbiased=n > 1)
            for bn, f, m, v in zip(bns, factors, mean.split(sizes), var.split(sizes)):
                bn.running_mean.mul_(1 - f).add_(m, alpha=f)
                bn.running_var.mul_(1 - f).add_(v, alpha=f)
        return out
    if tracking:  # eval with running statistics
        running_mean = torch.cat([bn.running_mean for bn in bns])
        running_var = torch.cat([bn.running_var for bn in bns])
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, first.eps)
    return F.batch_norm(x, None, None, weight, bias, True, 0.0, first.eps)


def _fused_inverted_residuals(x: torch.Tensor, blocks: list[InvertedResidual], w: torch.Tensor,
                              backend: str = "auto") -> torch.Tensor:
    """``sum_i w[i] * project_i(se_i(dw_i(expand_i(x))))`` (without the residual), fused."""
    # order by (mid width, SE) so that each projection group reads a contiguous channel range
    def key(j: int) -> tuple[int, bool]:
        return blocks[j].mid_channels, isinstance(blocks[j].se, SqueezeExcite)

    order = sorted(range(len(blocks)), key=key)
    keys = [key(j) for j in order]
    blocks = [blocks[j] for j in order]
    w = w[torch.tensor(order, device=w.device)]
    mids = [b.mid_channels for b in blocks]
    first = blocks[0]

    # 1. expand: one 1x1 conv over all candidates' channels
    h = F.conv2d(x, torch.cat([b.expand.conv.weight for b in blocks]))
    h = fused_batch_norm(h, [b.expand.bn for b in blocks])
    if first.expand.act is not None:
        h = _apply_act(first.expand.act, h)

    # 2. depthwise: one pass over every candidate's channels, each with its own kernel size
    h = mixconv_depthwise(h, [b.depthwise.conv.weight for b in blocks], first.stride, backend=backend)
    h = fused_batch_norm(h, [b.depthwise.bn for b in blocks])
    if first.depthwise.act is not None:
        h = _apply_act(first.depthwise.act, h)

    # 3./4. per group of equal (mid width, SE): squeeze-excite gates on that slice, one grouped
    # 1x1 projection, one batch norm whose affine parameters carry the mixing weights
    # (split, not slicing: the backward of a split concatenates, that of a slice zero-fills)
    bounds = [0] + [j for j in range(1, len(blocks)) if keys[j] != keys[j - 1]] + [len(blocks)]
    parts = h.split([sum(mids[a:b]) for a, b in pairwise(bounds)], 1)
    out_ch = first.out_channels
    out = None
    for start, end, hg in zip(bounds, bounds[1:], parts):
        group = blocks[start:end]
        n, mid = end - start, mids[start]
        if keys[start][1]:
            pooled = hg.mean((2, 3), keepdim=True).split(mid, 1)
            gates = [b.se.gate(b.se.expand(b.se.act(b.se.reduce(s)))) for b, s in zip(group, pooled)]
            hg = hg * torch.cat(gates, 1)
        y = F.conv2d(hg, torch.cat([b.project.conv.weight for b in group]), groups=n)
        y = fused_batch_norm(y, [b.project.bn for b in group], scale=w[start:end])
        y = y.unflatten(1, (n, out_ch)).sum(1) if n > 1 else y
        out = y if out is None else out + y
    assert out is not None
    return out


class FusedExecution(Execution):
    """Run mixed layers horizontally fused and dynamic operators through ``supernets.kernels`` (the default).

    Same weights and the same results as ``PlainExecution`` up to float rounding, the same
    gradients and batch-norm buffer updates. ``backend`` is that of the kernels (``auto``: Triton
    for CUDA tensors when Triton imports, PyTorch otherwise; ``torch`` keeps PyTorch and cuDNN on
    the GPU too). Per device type (``x.device.type``), ``group_by_kernel`` fuses only candidates
    of equal depthwise kernel size, and ``max_fused_bytes`` caps the expanded activation of one
    fused block (None: no cap); the defaults turn both on for the CPU only (see the module notes).
    """

    fused = True

    def __init__(self, backend: str = "auto", group_by_kernel: Mapping[str, bool] | None = None,
                 max_fused_bytes: Mapping[str, int | None] | None = None) -> None:
        if backend not in ("auto", "triton", "torch"):
            raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
        self.backend = backend
        self.group_by_kernel = dict(CPU_GROUP_BY_KERNEL if group_by_kernel is None else group_by_kernel)
        self.max_fused_bytes = dict(CPU_MAX_FUSED_BYTES if max_fused_bytes is None else max_fused_bytes)

    def __repr__(self) -> str:
        return (f"FusedExecution(backend={self.backend!r}, group_by_kernel={self.group_by_kernel}, "
                f"max_fused_bytes={self.max_fused_bytes})")

    def install(self, supernet: nn.Module) -> None:
        """Swap every ``DynamicConv2d`` and ``DynamicShiftMax`` for its fused operator (same parameters)."""
        swap_operators(supernet, FUSED_OPERATORS, self.backend)

    def run(self, layer: MixedLayer, x: torch.Tensor, weights: torch.Tensor | None,
            active: list[int]) -> torch.Tensor:
        """The plain sum with the active inverted-residual candidates horizontally fused."""
        if len(active) <= 1 or not isinstance(x, torch.Tensor):  # a pyramid (DyHead blocks): nothing to fuse
            return _PLAIN.run(layer, x, weights, active)
        candidates = layer.candidates
        if weights is None:
            weights = torch.ones(len(candidates), dtype=x.dtype, device=x.device)

        identity: list[int] = []
        groups: dict[tuple, list[int]] = {}
        rest: list[int] = []
        for i in active:
            c = candidates[i]
            if isinstance(c, nn.Identity):
                identity.append(i)
            elif _fusable(c):
                key = _signature(c)
                if self.group_by_kernel.get(x.device.type, False):
                    key += (c.kernel_size,)
                groups.setdefault(key, []).append(i)
            else:
                rest.append(i)
        cap = self.max_fused_bytes.get(x.device.type)
        if cap is not None:
            groups = _cut_under_cap(groups, candidates, cap, x)
        for key in [k for k, v in groups.items() if len(v) == 1]:
            rest.extend(groups.pop(key))

        out = None
        x_scale = []  # indices whose weights multiply x itself (skip candidates and residuals)
        for indices in groups.values():
            idx = torch.tensor(indices, device=weights.device)
            y = _fused_inverted_residuals(x, [candidates[i] for i in indices], weights[idx], self.backend)
            out = y if out is None else out + y
            if candidates[indices[0]].has_residual:
                x_scale.extend(indices)
        x_scale.extend(identity)
        if x_scale:
            s = weights[torch.tensor(x_scale, device=weights.device)].sum()
            y = x * s
            out = y if out is None else out + y
        for i in sorted(rest):
            y = candidates[i](x) * weights[i]
            out = y if out is None else out + y
        assert out is not None, "a mixed layer needs at least one active candidate"
        return out


_PLAIN = PlainExecution()


def _cut_under_cap(groups: dict[tuple, list[int]], candidates: nn.ModuleList, cap: int,
                   x: torch.Tensor) -> dict[tuple, list[int]]:
    """Each group cut into blocks, narrowest candidates first, whose expanded activation stays under ``cap`` bytes."""
    per_channel = x.shape[0] * x.shape[2] * x.shape[3] * x.element_size()
    chunked: dict[tuple, list[int]] = {}
    for key, indices in groups.items():
        block: list[int] = []
        for i in sorted(indices, key=lambda j: candidates[j].mid_channels):
            mid = candidates[i].mid_channels
            if block and (sum(candidates[j].mid_channels for j in block) + mid) * per_channel > cap:
                chunked[key + (len(chunked),)] = block
                block = []
            block.append(i)
        chunked[key + (len(chunked),)] = block
    return chunked
