"""Fused and naive execution of mixed layers agree: outputs, gradients, batch-norm buffers."""

from __future__ import annotations

import copy

import pytest
import torch

from xsearch.core.data import channels_last_tensor
from xsearch.core.training import channels_last as to_channels_last
from xsearch.search_spaces import get_space
from xsearch.search_spaces.blocks import DynamicConv2d, DynamicShiftMax
from xsearch.supernets import FusedExecution, PlainExecution, Supernet, fused_batch_norm
from xsearch.supernets import fused as fused_module

TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


@pytest.fixture(scope="module")
def space():
    return get_space("mbv3", num_classes=10, in_chans=1, image_size=16, num_layers=5, width_mult=0.5)


@pytest.fixture(params=["by_kernel", "padded"])
def layout(request) -> dict[str, bool]:
    """Both fusion layouts on the CPU: per kernel size (the CPU default) and one padded pass."""
    return {"cpu": request.param == "by_kernel"}


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
             channels_last: bool = False, size: int = 16, execution: FusedExecution | None = None) -> None:
    torch.manual_seed(seed)
    naive = Supernet(space, mode=mode, fused=False)
    _randomise(naive, seed)
    fused = copy.deepcopy(naive)
    fused.set_execution(execution or FusedExecution())
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
def test_fused_equals_naive_weighted(space, layout, seed):
    _compare(space, "weighted", seed, execution=FusedExecution(group_by_kernel=layout))


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_fused_equals_naive_gated(space, layout, seed):
    _compare(space, "gated", seed, execution=FusedExecution(group_by_kernel=layout))


def test_fused_equals_naive_eval(space, layout):
    _compare(space, "weighted", 6, train=False, execution=FusedExecution(group_by_kernel=layout))


def test_fused_equals_naive_float64(space, layout):
    execution = FusedExecution(group_by_kernel=layout)
    _compare(space, "weighted", 7, dtype=torch.float64, execution=execution)
    _compare(space, "gated", 8, dtype=torch.float64, execution=execution)


def test_fused_equals_naive_channels_last(space, layout):
    _compare(space, "weighted", 9, channels_last=True, execution=FusedExecution(group_by_kernel=layout))


@pytest.mark.parametrize("cap", [None, 400_000, 1])
def test_fused_equals_naive_under_byte_caps(space, layout, cap):
    """No cap (one block per group), blocks of about 100 channels, and every candidate alone."""
    execution = FusedExecution(group_by_kernel=layout, max_fused_bytes={"cpu": cap})
    _compare(space, "weighted", 10, execution=execution)
    _compare(space, "gated", 11, execution=execution)


def test_all_alive_and_single_paths(space, layout, monkeypatch):
    """Every candidate alive (the default), and the single/fixed modes (one candidate)."""
    calls = []
    inner = fused_module._fused_inverted_residuals
    monkeypatch.setattr(fused_module, "_fused_inverted_residuals",
                        lambda x, blocks, *args: calls.append(len(blocks)) or inner(x, blocks, *args))
    torch.manual_seed(0)
    naive = Supernet(space, fused=False)
    fused = copy.deepcopy(naive)
    fused.set_execution(FusedExecution(group_by_kernel=layout))
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
    assert net.fused and isinstance(net.execution, FusedExecution)
    assert all(layer.execution is net.execution for layer in net.layers)
    net.fused = False
    assert not net.fused and isinstance(net.execution, PlainExecution)
    assert all(layer.execution is net.execution for layer in net.layers)
    policy = FusedExecution(backend="torch", max_fused_bytes={})
    net.set_execution(policy)
    net.fused = True  # an installed fused policy is kept with its settings
    assert net.fused and net.execution is policy
    assert not Supernet(space, execution=PlainExecution()).fused
    assert Supernet(space, fused=False, execution=policy).execution is policy
    with pytest.raises(ValueError, match="backend"):
        FusedExecution(backend="cuda")


OPERATOR_SPACES = {
    "mbv3-dynamic": {"name": "mbv3", "num_layers": 4, "width_mult": 0.5, "dynamic": True},
    "micronet": {"name": "micronet", "width_mult": 0.5, "depths": [1, 1, 1, 1]},
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


def test_fused_execution_swaps_operators_on_the_same_parameters():
    """Fused execution swaps dynamic operators for supernets-side subclasses and back; the state_dict
    keys and tensors are the same objects throughout, and an extracted network holds plain blocks."""
    for name, kwargs in (("mbv3", {"num_layers": 4, "dynamic": True}), ("micronet", {})):
        net = Supernet(get_space(name, **kwargs))
        state = net.state_dict(keep_vars=True)
        ops = [m for m in net.modules() if isinstance(m, (DynamicConv2d, DynamicShiftMax))]
        fused_types = (fused_module.FusedDynamicConv2d, fused_module.FusedDynamicShiftMax)
        assert ops and all(isinstance(m, fused_types) and m.backend == "auto" for m in ops)
        net.set_execution(FusedExecution(backend="torch"))
        assert all(m.backend == "torch" for m in net.modules() if isinstance(m, fused_types))
        net.fused = False
        plain = [m for m in net.modules() if isinstance(m, (DynamicConv2d, DynamicShiftMax))]
        assert len(plain) == len(ops) and not any(isinstance(m, fused_types) for m in plain)
        assert not any(hasattr(m, "backend") for m in plain)
        after = net.state_dict(keep_vars=True)
        assert list(after) == list(state) and all(after[k] is state[k] for k in state)
        net.fused = True
        extracted = net.extract(net.space.sample(seed=0))
        assert not any(isinstance(m, fused_types) for m in extracted.modules())
