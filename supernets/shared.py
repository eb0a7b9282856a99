"""Shared weights: the inverted-residual candidates of a layer as slices of one widest block.

Single-Path NAS (Stamoulis et al. 2019) and FBNetV2 (Wan et al. 2020) hold the candidates of a
layer in one set of weights: a kernel size is the centre crop of the largest depthwise kernel, an
expansion the leading channels of the widest expansion, and squeeze-excite one module switched
on or off. ``SharedInvertedResidual`` stores that widest block (an ``InvertedResidual`` with the
layer's largest expansion and kernel, SE on) and computes two things from it.

**A candidate** ``(k, mid, se)`` (``sliced``): the inverted residual of kernel ``k``, ``mid``
expanded channels and SE or not, whose weights are the leading ``mid`` channels of every
convolution and batch norm, the centre ``k x k`` taps of the depthwise kernel, and the leading
``reduce(mid)`` hidden units of the SE (``make_divisible(mid / 4, 8)``, as the block itself
sizes them). Running it costs what that candidate costs, and ``export`` copies exactly these
slices into a freshly built candidate (``Supernet.extract``).

**A mixture** (``mixed``), for candidate weights ``w_i`` over the active shared candidates
(``W = sum_i w_i``; the other candidates of the layer, ``skip`` among them, are mixed on their
outputs by the layer, so ``skip`` is a weight on the identity):

- kernel probabilities ``p_k = sum_{i: k_i = k} w_i / W``; the depthwise kernel is
  ``D_mix = D * sum_k p_k M_k`` (``M_k`` is 1 on the centre ``k x k`` taps, 0 elsewhere): the
  probability-weighted sum of the centre-cropped kernels, zero-padded to the largest;
- channel mask ``m_c = sum_{i: c < mid_i} w_i / W`` (FBNetV2's weighted sum of the expansions'
  leading-channel masks);
- SE probability ``q = sum_{i: se_i} w_i / W`` and SE hidden-unit mask
  ``n_j = sum_{i: se_i, j < reduce(mid_i)} w_i / sum_{i: se_i} w_i``;
- with ``E, B_e`` the expansion and its batch norm, ``B_d`` the depthwise batch norm, ``P, B_p``
  the projection, ``a`` the activation and ``x`` the input::

      h = a(B_e(E x))                                   # one expansion at the widest active width
      d = m * a(B_d(dwconv(h, D_mix)))                  # one depthwise pass, then the channel mask
      s = d * (q * hsigmoid(U(n * relu(R mean(d)))) + (1 - q))   # SE switched by q
      y = W * (B_p(P s) + x [if residual])

This mixes inside the block, before the nonlinearities: it is not the weighted sum of the
candidates' outputs (that would need one pass per candidate), but it costs about one pass of the
largest active candidate, and it is exactly candidate ``i`` when ``w`` is one-hot on ``i``:
the masks then select its channels, taps and hidden units, and the masked channels add zeros. A
candidate pruned from the layer (weight 0 in every mode) contributes nothing: channels, taps or
hidden units that no active candidate uses get zero weight and no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xsearch.search_spaces.blocks import ConvBNAct, InvertedResidual, make_divisible

from .mixed import MixedLayer

SHARING = ("none", "shared")


def shareable(module: nn.Module) -> bool:
    """True for a static inverted residual (expand conv, plain activations) that can be a slice of a widest block."""
    if not isinstance(module, InvertedResidual) or module.dynamic or not isinstance(module.expand, ConvBNAct):
        return False
    return module.act in ("relu", "hswish")


def _spec(block: InvertedResidual) -> tuple[int, int, bool]:
    return block.kernel_size, block.mid_channels, bool(block.use_se)


def _se_reduced(mid: int) -> int:
    return make_divisible(mid * 0.25, 8)


def _batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d, n: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``bn`` restricted to its leading ``n`` channels (its running statistics updated in place), as ``bn.forward`` does."""
    factor = 0.0
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or bn.running_mean is None
    running_mean = bn.running_mean[:n] if bn.running_mean is not None else None
    running_var = bn.running_var[:n] if bn.running_var is not None else None
    if use_batch and running_mean is not None and not bn.track_running_stats:
        running_mean = running_var = None
    weight, bias = bn.weight[:n], bn.bias[:n]
    if scale is not None:
        weight, bias = weight * scale, bias * scale
    return F.batch_norm(x, running_mean, running_var, weight, bias, use_batch, factor, bn.eps)


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    return F.relu(x) if name == "relu" else F.hardswish(x)


class SharedInvertedResidual(nn.Module):
    """The widest block of one layer, and its candidates as slices of it (see the module doc)."""

    def __init__(self, candidates: Sequence[InvertedResidual]) -> None:
        super().__init__()
        first = candidates[0]
        for c in candidates:
            if (c.in_channels, c.out_channels, c.stride, c.act) != (first.in_channels, first.out_channels,
                                                                    first.stride, first.act):
                raise ValueError("shared candidates need equal input/output widths, stride and activation")
        widest = max(candidates, key=lambda c: c.mid_channels)
        kernel = max(c.kernel_size for c in candidates)
        self.block = InvertedResidual(first.in_channels, first.out_channels, kernel, widest.expansion,
                                      first.stride, se=any(c.use_se for c in candidates), act=first.act)
        self.kernel_size, self.mid_channels = kernel, self.block.mid_channels
        self.stride, self.act, self.has_residual = first.stride, first.act, first.has_residual

    # --- one candidate ---------------------------------------------------------------
    def _crop(self, k: int) -> slice:
        start = (self.kernel_size - k) // 2
        return slice(start, start + k)

    def sliced(self, x: torch.Tensor, k: int, mid: int, se: bool) -> torch.Tensor:
        """Candidate ``(k, mid, se)`` on its slices of the shared weights (costs what the candidate costs)."""
        b = self.block
        h = F.conv2d(x, b.expand.conv.weight[:mid])
        h = _act(self.act, _batch_norm(h, b.expand.bn, mid))
        crop = self._crop(k)
        h = F.conv2d(h, b.depthwise.conv.weight[:mid, :, crop, crop], None, self.stride, k // 2, 1, mid)
        h = _act(self.act, _batch_norm(h, b.depthwise.bn, mid))
        if se:
            r = _se_reduced(mid)
            s = h.mean((2, 3), keepdim=True)
            s = F.relu(F.conv2d(s, b.se.reduce.weight[:r, :mid], b.se.reduce.bias[:r]))
            h = h * F.hardsigmoid(F.conv2d(s, b.se.expand.weight[:mid, :r], b.se.expand.bias[:mid]))
        out = _batch_norm(F.conv2d(h, b.project.conv.weight[:, :mid]), b.project.bn, b.project.bn.num_features)
        return out + x if self.has_residual else out

    def export(self, target: InvertedResidual) -> None:
        """Copy candidate ``target``'s slices of the shared weights into ``target`` (a block of the space)."""
        k, mid, se = _spec(target)
        b, crop = self.block, self._crop(k)
        state = {}
        for name in ("expand", "depthwise", "project"):
            src: ConvBNAct = getattr(b, name)
            weight = src.conv.weight
            if name == "expand":
                weight = weight[:mid]
            elif name == "depthwise":
                weight = weight[:mid, :, crop, crop]
            else:
                weight = weight[:, :mid]
            state[f"{name}.0.weight"] = weight
            n = mid if name != "project" else src.bn.num_features
            for key in ("weight", "bias", "running_mean", "running_var"):
                state[f"{name}.1.{key}"] = getattr(src.bn, key)[:n]
            state[f"{name}.1.num_batches_tracked"] = src.bn.num_batches_tracked
        if se:
            r = _se_reduced(mid)
            state.update({"se.reduce.weight": b.se.reduce.weight[:r, :mid], "se.reduce.bias": b.se.reduce.bias[:r],
                          "se.expand.weight": b.se.expand.weight[:mid, :r], "se.expand.bias": b.se.expand.bias[:mid]})
        target.load_state_dict({key: value.detach().clone() for key, value in state.items()})

    # --- a mixture -------------------------------------------------------------------
    def mixed(self, x: torch.Tensor, specs: Sequence[tuple[int, int, bool]], weights: torch.Tensor) -> torch.Tensor:
        """The mixture of candidates ``specs`` with weights ``weights`` (one per spec), as the module doc defines it."""
        b = self.block
        total = weights.sum()
        w = weights / total
        mid = max(s[1] for s in specs)  # channels and taps no active candidate uses are not computed
        kernel = max(s[0] for s in specs)
        device, dtype = x.device, x.dtype
        channel = torch.arange(mid, device=device)
        mask = sum(wi * (channel < s[1]).to(dtype) for wi, s in zip(w, specs))
        taps = torch.zeros(kernel, kernel, device=device, dtype=dtype)
        for wi, s in zip(w, specs):
            start = (kernel - s[0]) // 2
            ring = torch.zeros(kernel, kernel, device=device, dtype=dtype)
            ring[start:start + s[0], start:start + s[0]] = 1
            taps = taps + wi * ring

        h = _act(self.act, _batch_norm(F.conv2d(x, b.expand.conv.weight[:mid]), b.expand.bn, mid))
        crop = self._crop(kernel)
        kernel_weight = b.depthwise.conv.weight[:mid, :, crop, crop] * taps
        h = F.conv2d(h, kernel_weight, None, self.stride, kernel // 2, 1, mid)
        # the channel mask m multiplies d; it is folded into the SE's pooled input and the projection's
        # input columns (the same numbers, without another pass over the full activation)
        h = _act(self.act, _batch_norm(h, b.depthwise.bn, mid))
        mask4 = mask.view(1, -1, 1, 1)
        se_specs = [(wi, s) for wi, s in zip(w, specs) if s[2]]
        if se_specs:
            q = sum(wi for wi, _ in se_specs)
            r = max(_se_reduced(s[1]) for _, s in se_specs)
            unit = torch.arange(r, device=device)
            hidden = sum(wi * (unit < _se_reduced(s[1])).to(dtype) for wi, s in se_specs) / q
            s = h.mean((2, 3), keepdim=True) * mask4
            s = F.relu(F.conv2d(s, b.se.reduce.weight[:r, :mid], b.se.reduce.bias[:r])) * hidden.view(1, -1, 1, 1)
            gate = F.hardsigmoid(F.conv2d(s, b.se.expand.weight[:mid, :r], b.se.expand.bias[:mid]))
            h = h * ((q * gate + (1 - q)) * mask4)
            project = b.project.conv.weight[:, :mid]
        else:
            project = b.project.conv.weight[:, :mid] * mask4
        out = _batch_norm(F.conv2d(h, project), b.project.bn, b.project.bn.num_features)
        if self.has_residual:
            out = out + x
        return out * total


class SharedCandidate(nn.Module):
    """One option of a shared layer: runs ``SharedInvertedResidual.sliced`` (it holds no parameters of its own).

    The shared block is kept out of this module's children, so the state dict stores it once.
    """

    def __init__(self, shared: SharedInvertedResidual, block: InvertedResidual) -> None:
        super().__init__()
        self.__dict__["shared"] = shared
        self.spec = _spec(block)
        self.kernel_size, self.mid_channels, self.use_se = self.spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.sliced(x, *self.spec)

    def extra_repr(self) -> str:
        k, mid, se = self.spec
        return f"k={k}, mid={mid}, se={se}"


class SharedMixedLayer(MixedLayer):
    """A mixed layer whose shareable candidates are slices of one ``SharedInvertedResidual``.

    ``candidates[i]`` is a ``SharedCandidate`` for those (running its slices), the space's own
    module for the rest (``skip``, dynamic blocks, a projection shortcut), which keep their own
    weights. A forward with one candidate runs just that candidate; a mixture runs the shared ones
    as one ``SharedInvertedResidual.mixed`` pass and adds the others' outputs, weighted, through
    the supernet's execution policy. Logits, alive mask, path modes and pruning are ``MixedLayer``'s.
    """

    def __init__(self, label: str, options: Sequence[str], candidates: Sequence[nn.Module]) -> None:
        blocks = [c for c in candidates if shareable(c)]
        shared = SharedInvertedResidual(blocks)
        super().__init__(label, options, [SharedCandidate(shared, c) if shareable(c) else c for c in candidates])
        self.shared = shared
        self.shared_indices = frozenset(i for i, c in enumerate(self.candidates) if isinstance(c, SharedCandidate))

    def run(self, x: torch.Tensor, weights: torch.Tensor | None, active: list[int]) -> torch.Tensor:
        if weights is None or len(active) == 1:
            return super().run(x, weights, active)
        shared = [i for i in active if i in self.shared_indices]
        others = [i for i in active if i not in self.shared_indices]
        out = None
        if shared:
            specs = [self.candidates[i].spec for i in shared]
            out = self.shared.mixed(x, specs, weights[torch.tensor(shared, device=weights.device)])
        if others:
            y = self.execution.run(self, x, weights, others)
            out = y if out is None else out + y
        assert out is not None
        return out

    def export(self, index: int, target: nn.Module) -> None:
        """Copy candidate ``index``'s weights into ``target``, the module ``space.build_candidate`` made for it."""
        candidate = self.candidates[index]
        if isinstance(candidate, SharedCandidate):
            self.shared.export(target)
        else:
            target.load_state_dict(candidate.state_dict())


def can_share(candidates: Sequence[nn.Module]) -> bool:
    """At least two shareable candidates with equal widths, stride and activation: worth one shared block."""
    blocks = [c for c in candidates if shareable(c)]
    if len(blocks) < 2:
        return False
    first = blocks[0]
    return all((c.in_channels, c.out_channels, c.stride, c.act) ==
               (first.in_channels, first.out_channels, first.stride, first.act) for c in blocks)
