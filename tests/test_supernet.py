from __future__ import annotations

import pytest
import torch

from xsearch.search_spaces import get_space
from xsearch.supernets import Supernet

SPACES = {
    "mbv3": {"num_layers": 5, "width_mult": 0.5},
    "mbv3-dynamic": {"num_layers": 5, "width_mult": 0.5, "dynamic": True},
    "micronet": {"width_mult": 0.5, "depths": [1, 1, 2, 1]},
    "focalnet": {"width_mult": 0.5, "depths": [1, 2, 2]},
}


@pytest.fixture(scope="module", params=list(SPACES))
def space(request):
    name = request.param.split("-")[0]
    return get_space(name, num_classes=10, in_chans=1, image_size=16, **SPACES[request.param])


def test_extract_keeps_weights_and_matches_fixed_path(space):
    torch.manual_seed(0)
    net = Supernet(space)
    with torch.no_grad():  # give every batch norm non-trivial statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 1, 16, 16)
    for seed in range(4):
        arch = space.sample(seed=seed)
        standalone = net.extract(arch).eval()
        net.set_arch(arch)
        net.eval()
        torch.testing.assert_close(net(x), standalone(x))
        layer = net.layers[0]
        chosen = layer.candidates[layer.options.index(arch[layer.label])]
        for (name, p), q in zip(chosen.state_dict().items(), standalone.layers[0].state_dict().values()):
            assert torch.equal(p, q), name
        # a copy: training the extracted network leaves the supernet untouched
        standalone.layers[0].state_dict()
        next(standalone.parameters()).data.add_(1.0)
        assert not torch.equal(next(standalone.parameters()), next(net.parameters()))


def test_pruned_candidates_are_never_run_and_get_zero_probability(space):
    net = Supernet(space)
    calls: dict[tuple[str, str], int] = {}
    for layer in net.layers:
        for option, cand in zip(layer.options, layer.candidates):
            cand.register_forward_hook(lambda m, i, o, key=(layer.label, option): calls.__setitem__(key, calls.get(key, 0) + 1))
    keep = {layer.label: list(layer.options[:2]) for layer in net.layers}
    net.set_alive(keep)
    x = torch.randn(2, 1, 16, 16)
    for mode in ("weighted", "gated", "single"):
        net.set_mode(mode)
        for _ in range(5):
            net(x)
    ran = {k for k, v in calls.items() if v}
    assert ran and all(option in keep[label] for label, option in ran)
    for label, probs in net.probabilities().items():
        assert set(probs) == set(keep[label])
        assert abs(sum(probs.values()) - 1) < 1e-6
    assert net.num_alive() == 2 * len(net.layers)


def test_expected_flops_is_exact_for_a_one_hot_distribution(space):
    net = Supernet(space)
    arch = space.sample(seed=2)
    with torch.no_grad():
        for layer in net.layers:
            layer.alpha.fill_(-1e4)
            layer.alpha[layer.options.index(arch[layer.label])] = 0.0
    assert abs(float(net.expected_flops()) - space.flops(arch)) < 1.0


@pytest.mark.parametrize("mode,expects_grad", [("weighted", True), ("gated", True), ("single", False)])
def test_logit_gradients_by_path_mode(space, mode, expects_grad):
    torch.manual_seed(0)
    net = Supernet(space, mode=mode)
    net(torch.randn(4, 1, 16, 16)).logsumexp(1).sum().backward()
    grads = [a.grad for a in net.arch_parameters()]
    if expects_grad:
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
    else:
        assert all(g is None for g in grads)


def test_weight_and_arch_parameters_partition_the_supernet(space):
    net = Supernet(space)
    weights = {id(p) for p in net.weight_parameters()}
    arch = {id(p) for p in net.arch_parameters()}
    assert not weights & arch
    assert weights | arch == {id(p) for p in net.parameters()}
    assert len(arch) == len(space.choices)
