"""Mixed-kernel depthwise convolution: ``sum_i w_i * dwconv(x, K_i)`` as one depthwise pass.

With 'same' padding, depthwise convolutions of kernel sizes 3/5/7 on the same input sum to one
depthwise convolution with the kernel ``sum_i w_i * centre_pad(K_i)`` (padded to the largest size).

* ``mixed_depthwise_reference``: PyTorch, merged kernel then ``F.conv2d(groups=C)``.
* ``mixed_depthwise_conv``: dispatches on ``backend`` (``auto`` = Triton for CUDA tensors when
  Triton imports, else the reference). The Triton path is ``MixedDepthwiseFunction``: the merge is
  a tiny PyTorch op, the convolution and both its gradients (input, merged kernel) are Triton
  kernels, and the backward maps the merged kernel's gradient to each ``K_i`` (``w_i * crop``) and
  to the weights (``<crop(grad merged), K_i>``).

The depthwise kernels here also take per-sample kernels and biases (``dynamic_conv`` uses them).
Accumulation is in float32; tensors keep their dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._triton import cdiv, jit, pixel_block, resolve_backend

tl = None  # triton.language, bound by ``jit`` at the first launch


# ----------------------------------------------------------------------------- Triton kernels

@jit
def _dw_fwd_kernel(x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, C, H, W, HO, WO, w_sn, b_sn,
                   STRIDE: tl.constexpr, KS: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_RADIUS: tl.constexpr, BLOCK: tl.constexpr):
    # one program: one (sample, channel) plane, BLOCK output pixels. With HAS_RADIUS, channel c's
    # kernel is centre-padded from radius r[c]: taps outside it are zero and are not loaded.
    nc = tl.program_id(0).to(tl.int64)
    n = nc // C
    c = nc % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HO * WO
    oh = offs // WO
    ow = offs % WO
    x_base = x_ptr + nc * H * W
    w_base = w_ptr + n * w_sn + c * (KS * KS)
    if HAS_RADIUS:
        lo = PAD - tl.load(r_ptr + c)  # first tap inside channel c's kernel
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kh in tl.static_range(KS):
        ih = oh * STRIDE - PAD + kh
        row_ok = mask & (ih >= 0) & (ih < H)
        if HAS_RADIUS:
            row_ok = row_ok & (lo <= kh) & (lo <= 2 * PAD - kh)
        for kw in tl.static_range(KS):
            iw = ow * STRIDE - PAD + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            if HAS_RADIUS:
                ok = ok & (lo <= kw) & (lo <= 2 * PAD - kw)
            xv = tl.load(x_base + ih * W + iw, mask=ok, other=0.0).to(tl.float32)
            wv = tl.load(w_base + (kh * KS + kw)).to(tl.float32)
            acc += xv * wv
    if HAS_BIAS:
        acc += tl.load(b_ptr + n * b_sn + c).to(tl.float32)
    tl.store(y_ptr + nc * HO * WO + offs, acc, mask=mask)


@jit
def _dw_grad_x_kernel(gy_ptr, w_ptr, r_ptr, gx_ptr, C, H, W, HO, WO, w_sn,
                      STRIDE: tl.constexpr, KS: tl.constexpr, PAD: tl.constexpr, HAS_RADIUS: tl.constexpr,
                      BLOCK: tl.constexpr):
    # gx[ih, iw] = sum over taps (kh, kw) with oh = (ih + PAD - kh) / STRIDE integral and in range
    nc = tl.program_id(0).to(tl.int64)
    n = nc // C
    c = nc % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < H * W
    ih = offs // W
    iw = offs % W
    gy_base = gy_ptr + nc * HO * WO
    w_base = w_ptr + n * w_sn + c * (KS * KS)
    if HAS_RADIUS:
        lo = PAD - tl.load(r_ptr + c)  # first tap inside channel c's kernel
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for kh in tl.static_range(KS):
        th = tl.maximum(ih + PAD - kh, -1)
        oh = tl.maximum(th, 0) // STRIDE
        row_ok = mask & (th >= 0) & (th % STRIDE == 0) & (oh < HO)
        if HAS_RADIUS:
            row_ok = row_ok & (lo <= kh) & (lo <= 2 * PAD - kh)
        for kw in tl.static_range(KS):
            tw = tl.maximum(iw + PAD - kw, -1)
            ow = tl.maximum(tw, 0) // STRIDE
            ok = row_ok & (tw >= 0) & (tw % STRIDE == 0) & (ow < WO)
            if HAS_RADIUS:
                ok = ok & (lo <= kw) & (lo <= 2 * PAD - kw)
            g = tl.load(gy_base + oh * WO + ow, mask=ok, other=0.0).to(tl.float32)
            wv = tl.load(w_base + (kh * KS + kw)).to(tl.float32)
            acc += g * wv
    tl.store(gx_ptr + nc * H * W + offs, acc, mask=mask)


@jit
def _dw_grad_w_kernel(gy_ptr, x_ptr, r_ptr, part_ptr, C, H, W, HO, WO, NBLK,
                      STRIDE: tl.constexpr, KS: tl.constexpr, PAD: tl.constexpr, HAS_RADIUS: tl.constexpr,
                      BLOCK: tl.constexpr):
    # partial kernel gradient of one plane over BLOCK output pixels: part[nc, blk, tap]
    # (taps outside channel c's radius get 0)
    nc = tl.program_id(0).to(tl.int64)
    c = nc % C
    if HAS_RADIUS:
        lo = PAD - tl.load(r_ptr + c)  # first tap inside channel c's kernel
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HO * WO
    oh = offs // WO
    ow = offs % WO
    g = tl.load(gy_ptr + nc * HO * WO + offs, mask=mask, other=0.0).to(tl.float32)
    x_base = x_ptr + nc * H * W
    part_base = part_ptr + (nc * NBLK + blk) * (KS * KS)
    for kh in tl.static_range(KS):
        ih = oh * STRIDE - PAD + kh
        row_ok = mask & (ih >= 0) & (ih < H)
        if HAS_RADIUS:
            row_ok = row_ok & (lo <= kh) & (lo <= 2 * PAD - kh)
        for kw in tl.static_range(KS):
            iw = ow * STRIDE - PAD + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            if HAS_RADIUS:
                ok = ok & (lo <= kw) & (lo <= 2 * PAD - kw)
            xv = tl.load(x_base + ih * W + iw, mask=ok, other=0.0).to(tl.float32)
            tl.store(part_base + (kh * KS + kw), tl.sum(g * xv, axis=0))


# ----------------------------------------------------------------------------- host wrappers

def _out_size(size: int, ks: int, stride: int) -> int:
    return (size + 2 * (ks // 2) - ks) // stride + 1


def depthwise_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                      per_sample: bool, radius: torch.Tensor | None = None) -> torch.Tensor:
    """Triton depthwise conv, 'same' padding. ``weight``: (C, k, k), or (N, C, k, k) when ``per_sample``;
    ``bias``: None, (C,), or (N, C) when ``per_sample``; ``radius``: None, or (C,) int32, each
    channel's kernel being zero outside its centre ``2 * radius + 1`` square (those taps are skipped)."""
    x = x.contiguous()
    weight = weight.contiguous()
    n, c, h, w = x.shape
    ks = weight.shape[-1]
    ho, wo = _out_size(h, ks, stride), _out_size(w, ks, stride)
    y = torch.empty(n, c, ho, wo, device=x.device, dtype=x.dtype)
    block = pixel_block(ho * wo)
    has_bias = bias is not None
    b = bias.contiguous() if has_bias else weight  # dummy pointer when there is no bias
    r = radius if radius is not None else weight  # likewise
    _dw_fwd_kernel[(n * c, cdiv(ho * wo, block))](
        x, weight, b, r, y, c, h, w, ho, wo, c * ks * ks if per_sample else 0, c if per_sample else 0,
        STRIDE=stride, KS=ks, PAD=ks // 2, HAS_BIAS=has_bias, HAS_RADIUS=radius is not None, BLOCK=block)
    return y


def depthwise_grad_input(gy: torch.Tensor, weight: torch.Tensor, in_hw: tuple[int, int], stride: int,
                         per_sample: bool, radius: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of ``depthwise_forward`` with respect to its input (Triton)."""
    gy = gy.contiguous()
    weight = weight.contiguous()
    n, c, ho, wo = gy.shape
    h, w = in_hw
    ks = weight.shape[-1]
    gx = torch.empty(n, c, h, w, device=gy.device, dtype=gy.dtype)
    block = pixel_block(h * w)
    _dw_grad_x_kernel[(n * c, cdiv(h * w, block))](
        gy, weight, radius if radius is not None else weight, gx, c, h, w, ho, wo, c * ks * ks if per_sample else 0,
        STRIDE=stride, KS=ks, PAD=ks // 2, HAS_RADIUS=radius is not None, BLOCK=block)
    return gx


def depthwise_grad_weight(gy: torch.Tensor, x: torch.Tensor, ks: int, stride: int,
                          radius: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample kernel gradient of ``depthwise_forward``, shape (N, C, k, k), float32 (Triton partial
    sums per pixel block, then a deterministic sum over the blocks)."""
    gy = gy.contiguous()
    x = x.contiguous()
    n, c, h, w = x.shape
    ho, wo = gy.shape[-2:]
    block = pixel_block(ho * wo)
    nblk = cdiv(ho * wo, block)
    part = torch.empty(n * c, nblk, ks * ks, device=x.device, dtype=torch.float32)
    _dw_grad_w_kernel[(n * c, nblk)](gy, x, radius if radius is not None else x, part, c, h, w, ho, wo, nblk,
                                     STRIDE=stride, KS=ks, PAD=ks // 2, HAS_RADIUS=radius is not None,
                                     BLOCK=block)
    return part.sum(1).view(n, c, ks, ks)


# ----------------------------------------------------------------------------- mixed depthwise

def _centre_pad(kernel: torch.Tensor, size: int) -> torch.Tensor:
    pad = (size - kernel.shape[-1]) // 2
    return F.pad(kernel, (pad, pad, pad, pad)) if pad else kernel


def _crop(kernel: torch.Tensor, size: int) -> torch.Tensor:
    start = (kernel.shape[-1] - size) // 2
    return kernel[..., start:start + size, start:start + size]


def _kernel_list(kernels: Sequence[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    """A list of (C, 1, k, k) kernels from a list, or from a stack of shape (M, C, 1, k, k)."""
    kernels = list(kernels.unbind(0)) if isinstance(kernels, torch.Tensor) else list(kernels)
    if not kernels:
        raise ValueError("mixed depthwise convolution needs at least one kernel")
    for k in kernels:
        if k.dim() != 4 or k.shape[1] != 1 or k.shape[-1] != k.shape[-2] or k.shape[-1] % 2 == 0:
            raise ValueError(f"depthwise kernels must be (C, 1, k, k) with odd k, got {tuple(k.shape)}")
    return kernels


def merge_kernels(kernels: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """``sum_i weights[i] * centre_pad(kernels[i])`` at the largest kernel size, shape (C, 1, k, k)."""
    kmax = max(k.shape[-1] for k in kernels)
    merged = None
    for i, k in enumerate(kernels):
        term = weights[i].to(k.dtype) * _centre_pad(k, kmax)
        merged = term if merged is None else merged + term
    return merged


def mixed_depthwise_reference(x: torch.Tensor, kernels: Sequence[torch.Tensor] | torch.Tensor,
                              weights: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """PyTorch reference: one depthwise ``F.conv2d`` with the merged kernel, 'same' padding."""
    kernels = _kernel_list(kernels)
    merged = merge_kernels(kernels, weights)
    ks = merged.shape[-1]
    return F.conv2d(x, merged, None, stride, ks // 2, 1, x.shape[1])


class MixedDepthwiseFunction(torch.autograd.Function):
    """Triton forward and backward of the mixed depthwise conv; gradients for x, weights and each kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weights: torch.Tensor, stride: int, *kernels: torch.Tensor) -> torch.Tensor:
        merged = merge_kernels(kernels, weights)  # no graph inside an autograd.Function's forward
        ks = merged.shape[-1]
        y = depthwise_forward(x, merged.view(-1, ks, ks), None, stride, per_sample=False)
        ctx.save_for_backward(x, weights, merged, *kernels)
        ctx.stride = stride
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, weights, merged, *kernels = ctx.saved_tensors
        ks = merged.shape[-1]
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_k = ctx.needs_input_grad[3:]
        gx = g_weights = None
        if need_x:
            gx = depthwise_grad_input(gy, merged.view(-1, ks, ks), x.shape[-2:], ctx.stride, per_sample=False)
        g_kernels = [None] * len(kernels)
        if need_w or any(need_k):
            g_merged = depthwise_grad_weight(gy, x, ks, ctx.stride).sum(0).unsqueeze(1)  # (C, 1, k, k)
            if need_w:
                g_weights = torch.stack([(_crop(g_merged, k.shape[-1]) * k.float()).sum() for k in kernels])
                g_weights = g_weights.to(weights.dtype)
            for i, k in enumerate(kernels):
                if need_k[i]:
                    g_kernels[i] = (weights[i].float() * _crop(g_merged, k.shape[-1])).to(k.dtype)
        return (gx, g_weights, None, *g_kernels)


def mixed_depthwise_conv(x: torch.Tensor, kernels: Sequence[torch.Tensor] | torch.Tensor, weights: torch.Tensor,
                         stride: int = 1, backend: str = "auto") -> torch.Tensor:
    """``sum_i weights[i] * depthwise_conv(x, kernels[i])`` with 'same' padding, as one pass.

    ``x``: (N, C, H, W); ``kernels``: (C, 1, k_i, k_i) each with odd k_i (a list, or a stack of equal
    sizes (M, C, 1, k, k)); ``weights``: (M,). ``backend``: ``auto`` (Triton for CUDA tensors when
    Triton imports, else PyTorch), ``triton`` (raises where it cannot run) or ``torch``.
    """
    kernels = _kernel_list(kernels)
    if weights.shape != (len(kernels),):
        raise ValueError(f"weights must have shape ({len(kernels)},), got {tuple(weights.shape)}")
    if resolve_backend(backend, x, *kernels) == "torch":
        return mixed_depthwise_reference(x, kernels, weights, stride)
    return MixedDepthwiseFunction.apply(x, weights, stride, *kernels)


# ----------------------------------------------------------------------------- mixed-size depthwise

def mixconv_depthwise_reference(x: torch.Tensor, kernels: Sequence[torch.Tensor], stride: int = 1) -> torch.Tensor:
    """PyTorch reference: one depthwise ``F.conv2d`` with every kernel centre-padded to the largest size."""
    kernels = _kernel_list(kernels)
    kmax = max(k.shape[-1] for k in kernels)
    weight = torch.cat([_centre_pad(k, kmax) for k in kernels]) if len(kernels) > 1 else kernels[0]
    return F.conv2d(x, weight, None, stride, kmax // 2, 1, x.shape[1])


class DepthwiseFunction(torch.autograd.Function):
    """Triton forward and backward of a depthwise conv whose channels skip the taps outside their radius."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, radius: torch.Tensor, stride: int) -> torch.Tensor:
        ks = weight.shape[-1]
        y = depthwise_forward(x, weight.view(-1, ks, ks), None, stride, per_sample=False, radius=radius)
        ctx.save_for_backward(x, weight, radius)
        ctx.stride = stride
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, weight, radius = ctx.saved_tensors
        ks = weight.shape[-1]
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = depthwise_grad_input(gy, weight.view(-1, ks, ks), x.shape[-2:], ctx.stride, per_sample=False,
                                      radius=radius)
        if ctx.needs_input_grad[1]:
            gw = depthwise_grad_weight(gy, x, ks, ctx.stride, radius=radius).sum(0).unsqueeze(1).to(weight.dtype)
        return gx, gw, None, None


def mixconv_depthwise(x: torch.Tensor, kernels: Sequence[torch.Tensor], stride: int = 1,
                      backend: str = "auto") -> torch.Tensor:
    """Depthwise convolution of channel blocks with kernels of their own sizes, as one pass (MixConv-style).

    ``kernels[i]`` (C_i, 1, k_i, k_i), odd k_i, convolves the i-th block of C_i channels of ``x``
    (N, sum C_i, H, W) with 'same' padding. This is how a fused mixed layer runs the depthwise
    convolutions of all its candidates at once. The reference centre-pads every kernel to the
    largest size; the Triton path (``backend`` as in ``mixed_depthwise_conv``) pads too but skips
    each channel's zero taps, so a 3x3 block costs 9 taps, not 49.
    """
    kernels = _kernel_list(kernels)
    if sum(k.shape[0] for k in kernels) != x.shape[1]:
        raise ValueError(f"kernels cover {sum(k.shape[0] for k in kernels)} channels, x has {x.shape[1]}")
    if resolve_backend(backend, x, *kernels) == "torch":
        return mixconv_depthwise_reference(x, kernels, stride)
    kmax = max(k.shape[-1] for k in kernels)
    weight = torch.cat([_centre_pad(k, kmax) for k in kernels])
    radius = torch.cat([torch.full((k.shape[0],), k.shape[-1] // 2, dtype=torch.int32, device=x.device)
                        for k in kernels])
    return DepthwiseFunction.apply(x, weight, radius, stride)
