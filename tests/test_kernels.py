"""Triton kernels against their PyTorch references, forward and backward.

Without a GPU the kernels run on the CPU through Triton's interpreter: ``conftest.py`` sets
``TRITON_INTERPRET=1`` before anything imports Triton (Triton's own library functions are jitted,
compiled or interpreted, at its import). With CUDA the kernels run compiled on the GPU.
"""

from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()

pytest.importorskip("triton", reason="triton is not installed")

from xsearch.search_spaces.blocks.dynamic import DynamicConv2d
from xsearch.search_spaces.blocks.micronet import DynamicShiftMax
from xsearch.supernets._execution import swap_operators
from xsearch.supernets.fused import FUSED_OPERATORS
from xsearch.supernets.kernels import (
    dynamic_conv,
    dynamic_conv_reference,
    mixconv_depthwise,
    mixconv_depthwise_reference,
    mixed_depthwise_conv,
    mixed_depthwise_reference,
    shift_max,
    shift_max_reference,
    triton_available,
)

DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton cannot run here (no CUDA, interpreter off)")


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def _leaf(*shape: int, fn=None) -> torch.Tensor:
    t = torch.randn(*shape, device=DEVICE)
    return (fn(t) if fn else t).requires_grad_()


def _check(fn, ref, inputs: list[torch.Tensor]) -> None:
    """Same output, and same gradients of a random linear loss, for every input."""
    y = fn()
    y_ref = ref()
    _close(y, y_ref)
    probe = torch.randn_like(y_ref)
    grads = torch.autograd.grad((y * probe).sum(), inputs)
    grads_ref = torch.autograd.grad((y_ref * probe).sum(), inputs)
    for g, g_ref in zip(grads, grads_ref):
        _close(g, g_ref)


def test_triton_available():
    assert triton_available()


@pytest.mark.parametrize("sizes", [(3, 5, 7), (3, 5), (5,)])
@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_depthwise(sizes, stride):
    torch.manual_seed(0)
    x = _leaf(2, 4, 6, 6)
    ks = [_leaf(4, 1, k, k) for k in sizes]
    w = _leaf(len(sizes), fn=lambda t: torch.softmax(t, 0))
    _check(lambda: mixed_depthwise_conv(x, ks, w, stride, backend="triton"),
           lambda: mixed_depthwise_reference(x, ks, w, stride), [x, w, *ks])


def test_mixed_depthwise_reference_is_weighted_sum():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    ks = [torch.randn(4, 1, k, k, dtype=torch.float64) for k in (3, 5, 7)]
    w = torch.softmax(torch.randn(3, dtype=torch.float64), 0)
    expected = sum(w[i] * torch.nn.functional.conv2d(x, k, None, 2, k.shape[-1] // 2, 1, 4) for i, k in enumerate(ks))
    torch.testing.assert_close(mixed_depthwise_reference(x, ks, w, 2), expected)


def test_mixed_depthwise_stacked_kernels_and_backends():
    torch.manual_seed(0)
    x = _leaf(2, 4, 5, 5)
    stack = _leaf(2, 4, 1, 3, 3)
    w = _leaf(2, fn=lambda t: torch.softmax(t, 0))
    _check(lambda: mixed_depthwise_conv(x, stack, w, backend="triton"),
           lambda: mixed_depthwise_reference(x, list(stack.unbind(0)), w), [x, w, stack])
    if not CUDA:  # auto keeps CPU tensors on the reference
        assert torch.equal(mixed_depthwise_conv(x, stack, w), mixed_depthwise_reference(x, stack, w))
    with pytest.raises(ValueError):
        mixed_depthwise_conv(x, stack, w, backend="cuda")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("layout", ["depthwise3", "depthwise5", "pointwise"])
def test_dynamic_conv(layout, stride, bias):
    torch.manual_seed(0)
    cin = 4
    cout, ks, groups = {"depthwise3": (4, 3, 4), "depthwise5": (4, 5, 4), "pointwise": (6, 1, 1)}[layout]
    x = _leaf(2, cin, 6, 6)
    pi = _leaf(2, 3, fn=lambda t: torch.softmax(t, 1))
    weight = _leaf(3, cout, cin // groups, ks, ks)
    b = _leaf(3, cout) if bias else None
    inputs = [x, pi, weight] + ([b] if bias else [])
    _check(lambda: dynamic_conv(x, pi, weight, b, stride, groups, backend="triton"),
           lambda: dynamic_conv_reference(x, pi, weight, b, stride, groups), inputs)


def test_dynamic_conv_other_layouts_fall_back():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6, device=DEVICE)
    pi = torch.softmax(torch.randn(2, 3, device=DEVICE), 1)
    weight = torch.randn(3, 4, 2, 3, 3, device=DEVICE)  # groups=2: no Triton path
    with pytest.raises(NotImplementedError):
        dynamic_conv(x, pi, weight, None, 1, 2, backend="triton")
    torch.testing.assert_close(dynamic_conv(x, pi, weight, None, 1, 2),
                               dynamic_conv_reference(x, pi, weight, None, 1, 2))


@pytest.mark.parametrize("groups", [1, 4])
def test_dynamic_conv_reference_matches_block(groups):
    torch.manual_seed(0)
    block = DynamicConv2d(4, 4, 3, stride=2, groups=groups, num_kernels=3, bias=True).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        expected = block(x)
        got = dynamic_conv_reference(x, block.attention(x), block.weight, block.bias, 2, groups)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("channels, step, shifts, pieces", [(4, 2, 2, 2), (6, 2, 3, 3), (4, 1, 2, 1)])
def test_shift_max(channels, step, shifts, pieces):
    torch.manual_seed(0)
    x = _leaf(2, channels, 5, 5)
    a = _leaf(2, channels, shifts, pieces)
    _check(lambda: shift_max(x, a, step, backend="triton"), lambda: shift_max_reference(x, a, step), [x, a])


def test_shift_max_reference_matches_block():
    torch.manual_seed(0)
    block = DynamicShiftMax(8, groups=2)
    torch.nn.init.normal_(block.fc2.weight)  # leave the ReLU-like start
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(shift_max_reference(x, block.coefficients(x), 4), block(x))


def test_fused_operators_run_the_triton_kernels_on_the_block_parameters():
    """What ``FusedExecution(backend="triton")`` swaps in computes what the plain block computes."""
    torch.manual_seed(0)
    blocks = [DynamicConv2d(4, 4, 3, groups=4, bias=True), DynamicConv2d(4, 6, 1), DynamicShiftMax(8, groups=2)]
    torch.nn.init.normal_(blocks[2].fc2.weight)  # leave the ReLU-like start
    for block, channels in zip(blocks, (4, 4, 8)):
        root = torch.nn.Sequential(block).to(DEVICE)
        x = torch.randn(2, channels, 5, 5, device=DEVICE)
        with torch.no_grad():
            expected = root(x)
            swap_operators(root, FUSED_OPERATORS, "triton")
            assert type(root[0]) is FUSED_OPERATORS[type(block)] and root[0].backend == "triton"
            _close(root(x), expected)


@pytest.mark.parametrize("sizes", [(3, 5, 7), (7, 3), (5,)])
@pytest.mark.parametrize("stride", [1, 2])
def test_mixconv_depthwise(sizes, stride):
    """Channel blocks with their own kernel sizes, against one F.conv2d per block at its own size."""
    torch.manual_seed(0)
    widths = [2, 3, 1][:len(sizes)]
    x = _leaf(2, sum(widths), 7, 7)
    ks = [_leaf(c, 1, k, k) for c, k in zip(widths, sizes)]

    def per_block():
        parts = x.split(widths, 1)
        return torch.cat([torch.nn.functional.conv2d(p, k, None, stride, k.shape[-1] // 2, 1, p.shape[1])
                          for p, k in zip(parts, ks)], 1)

    _check(lambda: mixconv_depthwise(x, ks, stride, backend="triton"), per_block, [x, *ks])
    _check(lambda: mixconv_depthwise_reference(x, ks, stride), per_block, [x, *ks])
    with pytest.raises(ValueError, match="channels"):
        mixconv_depthwise(x[:, :1], ks, stride)
