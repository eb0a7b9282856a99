"""Focal modulation, FocalNet block and DyHead block: references, semantics, gradients, MAC counts."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xsearch.core.flops import COUNTED, DEFORM_CONV2D_OP, fvcore_macs
from xsearch.search_spaces.blocks.dyhead import DyHeadBlock
from xsearch.search_spaces.blocks.focal import DropPath, FocalModulation, FocalNetBlock, LayerNorm2d

FLAGS = list(itertools.product([False, True], repeat=3))


@pytest.fixture(autouse=True)
def _seed():
    """Fixed inputs, so the gradchecks never land on a kink (ReLU, max, integer sample points) by chance."""
    torch.manual_seed(0)


def _randomise(module: nn.Module, std: float = 0.3, seed: int = 0) -> nn.Module:
    """Non-trivial weights everywhere (zero-initialised offsets, DyReLU heads, norms included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def _reference_modulation(m: FocalModulation, x: torch.Tensor) -> torch.Tensor:
    """Focal modulation written directly from the module's weights with functional calls."""
    d, levels = m.dim, m.focal_level
    y = F.conv2d(x, m.f.weight, m.f.bias)
    q, ctx, gates = y[:, :d], y[:, d:2 * d], y[:, 2 * d:]
    assert gates.shape[1] == levels + 1
    total = 0
    for level in range(levels):
        k = m.focal_factor * level + m.focal_window
        weight = m.focal_layers[level][0].weight
        assert weight.shape == (d, 1, k, k)
        ctx = F.gelu(F.conv2d(ctx, weight, None, padding=k // 2, groups=d))
        total = total + ctx * gates[:, level:level + 1]
    total = total + F.gelu(ctx.mean(dim=(2, 3), keepdim=True)) * gates[:, levels:levels + 1]
    if m.normalize_modulator:
        total = total / (levels + 1)
    modulator = F.conv2d(total, m.h.weight, m.h.bias)
    return F.conv2d(q * modulator, m.proj.weight, m.proj.bias)


@pytest.mark.parametrize("levels,window,normalize", [(1, 3, False), (2, 3, True), (3, 3, False),
                                                      (1, 5, True), (2, 5, False), (3, 5, True)])
def test_focal_modulation_matches_reference(levels, window, normalize):
    m = _randomise(FocalModulation(6, levels, window, normalize_modulator=normalize), seed=levels).eval()
    x = torch.randn(2, 6, 9, 7)
    assert [layer[0].kernel_size[0] for layer in m.focal_layers] == [window + 2 * i for i in range(levels)]
    torch.testing.assert_close(m(x), _reference_modulation(m, x))
    torch.testing.assert_close(m.double()(x.double()), _reference_modulation(m, x.double()))


def test_layer_norm_2d_is_channel_layer_norm_not_group_norm():
    ln = _randomise(LayerNorm2d(5))
    x = torch.randn(2, 5, 4, 3) * 3 + 1
    ref = nn.LayerNorm(5)
    ref.load_state_dict(ln.state_dict())
    torch.testing.assert_close(ln(x), ref(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    gn = nn.GroupNorm(1, 5)
    gn.load_state_dict(ln.state_dict())
    assert not torch.allclose(ln(x), gn(x), atol=1e-3)


def test_drop_path_per_sample_in_training_identity_in_eval():
    dp = DropPath(0.5)
    x = torch.randn(64, 3, 2, 2) + 5
    torch.manual_seed(0)
    y = dp.train()(x)
    dropped = (y == 0).flatten(1).all(1)
    kept = torch.isclose(y, x / 0.5).flatten(1).all(1)
    assert bool((dropped | kept).all()) and 0 < int(dropped.sum()) < 64
    assert torch.equal(dp.eval()(x), x)
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_focal_net_block_layer_scale_and_drop_path_eval():
    block = _randomise(FocalNetBlock(8, 2, 3, mlp_ratio=2.0, layer_scale=1e-1, drop_path=0.5)).eval()
    assert block.hidden == 16 and block.gamma1.shape == (8,)
    x = torch.randn(2, 8, 6, 5)
    g1, g2 = block.gamma1.view(1, -1, 1, 1), block.gamma2.view(1, -1, 1, 1)
    y = x + g1 * block.modulation(block.norm1(x))
    y = y + g2 * block.mlp(block.norm2(y))
    torch.testing.assert_close(block(x), y)  # drop path is the identity in eval
    plain = FocalNetBlock(8, 2, 3, mlp_ratio=2.0).eval()
    assert plain.gamma1 is None
    assert plain(x).shape == x.shape
    with torch.no_grad():
        block.gamma1.zero_()
        block.gamma2.zero_()
    torch.testing.assert_close(block(x), x)  # zero layer scale: both residual branches vanish
    block.train()
    out = block(x)
    out.sum().backward()
    assert block.modulation.f.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_forward_backward_dtypes(dtype):
    block = FocalNetBlock(4, 3, 3, layer_scale=1.0, drop_path=0.1).to(dtype).train()
    x = torch.randn(2, 4, 5, 5, dtype=dtype, requires_grad=True)
    y = block(x)
    assert y.dtype == dtype and y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and x.grad.dtype == dtype


def test_gradcheck_focal_modulation():
    m = _randomise(FocalModulation(4, 2, 3, normalize_modulator=True)).double()
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), fast_mode=True)


def _pyramid(channels=4, sizes=((8, 8), (4, 4), (2, 2)), batch=2, dtype=torch.float32, grad=False):
    return [torch.randn(batch, channels, h, w, dtype=dtype, requires_grad=grad) for h, w in sizes]


@pytest.mark.parametrize("stride,size", [(1, (7, 6)), (2, (8, 8)), (2, (9, 7))])
def test_deform_read_with_zero_offsets_and_unit_mask_is_conv(stride, size):
    block = DyHeadBlock(5, 2)
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    block = block.double()
    ref = F.conv2d(x, block.dcn_weight, block.dcn_bias, stride=stride, padding=1)
    offset = x.new_zeros(2, 18, *ref.shape[-2:])
    mask = x.new_ones(2, 9, *ref.shape[-2:])
    torch.testing.assert_close(block.deform_read(x, offset, mask, stride), ref)


def test_dyhead_starts_as_normalised_half_weight_conv():
    block = DyHeadBlock(4, 1, scale=False, task=False)
    x = torch.randn(2, 4, 6, 6)
    off, mask = block.offsets_and_mask(x)
    assert off.abs().max() == 0 and torch.all(mask == 0.5)
    ref = F.group_norm(F.conv2d(x, 0.5 * block.dcn_weight, block.dcn_bias, padding=1), 4)
    torch.testing.assert_close(block([x])[0], ref)


def test_a_stack_of_dyhead_blocks_keeps_the_signal():
    torch.manual_seed(0)
    feats = _pyramid(sizes=((16, 16), (8, 8), (4, 4)))
    for _ in range(6):
        feats = DyHeadBlock(4, 3)(feats)
    # every level keeps spatial structure (no collapse to a constant map) and the levels stay distinct
    assert all(float(f.std((2, 3)).mean()) > 0.05 for f in feats)


@pytest.mark.parametrize("scale,spatial,task", FLAGS)
def test_dyhead_every_flag_combination_keeps_shapes(scale, spatial, task):
    block = DyHeadBlock(4, 3, scale=scale, spatial=spatial, task=task)
    feats = _pyramid(sizes=((9, 7), (5, 4), (3, 2)))
    outs = block(feats)
    assert [o.shape for o in outs] == [f.shape for f in feats]
    if not (scale or spatial or task):
        assert all(o is f for o, f in zip(outs, feats))
        assert not list(block.parameters())


def test_dyhead_partial_semantics():
    feats = _pyramid()
    scale_only = _randomise(DyHeadBlock(4, 3, scale=True, spatial=False, task=False))
    for out, f in zip(scale_only(feats), feats):
        w = F.hardsigmoid(F.relu(scale_only.scale_attn(f.mean((2, 3), keepdim=True))))
        torch.testing.assert_close(out, f * w)
    task_only = _randomise(DyHeadBlock(4, 3, scale=False, spatial=False, task=True))
    for out, f in zip(task_only(feats), feats):
        torch.testing.assert_close(out, task_only.task_attn(f))
    # Spatial only, two levels: level 0 averages its own read and the upsampled read of level 1,
    # level 1 averages its own read and the stride-2 read of level 0 with level 1's offsets.
    block = _randomise(DyHeadBlock(4, 2, scale=False, spatial=True, task=False), std=0.1)
    x0, x1 = _pyramid(sizes=((8, 8), (4, 4)))
    (o0, m0), (o1, m1) = block.offsets_and_mask(x0), block.offsets_and_mask(x1)
    own0, own1 = block.norm(block.deform_read(x0, o0, m0)), block.norm(block.deform_read(x1, o1, m1))
    up = F.interpolate(own1, size=(8, 8), mode="bilinear", align_corners=False)
    low = block.norm(block.deform_read(x0, o1, m1, stride=2))
    y0, y1 = block([x0, x1])
    torch.testing.assert_close(y0, (own0 + up) / 2)
    torch.testing.assert_close(y1, (own1 + low) / 2)


def test_dyhead_rejects_bad_pyramids():
    block = DyHeadBlock(4, 2)
    with pytest.raises(ValueError, match="levels"):
        block(_pyramid(sizes=((8, 8),)))
    with pytest.raises(ValueError, match="stride-2"):
        block(_pyramid(sizes=((8, 8), (3, 3))))
    with pytest.raises(ValueError):
        block(_pyramid(channels=3, sizes=((8, 8), (4, 4))))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dyhead_forward_backward_dtypes(dtype):
    block = _randomise(DyHeadBlock(4, 3), std=0.1).to(dtype)
    feats = _pyramid(dtype=dtype, grad=True)
    outs = block(feats)
    sum(o.square().sum() for o in outs).backward()
    assert all(o.dtype == dtype for o in outs)
    assert all(f.grad is not None for f in feats)
    assert block.offset_conv.weight.grad.abs().sum() > 0  # offsets and mask are learned


def test_gradcheck_dyhead():
    block = _randomise(DyHeadBlock(4, 3), std=0.1, seed=1).double()
    feats = tuple(_pyramid(batch=1, dtype=torch.float64, grad=True))
    assert torch.autograd.gradcheck(lambda *xs: tuple(block(list(xs))), feats, fast_mode=True)


@pytest.mark.parametrize("dim,levels,window,size", [(4, 1, 3, (8, 8)), (6, 2, 3, (7, 9)), (8, 3, 5, (5, 6))])
def test_focal_macs_match_fvcore(dim, levels, window, size):
    m = FocalModulation(dim, levels, window)
    assert m.macs(*size) == fvcore_macs(m, (dim, *size))
    block = FocalNetBlock(dim, levels, window, mlp_ratio=3.0, layer_scale=1e-2, drop_path=0.1)
    assert block.macs(*size) == fvcore_macs(block, (dim, *size))


@pytest.mark.parametrize("levels,sizes", [(1, [(6, 5)]), (2, [(8, 8), (4, 4)]), (3, [(9, 7), (5, 4), (3, 2)])])
@pytest.mark.parametrize("scale,spatial,task", [(True, True, True), (False, True, False), (True, False, True),
                                                (False, False, False)])
def test_dyhead_macs_match_fvcore(levels, sizes, scale, spatial, task):
    block = DyHeadBlock(8, levels, scale=scale, spatial=spatial, task=task)
    feats = _pyramid(channels=8, sizes=sizes, batch=1)
    assert block.macs(sizes) == fvcore_macs(block, inputs=feats)


def test_fvcore_alone_misses_deform_conv():
    from fvcore.nn import FlopCountAnalysis

    block = DyHeadBlock(8, 2, scale=False, task=False).eval()
    sizes = [(8, 8), (4, 4)]
    feats = _pyramid(channels=8, sizes=sizes, batch=1)
    analysis = FlopCountAnalysis(block, (feats,))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    plain = sum(v for k, v in analysis.by_operator().items() if k in COUNTED)
    assert analysis.unsupported_ops()[DEFORM_CONV2D_OP] == 3  # two own reads + one stride-2 read
    dcn = 8 * 8 * 9 * (64 + 2 * 16)
    assert plain == block.macs(sizes) - dcn  # only the offset convs were counted
    assert fvcore_macs(block, inputs=feats) == block.macs(sizes)


def test_fvcore_macs_input_forms():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.zeros(1, 3, 5, 5)
    expected = 4 * 3 * 9 * 25
    assert fvcore_macs(conv, (3, 5, 5)) == fvcore_macs(conv, inputs=x) == fvcore_macs(conv, inputs=(x,)) == expected
    with pytest.raises(ValueError):
        fvcore_macs(conv)
    with pytest.raises(ValueError):
        fvcore_macs(conv, (3, 5, 5), inputs=x)
