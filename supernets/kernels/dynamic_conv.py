"""Dynamic convolution: per-sample kernel ``sum_k pi[n, k] * W_k`` (and bias), then the convolution.

* ``dynamic_conv_reference``: PyTorch, as ``DynamicConv2d.forward``: the aggregated kernels of the
  batch in one matrix product, one grouped ``F.conv2d`` with the batch folded into the groups.
* ``dynamic_conv``: dispatches on ``backend`` like ``mixed_depthwise_conv``. The Triton path
  (``DynamicConvFunction``) covers two layouts and falls back to the reference for the others
  under ``backend="auto"`` (``backend="triton"`` raises for them):

  - depthwise: ``groups == Cin == Cout``, any odd kernel size;
  - pointwise: ``kernel_size == 1``, ``groups == 1``.

  Forward: a Triton kernel aggregates the per-sample kernels and biases (``pi @ bank``); the
  convolution is the per-sample depthwise kernel of ``mixed_depthwise`` or a Triton batched matmul.
  Backward: Triton kernels give the input gradient and the aggregated kernels' gradient (depthwise
  partial sums, or a batched matmul), and the batched matmul maps the latter to ``pi`` and the
  weight bank; the bias gradient's spatial sum is a PyTorch reduction.

'same' padding (``kernel_size // 2``), dilation 1, float32 accumulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton import cdiv, ieee_dot, jit, resolve_backend
from .mixed_depthwise import depthwise_forward, depthwise_grad_input, depthwise_grad_weight

tl = None  # triton.language, bound by ``jit`` at the first launch


# ----------------------------------------------------------------------------- Triton kernels

@jit
def _aggregate_kernel(pi_ptr, bank_ptr, out_ptr, K, D,
                      BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    # out[n, d] = sum_k pi[n, k] * bank[k, d]; one program per (sample, BLOCK_D columns)
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    pi = tl.load(pi_ptr + n * K + ks, mask=kmask, other=0.0).to(tl.float32)
    tile = tl.load(bank_ptr + ks[:, None] * D + cols[None, :], mask=kmask[:, None] & (cols[None, :] < D),
                   other=0.0).to(tl.float32)
    tl.store(out_ptr + n * D + cols, tl.sum(pi[:, None] * tile, axis=0), mask=cols < D)


@jit
def _bmm_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K,
                s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn, s_biasb,
                HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # c[b] = a[b] @ b[b] (+ bias[b][:, None]) with arbitrary strides; grid (M tiles, N tiles, batch)
    bid = tl.program_id(2).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_base = a_ptr + bid * s_ab
    b_base = b_ptr + bid * s_bb
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_base + rm[:, None] * s_am + kk[None, :] * s_ak,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0).to(tl.float32)
        b = tl.load(b_base + kk[:, None] * s_bk + rn[None, :] * s_bn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0).to(tl.float32)
        if IEEE:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.dot(a, b)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + bid * s_biasb + rm, mask=rm < M, other=0.0).to(tl.float32)[:, None]
    tl.store(c_ptr + bid * s_cb + rm[:, None] * s_cm + rn[None, :] * s_cn, acc,
             mask=(rm[:, None] < M) & (rn[None, :] < N))


# ----------------------------------------------------------------------------- host wrappers

def _aggregate(pi: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``pi @ bank.view(K, -1)`` in Triton, shape (N, D), in the bank's dtype."""
    pi = pi.contiguous()
    bank = bank.contiguous()
    n, k = pi.shape
    d = bank.numel() // k
    out = torch.empty(n, d, device=bank.device, dtype=bank.dtype)
    block_k = max(2, 1 << (k - 1).bit_length())
    block_d = 256
    _aggregate_kernel[(n, cdiv(d, block_d))](pi, bank, out, k, d, BLOCK_K=block_k, BLOCK_D=block_d)
    return out


def bmm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Triton ``a @ b`` for (B, M, K) @ (B, K, N) or 2-D operands (any strides, e.g. transposed views),
    plus ``bias`` (B, M) or (M,) broadcast along N; float32 accumulation."""
    squeeze = a.dim() == 2 and b.dim() == 2
    a3 = a.unsqueeze(0) if a.dim() == 2 else a
    b3 = b.unsqueeze(0) if b.dim() == 2 else b
    batch = max(a3.shape[0], b3.shape[0])
    m, k = a3.shape[1:]
    n = b3.shape[2]
    c = torch.empty(batch, m, n, device=a.device, dtype=out_dtype or a.dtype)
    s_ab = a3.stride(0) if a3.shape[0] > 1 else 0
    s_bb = b3.stride(0) if b3.shape[0] > 1 else 0
    has_bias = bias is not None
    if has_bias:
        bias = bias.contiguous()
        s_biasb = bias.stride(0) if bias.dim() == 2 else 0
    else:
        bias, s_biasb = c, 0
    bm = 32 if m > 16 else 16
    bn = 64 if n > 32 else (32 if n > 16 else 16)
    bk = 32 if k > 16 else 16
    _bmm_kernel[(cdiv(m, bm), cdiv(n, bn), batch)](
        a3, b3, bias, c, m, n, k, s_ab, a3.stride(1), a3.stride(2), s_bb, b3.stride(1), b3.stride(2),
        c.stride(0), c.stride(1), c.stride(2), s_biasb,
        HAS_BIAS=has_bias, IEEE=ieee_dot(), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return c[0] if squeeze else c


# ----------------------------------------------------------------------------- dynamic conv

def dynamic_conv_reference(x: torch.Tensor, pi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                           stride: int = 1, groups: int = 1) -> torch.Tensor:
    """PyTorch reference (``DynamicConv2d.forward``): x (N, Cin, H, W), pi (N, K), weight
    (K, Cout, Cin/groups, k, k), bias (K, Cout) or None."""
    b, c, h, w = x.shape
    k, out, cg, ks, _ = weight.shape
    agg = (pi @ weight.reshape(k, -1)).view(b * out, cg, ks, ks)
    agg_bias = (pi @ bias).view(b * out) if bias is not None else None
    y = F.conv2d(x.reshape(1, b * c, h, w), agg, agg_bias, stride, ks // 2, 1, b * groups)
    return y.view(b, out, y.shape[-2], y.shape[-1])


def triton_layout(x: torch.Tensor, weight: torch.Tensor, groups: int) -> str | None:
    """``"depthwise"``, ``"pointwise"`` or None (no Triton path for this convolution)."""
    _, cin = x.shape[:2]
    _, cout, cg, ks, ks2 = weight.shape
    if ks != ks2 or ks % 2 == 0:
        return None
    if groups == cin == cout and cg == 1:
        return "depthwise"
    if ks == 1 and groups == 1:
        return "pointwise"
    return None


class DynamicConvFunction(torch.autograd.Function):
    """Triton forward and backward of the dynamic convolution (depthwise or pointwise layouts)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: int, layout: str) -> torch.Tensor:
        n, cin, h, w = x.shape
        cout, ks = weight.shape[1], weight.shape[-1]
        agg = _aggregate(pi, weight)  # (N, Cout * Cin/groups * k * k)
        agg_bias = _aggregate(pi, bias) if bias is not None else None  # (N, Cout)
        if layout == "depthwise":
            y = depthwise_forward(x, agg.view(n, cout, ks, ks), agg_bias, stride, per_sample=True)
            xs = x
        else:
            xs = x[:, :, ::stride, ::stride].contiguous() if stride > 1 else x.contiguous()
            ho, wo = xs.shape[-2:]
            y = bmm(agg.view(n, cout, cin), xs.view(n, cin, ho * wo), agg_bias).view(n, cout, ho, wo)
        ctx.save_for_backward(xs, pi, weight, bias, agg)
        ctx.stride, ctx.layout, ctx.in_hw = stride, layout, (h, w)
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        xs, pi, weight, bias, agg = ctx.saved_tensors
        stride, layout = ctx.stride, ctx.layout
        n, cin = xs.shape[:2]
        kn, cout, ks = weight.shape[0], weight.shape[1], weight.shape[-1]
        need_x, need_pi, need_w, need_b = ctx.needs_input_grad[:4]
        gy = gy.contiguous()
        gx = g_pi = g_w = g_b = None
        if layout == "depthwise":
            if need_x:
                gx = depthwise_grad_input(gy, agg.view(n, cout, ks, ks), ctx.in_hw, stride, per_sample=True)
            g_agg = depthwise_grad_weight(gy, xs, ks, stride).view(n, -1) if (need_pi or need_w) else None
        else:
            ho, wo = gy.shape[-2:]
            gy2 = gy.view(n, cout, ho * wo)
            if need_x:
                gxs = bmm(agg.view(n, cout, cin).transpose(1, 2), gy2).view(n, cin, ho, wo)
                if stride > 1:
                    gx = gxs.new_zeros(n, cin, *ctx.in_hw)
                    gx[:, :, ::stride, ::stride] = gxs
                else:
                    gx = gxs
            g_agg = (bmm(gy2, xs.view(n, cin, ho * wo).transpose(1, 2), out_dtype=torch.float32).view(n, -1)
                     if (need_pi or need_w) else None)
        g_agg_bias = gy.float().sum((2, 3)) if bias is not None and (need_pi or need_b) else None
        if need_pi:
            g_pi = bmm(g_agg, weight.view(kn, -1).float().t())
            if g_agg_bias is not None:
                g_pi = g_pi + bmm(g_agg_bias, bias.float().t())
            g_pi = g_pi.to(pi.dtype)
        if need_w:
            g_w = bmm(pi.float().t(), g_agg).view_as(weight).to(weight.dtype)
        if need_b:
            g_b = bmm(pi.float().t(), g_agg_bias).to(bias.dtype)
        return gx, g_pi, g_w, g_b, None, None


def dynamic_conv(x: torch.Tensor, pi: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: int = 1, groups: int = 1, backend: str = "auto") -> torch.Tensor:
    """Dynamic convolution with per-sample kernels ``pi[n] @ weight`` (and biases ``pi[n] @ bias``).

    ``x``: (N, Cin, H, W); ``pi``: (N, K); ``weight``: (K, Cout, Cin/groups, k, k) with odd k;
    ``bias``: (K, Cout) or None; 'same' padding. ``backend`` as in ``mixed_depthwise_conv``; the
    Triton path runs depthwise (groups == Cin == Cout) and pointwise (k == 1, groups == 1)
    convolutions, ``auto`` uses the reference for any other layout and ``triton`` raises for it.
    """
    if pi.dim() != 2 or pi.shape != (x.shape[0], weight.shape[0]):
        raise ValueError(f"pi must be (N, K) = ({x.shape[0]}, {weight.shape[0]}), got {tuple(pi.shape)}")
    tensors = [x, pi, weight] + ([bias] if bias is not None else [])
    if resolve_backend(backend, *tensors) == "torch":
        return dynamic_conv_reference(x, pi, weight, bias, stride, groups)
    layout = triton_layout(x, weight, groups)
    if layout is None:
        if backend == "triton":
            raise NotImplementedError("the Triton dynamic conv covers depthwise and 1x1 (groups=1) layouts only")
        return dynamic_conv_reference(x, pi, weight, bias, stride, groups)
    return DynamicConvFunction.apply(x, pi, weight, bias, stride, layout)
