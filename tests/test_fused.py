"""Fused and naive execution of mixed layers agree: outputs, gradients, batch-norm buffers."""

from __future__ import annotations

import copy

import pytest
import torch

from xsearch.core.data import channels_last_tensor
from xsearch.search_spaces import get_space
from xsearch.supernets import Supernet, fused_batch_norm, fused_mixed_forward, naive_mixed_forward
from xsearch.supernets import fused as fused_module
from xsearch.core.training import channels_last as to_channels_last

TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


@pytest.fixture(scope="module", params=["by_kernel", "padded"])
def space(request):
    """Both fusion layouts on the CPU: per kernel size (the CPU default) and one padded pass."""
    saved = dict(fused_module.GROUP_BY_KERNEL)
    fused_module.GROUP_BY_KERNEL["cpu"] = request.param == "by_kernel"
    yield get_space("mbv3", num_classes=10, in_chans=1, image_size=16, num_layers=5, width_mult=0.5)
    fused_module.GROUP_BY_KERNEL.clear()
    fused_module.GROUP_BY_KERNEL.update(saved)


def _randomise(net: Supernet, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters, logits and random alive-masks (>= 1 alive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
        for layer in net.layers:
            layer.alpha.copy_(torch.randn(len(layer.options), generator=g))
            mask = torch.rand(len(layer.options), generator=g) < 0.6
            mask[torch.randint(len(layer.options), (1,), generator=g)] = True
            layer.alive.copy_(mask)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float, what: str) -> None:
    """Relative to the tensor's scale: max |a - b| <= tol * max |b|.

    Scales below 1e-2 count as 1e-2: some gradients are zero in exact arithmetic (a batch norm's
    bias feeding another batch norm) and hold only rounding noise in both executions.
    """
    scale = b.abs().max().clamp_min(1e-2)
    err = (a - b).abs().max()
    assert err <= tol * scale, f"{what}: max error {float(err):.3g}, scale {float(scale):.3g}"


def _step(net: Supernet, x: torch.Tensor, target: torch.Tensor, seed: int):
    torch.manual_seed(seed)  # gated draws and dropout: the same for both nets
    x = x.clone().requires_grad_(True)
    out = net(x)
    if net.training:
        (out * target).sum().backward()
    return out, x.grad


def _compare(space, mode: str, seed: int, dtype=torch.float32, train: bool = True,
             channels_last: bool = False, size: int = 16) -> None:
    torch.manual_seed(seed)
    naive = Supernet(space, mode=mode, fused=False)
    _randomise(naive, seed)
    fused = copy.deepcopy(naive)
    fused.fused = True
    naive, fused = naive.to(dtype), fused.to(dtype)
    assert not naive.fused and fused.fused
    for net in (naive, fused):
        net.train(train)
    x = torch.randn(4, 1, size, size, dtype=dtype)
    if channels_last:  # true NHWC strides (one input channel: Module.to(memory_format) would keep NCHW)
        x = channels_last_tensor(x)
        naive, fused = to_channels_last(naive), to_channels_last(fused)
    target = torch.randn(4, 10, dtype=dtype)
    tol = TOL[dtype]
    with torch.set_grad_enabled(train):
        out_n, gx_n = _step(naive, x, target, seed)
        out_f, gx_f = _step(fused, x, target, seed)
    _close(out_f, out_n, tol, "output")
    if train:
        _close(gx_f, gx_n, tol, "input grad")
        for (name, p_n), p_f in zip(naive.named_parameters(), fused.parameters()):
            assert (p_n.grad is None) == (p_f.grad is None), name
            if p_n.grad is not None:
                _close(p_f.grad, p_n.grad, tol, f"grad of {name}")
        assert any(a.grad is not None and a.grad.abs().sum() > 0 for a in fused.arch_parameters())
    for (name, b_n), b_f in zip(naive.named_buffers(), fused.buffers()):
        if b_n.dtype.is_floating_point:
            _close(b_f, b_n, tol, f"buffer {name}")
        else:
            assert torch.equal(b_f, b_n), name


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_equals_naive_weighted(space, seed):
    _compare(space, "weighted", seed)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_fused_equals_naive_gated(space, seed):
    _compare(space, "gated", seed)


def test_fused_equals_naive_eval(space):
    _compare(space, "weighted", 6, train=False)


def test_fused_equals_naive_float64(space):
    _compare(space, "weighted", 7, dtype=torch.float64)
    _compare(space, "gated", 8, dtype=torch.float64)


def test_fused_equals_naive_channels_last(space):
    _compare(space, "weighted", 9, channels_last=True)


@pytest.mark.parametrize("cap", [None, 400_000, 1])
def test_fused_equals_naive_under_byte_caps(space, cap, monkeypatch):
    """No cap (one block per group), blocks of about 100 channels, and every candidate alone."""
    monkeypatch.setitem(fused_module.MAX_FUSED_BYTES, "cpu", cap)
    _compare(space, "weighted", 10)
    _compare(space, "gated", 11)


def test_all_alive_and_single_paths(space, monkeypatch):
    """Every candidate alive (the default), and the single/fixed modes (one candidate)."""
    calls = []
    inner = fused_module._fused_inverted_residuals
    monkeypatch.setattr(fused_module, "_fused_inverted_residuals",
                        lambda x, blocks, w: calls.append(len(blocks)) or inner(x, blocks, w))
    torch.manual_seed(0)
    naive = Supernet(space, fused=False)
    fused = copy.deepcopy(naive)
    fused.fused = True
    x, target = torch.randn(3, 1, 16, 16), torch.randn(3, 10)
    for mode in ("weighted", "single"):
        naive.set_mode(mode)
        fused.set_mode(mode)
        out_n, gx_n = _step(naive, x, target, 11)
        out_f, gx_f = _step(fused, x, target, 11)
        _close(out_f, out_n, 1e-4, f"{mode} output")
        _close(gx_f, gx_n, 1e-4, f"{mode} input grad")
        if mode == "weighted":  # all 12 inverted residuals of every layer ran fused
            assert sum(calls) == 12 * len(fused.layers) and min(calls) > 1


def test_cumulative_momentum_with_unequal_counts():
    """momentum=None (recalibration) with BNs that have seen different numbers of batches."""
    torch.manual_seed(0)
    bns = [torch.nn.BatchNorm2d(c, momentum=None) for c in (3, 5, 4)]
    for k, bn in enumerate(bns):
        bn.num_batches_tracked.fill_(k * 2)
        bn.running_mean.uniform_(-1, 1)
    ref = copy.deepcopy(bns)
    x = torch.randn(6, 12, 5, 5)
    scale = torch.rand(3)
    out = fused_batch_norm(x, bns, scale)
    expected = torch.cat([bn(s) * w for bn, s, w in zip(ref, x.split([3, 5, 4], 1), scale)], 1)
    _close(out, expected, 1e-5, "output")
    for bn, r in zip(bns, ref):
        _close(bn.running_mean, r.running_mean, 1e-5, "running_mean")
        _close(bn.running_var, r.running_var, 1e-5, "running_var")
        assert torch.equal(bn.num_batches_tracked, r.num_batches_tracked)


def test_switch_and_default(space):
    net = Supernet(space)
    assert net.fused and all(layer.executor is fused_mixed_forward for layer in net.layers)
    net.fused = False
    assert not net.fused and all(layer.executor is naive_mixed_forward for layer in net.layers)
    net.set_executor(fused_mixed_forward)
    assert net.fused
    assert not Supernet(space, executor=naive_mixed_forward).fused


OPERATOR_SPACES = {
    "mbv3-dynamic": dict(name="mbv3", num_layers=4, width_mult=0.5, dynamic=True),
    "micronet": dict(name="micronet", width_mult=0.5, depths=[1, 1, 1, 1]),
}


@pytest.mark.parametrize("which", sorted(OPERATOR_SPACES))
def test_fused_equals_naive_with_operator_kernels(which):
    """Spaces with dynamic convolutions and Dynamic Shift-Max: a fused supernet runs them through the
    kernels it installs (``supernets.kernels``, here their PyTorch paths), the plain one through the
    blocks' own forward; in float64 outputs, gradients and buffers agree to 1e-10. (The Triton paths
    of those kernels are checked against the same references in test_kernels.py, on tiny shapes:
    Triton's interpreter takes about 0.1 s per program, too slow for a whole supernet.)"""
    kwargs = dict(OPERATOR_SPACES[which])
    space = get_space(kwargs.pop("name"), num_classes=10, in_chans=1, image_size=8, **kwargs)
    _compare(space, "weighted", 13, size=8, dtype=torch.float64)
    _compare(space, "gated", 14, size=8, dtype=torch.float64)


def test_fused_installs_operator_kernels():
    from xsearch.search_spaces.blocks import DynamicConv2d, DynamicShiftMax

    for name, kwargs in (("mbv3", dict(num_layers=4, dynamic=True)), ("micronet", {})):
        net = Supernet(get_space(name, **kwargs))
        ops = [m for m in net.modules() if isinstance(m, (DynamicConv2d, DynamicShiftMax))]
        assert ops and all(m.kernel in (fused_module.dynamic_conv_kernel, fused_module.shift_max_kernel)
                           for m in ops)
        net.fused = False
        assert all(m.kernel is None for m in ops)
        # an extracted network is standalone: the blocks' own forward
        extracted = net.extract(net.space.sample(seed=0))
        assert all(m.kernel is None for m in extracted.modules() if isinstance(m, (DynamicConv2d, DynamicShiftMax)))
