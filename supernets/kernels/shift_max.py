"""Dynamic Shift-Max: ``y[n, i] = max_k sum_j a[n, i, j, k] * x[n, (i + j * step) mod C]``.

* ``shift_max_reference``: PyTorch, ``torch.roll`` per shift and ``torch.maximum`` over the pieces
  (as ``DynamicShiftMax.forward``).
* ``shift_max``: dispatches on ``backend`` like ``mixed_depthwise_conv``. The Triton path
  (``ShiftMaxFunction``) computes the output and the index of the winning piece per element (int8)
  in one kernel; the backward routes each output gradient to its winning piece: one Triton kernel
  gathers the input gradient (sum over the shifts that read a channel), another gives per-block
  partial sums of the coefficients' gradient, summed over blocks in PyTorch.

Ties between pieces go to the first one (``torch.maximum`` splits the gradient between equal
pieces instead), and a NaN piece does not win over a later number: both matter only on ties/NaNs.
"""

from __future__ import annotations

import torch

from ._triton import cdiv, jit, pixel_block, resolve_backend

tl = None  # triton.language, bound by ``jit`` at the first launch


# ----------------------------------------------------------------------------- Triton kernels

@jit
def _shift_max_fwd_kernel(x_ptr, a_ptr, y_ptr, arg_ptr, C, HW,
                          STEP: tl.constexpr, J: tl.constexpr, P: tl.constexpr, BLOCK: tl.constexpr):
    # one program: channel i of sample n, BLOCK pixels; a is (N, C, J, P) contiguous
    nc = tl.program_id(0).to(tl.int64)
    n = nc // C
    i = nc % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    a_base = a_ptr + nc * (J * P)
    best = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(J):
        src = (i + j * STEP) % C
        xv = tl.load(x_ptr + (n * C + src) * HW + offs, mask=mask, other=0.0).to(tl.float32)
        best += tl.load(a_base + j * P).to(tl.float32) * xv
    arg = tl.zeros([BLOCK], dtype=tl.int32)
    for k in tl.static_range(1, P):
        piece = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(J):
            src = (i + j * STEP) % C
            xv = tl.load(x_ptr + (n * C + src) * HW + offs, mask=mask, other=0.0).to(tl.float32)
            piece += tl.load(a_base + j * P + k).to(tl.float32) * xv
        take = piece > best
        best = tl.where(take, piece, best)
        arg = tl.where(take, k, arg)
    tl.store(y_ptr + nc * HW + offs, best, mask=mask)
    tl.store(arg_ptr + nc * HW + offs, arg.to(tl.int8), mask=mask)


@jit
def _shift_max_grad_x_kernel(gy_ptr, a_ptr, arg_ptr, gx_ptr, C, HW,
                             STEP: tl.constexpr, J: tl.constexpr, P: tl.constexpr, BLOCK: tl.constexpr):
    # gx[n, c] = sum_j a[n, i_j, j, arg] * gy[n, i_j] with i_j = (c - j * STEP) mod C
    nc = tl.program_id(0).to(tl.int64)
    n = nc // C
    c = nc % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in tl.static_range(J):
        row = n * C + (c + C - (j * STEP) % C) % C
        g = tl.load(gy_ptr + row * HW + offs, mask=mask, other=0.0).to(tl.float32)
        k = tl.load(arg_ptr + row * HW + offs, mask=mask, other=0).to(tl.int32)
        coeff = tl.load(a_ptr + row * (J * P) + j * P + k, mask=mask, other=0.0).to(tl.float32)
        acc += coeff * g
    tl.store(gx_ptr + nc * HW + offs, acc, mask=mask)


@jit
def _shift_max_grad_a_kernel(gy_ptr, x_ptr, arg_ptr, part_ptr, C, HW, NBLK,
                             STEP: tl.constexpr, J: tl.constexpr, P: tl.constexpr, BLOCK: tl.constexpr):
    # part[n, i, blk, j, k] = sum over the block's pixels won by piece k of gy[n, i] * x[n, (i + j * STEP) mod C]
    nc = tl.program_id(0).to(tl.int64)
    n = nc // C
    i = nc % C
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    g = tl.load(gy_ptr + nc * HW + offs, mask=mask, other=0.0).to(tl.float32)
    arg = tl.load(arg_ptr + nc * HW + offs, mask=mask, other=0).to(tl.int32)
    part_base = part_ptr + (nc * NBLK + blk) * (J * P)
    for j in tl.static_range(J):
        src = (i + j * STEP) % C
        gx = g * tl.load(x_ptr + (n * C + src) * HW + offs, mask=mask, other=0.0).to(tl.float32)
        for k in tl.static_range(P):
            tl.store(part_base + j * P + k, tl.sum(tl.where(arg == k, gx, 0.0), axis=0))


# ----------------------------------------------------------------------------- host side

def shift_max_reference(x: torch.Tensor, a: torch.Tensor, step: int) -> torch.Tensor:
    """PyTorch reference: x (N, C, H, W), a (N, C, J, P), channel shift ``step`` (= C / groups)."""
    shifts, pieces = a.shape[2], a.shape[3]
    a = a[..., None, None]
    shifted = [x if j == 0 else torch.roll(x, -j * step, dims=1) for j in range(shifts)]
    out = None
    for k in range(pieces):
        piece = a[:, :, 0, k] * shifted[0]
        for j in range(1, shifts):
            piece = piece + a[:, :, j, k] * shifted[j]
        out = piece if out is None else torch.maximum(out, piece)
    return out


class ShiftMaxFunction(torch.autograd.Function):
    """Triton forward and backward of Dynamic Shift-Max; gradients for x and a."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, step: int) -> torch.Tensor:
        x = x.contiguous()
        a = a.contiguous()
        n, c, h, w = x.shape
        shifts, pieces = a.shape[2], a.shape[3]
        hw = h * w
        y = torch.empty_like(x)
        arg = torch.empty(n, c, h, w, device=x.device, dtype=torch.int8)
        block = pixel_block(hw)
        _shift_max_fwd_kernel[(n * c, cdiv(hw, block))](x, a, y, arg, c, hw,
                                                        STEP=step % c, J=shifts, P=pieces, BLOCK=block)
        ctx.save_for_backward(x, a, arg)
        ctx.step = step
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, a, arg = ctx.saved_tensors
        gy = gy.contiguous()
        n, c, h, w = x.shape
        shifts, pieces = a.shape[2], a.shape[3]
        hw = h * w
        block = pixel_block(hw)
        nblk = cdiv(hw, block)
        step = ctx.step % c
        gx = ga = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty_like(x)
            _shift_max_grad_x_kernel[(n * c, nblk)](gy, a, arg, gx, c, hw,
                                                    STEP=step, J=shifts, P=pieces, BLOCK=block)
        if ctx.needs_input_grad[1]:
            part = torch.empty(n, c, nblk, shifts, pieces, device=x.device, dtype=torch.float32)
            _shift_max_grad_a_kernel[(n * c, nblk)](gy, x, arg, part, c, hw, nblk,
                                                    STEP=step, J=shifts, P=pieces, BLOCK=block)
            ga = part.sum(2).to(a.dtype)
        return gx, ga, None


def shift_max(x: torch.Tensor, a: torch.Tensor, step: int, backend: str = "auto") -> torch.Tensor:
    """Dynamic Shift-Max of ``x`` (N, C, H, W) with coefficients ``a`` (N, C, J, P) and channel shift
    ``step`` (C / groups). ``backend`` as in ``mixed_depthwise_conv``; the Triton path needs P <= 127."""
    if a.dim() != 4 or a.shape[:2] != x.shape[:2]:
        raise ValueError(f"a must be (N, C, J, P) with (N, C) = {tuple(x.shape[:2])}, got {tuple(a.shape)}")
    if resolve_backend(backend, x, a) == "torch" or a.shape[3] > 127:
        if backend == "triton" and a.shape[3] > 127:
            raise NotImplementedError("the Triton shift-max stores the winning piece as int8: at most 127 pieces")
        return shift_max_reference(x, a, step)
    return ShiftMaxFunction.apply(x, a, step)
