"""MicroNet operators checked against independent computations of their formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xsearch.core.flops import fvcore_macs
from xsearch.search_spaces.blocks.micronet import (
    DynamicShiftMax,
    MicroBlockA,
    MicroBlockB,
    MicroBlockC,
    MicroDepthwiseConv,
    MicroPointwiseConv,
    channel_shuffle,
    micro_groups,
)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics/affine and non-zero DSM heads, so nothing is trivially identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            if isinstance(m, DynamicShiftMax):
                m.fc2.weight.copy_(torch.randn(m.fc2.weight.shape, generator=g) * 0.5)
                m.fc2.bias.copy_(torch.randn(m.fc2.bias.shape, generator=g) * 0.5)
    return module


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def block_diag_dense(conv: nn.Conv2d) -> torch.Tensor:
    """Dense (out x in) matrix of a grouped 1x1 conv."""
    w = conv.weight[:, :, 0, 0]
    out, per_in = w.shape
    g = conv.groups
    dense = torch.zeros(out, per_in * g, dtype=w.dtype)
    per_out = out // g
    for o in range(out):
        grp = o // per_out
        dense[o, grp * per_in:(grp + 1) * per_in] = w[o]
    return dense


# ---------------------------------------------------------------- helpers


def test_micro_groups_is_divisor_closest_to_sqrt():
    assert micro_groups(32, 2) == 4  # sqrt(16)
    assert micro_groups(64, 4) == 4
    assert micro_groups(24, 2) == 3  # sqrt(12) = 3.46
    assert micro_groups(7, 2) == 1  # prime: only 1 and 7
    assert micro_groups(48, 2, 36) == 4  # common divisors of 48 and 36 near 4.9
    for c in (8, 12, 16, 20, 40, 96):
        assert c % micro_groups(c, 2) == 0
    with pytest.raises(ValueError):
        micro_groups(0, 2)


def test_channel_shuffle_permutation():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]


# ---------------------------------------------------------------- Dynamic Shift-Max


def test_dsm_matches_explicit_loops():
    torch.manual_seed(0)
    c, g = 6, 3
    dsm = randomize(DynamicShiftMax(c, g, reduction=2)).double()
    x = torch.randn(2, c, 3, 2, dtype=torch.float64)
    a = dsm.coefficients(x)
    assert a.shape == (2, c, 2, 2)
    expected = torch.empty_like(x)
    for b in range(2):
        for i in range(c):
            pieces = []
            for k in range(2):
                acc = torch.zeros(3, 2, dtype=torch.float64)
                for j in range(2):
                    acc = acc + a[b, i, j, k] * x[b, (i + j * c // g) % c]
                pieces.append(acc)
            expected[b, i] = torch.maximum(pieces[0], pieces[1])
    torch.testing.assert_close(dsm(x), expected)


def test_dsm_coefficients_are_hsigmoid_of_mlp():
    torch.manual_seed(1)
    dsm = randomize(DynamicShiftMax(8, 2)).double()
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    z = dsm.fc2(F.relu(dsm.fc1(x.mean((2, 3)))))
    a = (2 * F.relu6(z + 3) / 6 - 1).view(3, 8, 2, 2)
    a[:, :, 0, 0] += 1
    torch.testing.assert_close(dsm.coefficients(x), a)
    assert ((a >= -1) & (a <= 2)).all()


def test_dsm_starts_as_relu():
    torch.manual_seed(2)
    dsm = DynamicShiftMax(16, 4)
    x = torch.randn(2, 16, 5, 5)
    a = dsm.coefficients(x)
    init = torch.zeros(2, 2)
    init[0, 0] = 1
    torch.testing.assert_close(a, init.expand(2, 16, 2, 2))
    torch.testing.assert_close(dsm(x), F.relu(x))  # a^1 = (1, 0), a^2 = (0, 0): max(x, 0)
    xp = x.abs()
    torch.testing.assert_close(dsm(xp), xp)  # identity on non-negative inputs


def test_dsm_rejects_bad_groups():
    with pytest.raises(ValueError, match="not divisible"):
        DynamicShiftMax(10, 3)


# ---------------------------------------------------------------- micro-factorized convolutions


@pytest.mark.parametrize("cin,cout,groups,reduction", [(16, 16, 2, 2), (12, 24, (3, 2), 2), (32, 8, (4, 2), 1),
                                                       (16, 48, None, 2)])
def test_pointwise_equals_dense_p_phi_qt(cin, cout, groups, reduction):
    torch.manual_seed(3)
    pw = randomize(MicroPointwiseConv(cin, cout, groups, reduction)).double().eval()
    g1, g2 = pw.groups
    mid = pw.mid_channels
    assert mid % g1 == 0 and mid % g2 == 0
    with torch.no_grad():
        q = block_diag_dense(pw.squeeze)  # mid x in
        p = block_diag_dense(pw.expand)  # out x mid
        # shuffle with g1 groups: new channel j*g1 + i holds old channel i*(mid/g1) + j
        phi = torch.zeros(mid, mid, dtype=torch.float64)
        for i in range(g1):
            for j in range(mid // g1):
                phi[j * g1 + i, i * (mid // g1) + j] = 1
        s1, b1 = bn_affine(pw.bn1)
        s2, b2 = bn_affine(pw.bn2)
        dense = s2[:, None] * (p @ phi @ (s1[:, None] * q))
        bias = s2 * (p @ phi @ b1) + b2
        x = torch.randn(2, cin, 5, 4, dtype=torch.float64)
        expected = F.conv2d(x, dense[:, :, None, None], bias)
        torch.testing.assert_close(pw(x), expected)
    assert pw.macs(5, 4) == fvcore_macs(pw.float(), (cin, 5, 4))


@pytest.mark.parametrize("channels,k,stride,mult,size", [(4, 3, 1, 1, (6, 5)), (3, 5, 2, 2, (7, 8)),
                                                         (2, 3, 2, 3, (5, 5))])
def test_depthwise_equals_outer_product_kernel(channels, k, stride, mult, size):
    torch.manual_seed(4)
    dw = randomize(MicroDepthwiseConv(channels, k, stride, mult)).double().eval()
    with torch.no_grad():
        kv = dw.vertical.weight[:, 0, :, 0]  # (C*m, k)
        kh = dw.horizontal.weight[:, 0, 0, :]  # (C*m, k)
        kernel = (kv[:, :, None] * kh[:, None, :])[:, None]  # (C*m, 1, k, k)
        scale, shift = bn_affine(dw.bn)
        x = torch.randn(2, channels, *size, dtype=torch.float64)
        y = F.conv2d(x, kernel, stride=stride, padding=k // 2, groups=channels)
        expected = y * scale[:, None, None] + shift[:, None, None]
        torch.testing.assert_close(dw(x), expected)
    assert dw.macs(*size) == fvcore_macs(dw.float(), (channels, *size))


def test_pointwise_rejects_impossible_groups():
    with pytest.raises(ValueError, match="in_channels=10 is not divisible"):
        MicroPointwiseConv(10, 16, (4, 2))
    with pytest.raises(ValueError, match="out_channels=18 is not divisible"):
        MicroPointwiseConv(16, 18, (2, 4))
    with pytest.raises(ValueError, match="mid_channels"):
        MicroPointwiseConv(16, 16, (2, 2), mid_channels=7)
    with pytest.raises(ValueError):
        MicroPointwiseConv(16, 16, (2, 0))


def test_depthwise_rejects_bad_settings():
    with pytest.raises(ValueError, match="odd"):
        MicroDepthwiseConv(8, 4)
    with pytest.raises(ValueError, match="multiplier"):
        MicroDepthwiseConv(8, 3, multiplier=0)


# ---------------------------------------------------------------- gradcheck (float64)


def _gradcheck(module: nn.Module, shape: tuple[int, ...]) -> None:
    module = randomize(module).double().eval()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-5)


def test_gradcheck_operators():
    torch.manual_seed(5)
    _gradcheck(DynamicShiftMax(6, 3, reduction=2), (2, 6, 3, 3))
    _gradcheck(MicroPointwiseConv(8, 12, (2, 2)), (2, 8, 3, 3))
    _gradcheck(MicroDepthwiseConv(3, 3, 2, 2), (2, 3, 5, 5))


@pytest.mark.parametrize("block", [
    lambda: MicroBlockA(4, 4, 3, 1, multiplier=2, groups=2),
    lambda: MicroBlockB(4, 8, 3, 2, multiplier=2, groups=(2, 2)),
    lambda: MicroBlockC(4, 4, 3, 1, expansion=2, groups=2),
])
def test_gradcheck_blocks(block):
    torch.manual_seed(6)
    _gradcheck(block(), (1, 4, 4, 4))


# ---------------------------------------------------------------- blocks

def _cfg(cls, cin, cout, k, s, use_dsm, **kw):
    return cls, {"in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": s, "use_dsm": use_dsm, **kw}


CONFIGS = [
    _cfg(MicroBlockA, 8, 8, 3, 1, True, multiplier=2),
    _cfg(MicroBlockA, 8, 16, 5, 2, False, multiplier=3, groups=4),
    _cfg(MicroBlockB, 16, 24, 3, 2, True, multiplier=2, groups=(4, 2)),
    _cfg(MicroBlockB, 12, 12, 5, 1, False, multiplier=2),
    _cfg(MicroBlockC, 24, 24, 3, 1, True, expansion=4),
    _cfg(MicroBlockC, 24, 32, 5, 2, True, expansion=3, groups=(4, 4)),
    _cfg(MicroBlockC, 32, 32, 3, 1, False, expansion=2, groups=4, reduction=4),
    _cfg(MicroBlockC, 96, 96, 5, 1, True, expansion=6),
]


@pytest.mark.parametrize("cls,kwargs", CONFIGS)
@pytest.mark.parametrize("size", [(28, 28), (7, 9)])
def test_block_macs_equal_fvcore(cls, kwargs, size):
    block = cls(**kwargs)
    assert block.macs(*size) == fvcore_macs(block, (kwargs["in_channels"], *size))


@pytest.mark.parametrize("cls,kwargs", CONFIGS)
def test_block_shapes_residual_and_grads(cls, kwargs):
    torch.manual_seed(7)
    block = cls(**kwargs)
    cin, cout, s = kwargs["in_channels"], kwargs["out_channels"], kwargs["stride"]
    assert block.has_residual == (s == 1 and cin == cout)
    assert any(isinstance(m, DynamicShiftMax) for m in block.modules()) == kwargs["use_dsm"]
    x = torch.randn(2, cin, 9, 9, requires_grad=True)
    y = block.train()(x)
    assert y.shape == (2, cout, 5 if s == 2 else 9, 5 if s == 2 else 9) and y.dtype == torch.float32
    (y.square().mean()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the DSM heads start at zero; once perturbed every parameter receives a non-zero gradient
    randomize(block)
    block.zero_grad()
    block(x).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad.abs().sum() > 0, name


def test_residual_is_added():
    torch.manual_seed(8)
    block = randomize(MicroBlockC(8, 8, 3, 1, expansion=2, groups=2)).eval()
    x = torch.randn(1, 8, 6, 6)
    branch = block.project(block.act2(block.depthwise(block.act1(block.expand(x)))))
    torch.testing.assert_close(block(x), branch + x)


def test_float64_forward_and_device_agnostic_buffers():
    block = MicroBlockB(8, 8, 3, 1, multiplier=2, groups=2).double()
    y = block(torch.randn(2, 8, 5, 5, dtype=torch.float64))
    assert y.dtype == torch.float64
    assert all(b.dtype == torch.float64 for b in block.buffers() if b.is_floating_point())


@pytest.mark.parametrize("make,match", [
    (lambda: MicroBlockA(8, 12, multiplier=2, groups=8), "out_channels=12"),
    (lambda: MicroBlockA(6, 12, multiplier=1, groups=4), "hidden channels"),
    (lambda: MicroBlockB(8, 10, multiplier=2, groups=(2, 4)), "out_channels=10"),
    (lambda: MicroBlockC(6, 8, expansion=2, groups=(4, 2)), "in_channels=6"),
    (lambda: MicroBlockC(8, 8, expansion=0), "expansion"),
])
def test_blocks_reject_impossible_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [MicroBlockA, MicroBlockB, MicroBlockC])
@pytest.mark.parametrize("cin,cout", [(8, 8), (8, 16), (16, 24), (40, 48), (96, 96)])
def test_default_groups_work_for_small_widths(cls, cin, cout):
    block = cls(cin, cout, 3, 1)
    assert block(torch.randn(1, cin, 4, 4)).shape == (1, cout, 4, 4)
