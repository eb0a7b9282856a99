from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xsearch.core.flops import fvcore_macs
from xsearch.search_spaces.blocks.dynamic import DynamicConv2d, DyReLU, set_temperature, temperature_at

CONV_CASES = [  # (in, out, kernel, stride, groups, bias)
    (4, 6, 3, 1, 1, False),
    (4, 6, 3, 2, 1, True),
    (6, 6, 5, 1, 6, False),  # depthwise
    (6, 6, 3, 2, 6, True),  # depthwise, strided, bias
    (4, 8, 1, 1, 2, True),
    (8, 4, 3, 1, 4, False),
]


def _reference_conv(m: DynamicConv2d, x: torch.Tensor) -> torch.Tensor:
    """Per-sample conv with the explicitly mixed kernel; independent of the folded-batch trick."""
    attn = m.attention(x)
    outs = []
    for b in range(x.shape[0]):
        w = sum(attn[b, k] * m.weight[k] for k in range(m.num_kernels))
        bias = None if m.bias is None else sum(attn[b, k] * m.bias[k] for k in range(m.num_kernels))
        outs.append(F.conv2d(x[b:b + 1], w, bias, m.stride, m.kernel_size // 2, 1, m.groups))
    return torch.cat(outs)


@pytest.mark.parametrize("cin,cout,k,stride,groups,bias", CONV_CASES)
def test_dynamic_conv_matches_reference(cin, cout, k, stride, groups, bias):
    torch.manual_seed(0)
    m = DynamicConv2d(cin, cout, k, stride, groups, bias=bias, temperature=1.0).double()
    x = torch.randn(3, cin, 7, 6, dtype=torch.float64)
    y = m(x)
    ref = _reference_conv(m, x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_kernels_initialised_independently():
    torch.manual_seed(0)
    m = DynamicConv2d(4, 4, 3)
    assert not torch.equal(m.weight[0], m.weight[1])
    bound = 1 / (4 * 9) ** 0.5  # kaiming_uniform(a=sqrt(5)) bound = 1/sqrt(fan_in)
    assert m.weight.abs().max() <= bound


def test_attention_rows_and_temperature():
    torch.manual_seed(0)
    m = DynamicConv2d(8, 8, 3, temperature=1.0)
    with torch.no_grad():
        m.fc2.weight.mul_(50)
    x = torch.randn(5, 8, 6, 6)
    attn = m.attention(x)
    assert attn.shape == (5, 4)
    torch.testing.assert_close(attn.sum(1), torch.ones(5))
    assert (attn.max(1).values - attn.min(1).values).max() > 0.05
    m.temperature = 1e6
    hot = m.attention(x)
    torch.testing.assert_close(hot, torch.full_like(hot, 0.25), rtol=0, atol=1e-4)


def test_temperature_schedule_and_setter():
    assert temperature_at(0, 10) == 30.0
    assert temperature_at(5, 10) == pytest.approx(15.5)
    assert temperature_at(10, 10) == 1.0
    assert temperature_at(50, 10) == 1.0
    assert temperature_at(3, 0) == 1.0
    assert temperature_at(2, 4, start=10.0, end=2.0) == pytest.approx(6.0)
    model = nn.Sequential(DynamicConv2d(3, 4, 3), nn.ReLU(), nn.Sequential(DynamicConv2d(4, 4, 1)), DyReLU(4))
    assert set_temperature(model, 7.5) == 2
    assert [m.temperature for m in model.modules() if isinstance(m, DynamicConv2d)] == [7.5, 7.5]


def test_dyrelu_is_relu_at_init():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        m = DyReLU(8).to(dtype)
        x = torch.randn(3, 8, 5, 5, dtype=dtype)
        assert torch.equal(m(x), F.relu(x))
        assert torch.equal(DyReLU(8, hard=True).to(dtype)(x), F.relu(x))


def _randomise(m: DyReLU) -> DyReLU:
    with torch.no_grad():
        m.fc2.weight.normal_(0, 1.0)
        m.fc2.bias.normal_(0, 1.0)
    return m


@pytest.mark.parametrize("pieces", [2, 3])
def test_dyrelu_matches_loop_reference(pieces):
    torch.manual_seed(1)
    c = 3
    m = _randomise(DyReLU(c, num_pieces=pieces, lambda_a=0.8, lambda_b=0.3)).double()
    x = torch.randn(2, c, 3, 2, dtype=torch.float64)
    y = m(x)
    z = m.fc2(torch.relu(m.fc1(x.mean((2, 3)))))
    r = 2 * torch.sigmoid(z) - 1
    ref = torch.empty_like(x)
    for b in range(x.shape[0]):
        for ch in range(c):
            slopes = [(1.0 if k == 0 else 0.0) + 0.8 * r[b, k * c + ch] for k in range(pieces)]
            offsets = [0.3 * r[b, (pieces + k) * c + ch] for k in range(pieces)]
            pieces_out = [slopes[k] * x[b, ch] + offsets[k] for k in range(pieces)]
            out = pieces_out[0]
            for p in pieces_out[1:]:
                out = torch.maximum(out, p)
            ref[b, ch] = out
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_dyrelu_context_is_coefficient_source():
    torch.manual_seed(2)
    m = _randomise(DyReLU(4)).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    ctx = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    a_ctx, b_ctx = m.coefficients(ctx)
    expected = (x.unsqueeze(1) * a_ctx[..., None, None] + b_ctx[..., None, None]).amax(1)
    torch.testing.assert_close(m(x, context=ctx), expected)
    assert not torch.allclose(m(x, context=ctx), m(x))
    torch.testing.assert_close(m(x, context=x), m(x))


def test_gradcheck_both():
    torch.manual_seed(3)
    conv = DynamicConv2d(4, 4, 3, stride=2, groups=2, bias=True, temperature=2.0).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))
    act = _randomise(DyReLU(4, num_pieces=2)).double()
    x2 = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(2, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(act, (x2,))
    assert torch.autograd.gradcheck(act, (x2, ctx))


@pytest.mark.parametrize("cin,cout,k,stride,groups,bias", CONV_CASES)
@pytest.mark.parametrize("hw", [(8, 8), (7, 5)])
def test_dynamic_conv_macs_match_fvcore(cin, cout, k, stride, groups, bias, hw):
    m = DynamicConv2d(cin, cout, k, stride, groups, bias=bias)
    assert m.macs(*hw) == fvcore_macs(m, (cin, *hw))


@pytest.mark.parametrize("c,pieces,hw", [(8, 2, (6, 6)), (16, 3, (5, 7)), (3, 2, (4, 4))])
def test_dyrelu_macs_match_fvcore(c, pieces, hw):
    m = DyReLU(c, num_pieces=pieces)
    assert m.macs(*hw) == fvcore_macs(m, (c, *hw))


def test_float32_forward_backward_all_params_get_grads():
    torch.manual_seed(4)
    model = nn.Sequential(DynamicConv2d(3, 8, 3, stride=2, bias=True), nn.BatchNorm2d(8),
                          _randomise(DyReLU(8)), DynamicConv2d(8, 8, 3, groups=8))
    with torch.no_grad():  # tiny hidden layers: keep some ReLU units alive so every weight gets a gradient
        for m in model.modules():
            if hasattr(m, "fc1"):
                m.fc1.bias.fill_(0.5)
    x = torch.randn(4, 3, 9, 9)
    y = model(x)
    assert y.dtype == torch.float32 and y.shape == (4, 8, 5, 5)
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_temperature_travels_with_the_state_dict():
    trained = DynamicConv2d(4, 4, 3)
    set_temperature(trained, 1.0)
    fresh = DynamicConv2d(4, 4, 3)
    assert fresh.temperature == 30.0
    fresh.load_state_dict(trained.state_dict())
    assert fresh.temperature == 1.0
