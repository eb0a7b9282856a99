"""The shared-weight supernet (``Supernet(space, sharing="shared")``) and the search around it."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from xsearch.evaluators import CLASSIFICATION
from xsearch.search_spaces import get_space
from xsearch.search_spaces.blocks import make_divisible
from xsearch.strategies import STRATEGIES, Constraints, NoEvents, StageRecord, prune
from xsearch.strategies._differentiable import hold_out_parameter_free
from xsearch.supernets import SharedMixedLayer, Supernet

SPACES = {
    "mbv3": lambda: get_space("mbv3", num_classes=10, in_chans=1, image_size=16, num_layers=5, width_mult=0.5),
    "mbv3-dynamic": lambda: get_space("mbv3", num_classes=10, in_chans=1, image_size=16, num_layers=5,
                                      width_mult=0.5, dynamic=True),
    "nasbench_macro": lambda: get_space("nasbench_macro", num_classes=10, in_chans=3, image_size=8),
}


def randomise_batch_norms(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


@pytest.fixture(scope="module", params=list(SPACES))
def shared(request):
    torch.manual_seed(0)
    space = SPACES[request.param]()
    net = Supernet(space, sharing="shared").double()
    randomise_batch_norms(net)
    return space, net


def test_every_layer_of_the_inverted_residual_spaces_shares(shared):
    space, net = shared
    assert all(isinstance(layer, SharedMixedLayer) for layer in net.layers)
    per_candidate = Supernet(space)
    # fewer parameters: the static blocks are slices (dynamic ones, in mbv3-dynamic, keep their own)
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in per_candidate.parameters())


def test_one_candidate_equals_the_built_network_with_the_shared_weights(shared):
    space, net = shared
    x = torch.randn(3, space.in_chans, space.image_size, space.image_size, dtype=torch.float64)
    for seed in range(6):
        arch = space.sample(seed=seed)
        standalone = net.extract(arch).eval()
        assert type(standalone) is type(space.build(arch))
        net.set_arch(arch)
        net.eval()
        assert torch.equal(net(x), standalone(x))  # the same slices, the same operations: bit-identical
        # extract copies: changing the extracted network leaves the supernet alone
        next(standalone.parameters()).data.add_(1.0)
        assert not torch.equal(net(x), standalone(x))


def _slow_mixture(layer: SharedMixedLayer, x: torch.Tensor, weights: dict[int, float]) -> torch.Tensor:
    """The module doc's definition with explicit full-width masks and centre-padded kernels, one candidate at a time."""
    b = layer.shared.block
    K, M = layer.shared.kernel_size, layer.shared.mid_channels
    shared_w = {i: w for i, w in weights.items() if i in layer.shared_indices}
    total = sum(shared_w.values())
    kernel = torch.zeros_like(b.depthwise.conv.weight)
    mask = torch.zeros(M, dtype=x.dtype)
    q = 0.0
    hidden = torch.zeros(b.se.reduced if hasattr(b.se, "reduced") else 1, dtype=x.dtype)
    for i, w in shared_w.items():
        k, mid, se = layer.candidates[i].spec
        padded = torch.zeros_like(kernel)
        s = (K - k) // 2
        padded[:, :, s:s + k, s:s + k] = b.depthwise.conv.weight[:, :, s:s + k, s:s + k]  # taps, every channel
        kernel += w / total * padded
        mask[:mid] += w / total
        if se:
            q += w / total
            hidden[: make_divisible(mid / 4, 8)] += w
    if q > 0:
        hidden /= q * total
    act = F.relu if layer.shared.act == "relu" else F.hardswish

    def bn(t, m):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = act(bn(F.conv2d(x, b.expand.conv.weight), b.expand.bn))
    d = act(bn(F.conv2d(h, kernel, None, layer.shared.stride, K // 2, 1, M), b.depthwise.bn)) * mask.view(1, -1, 1, 1)
    s = d
    if q > 0:
        gate = F.hardsigmoid(F.conv2d(F.relu(F.conv2d(d.mean((2, 3), keepdim=True), b.se.reduce.weight,
                                                      b.se.reduce.bias)) * hidden.view(1, -1, 1, 1),
                                      b.se.expand.weight, b.se.expand.bias))
        s = d * (q * gate + (1 - q))
    y = bn(F.conv2d(s, b.project.conv.weight), b.project.bn)
    if layer.shared.has_residual:
        y = y + x
    out = total * y
    for i, w in weights.items():  # the other candidates (skip, dynamic blocks, projections): mixed on outputs
        if i not in layer.shared_indices:
            out = out + w * layer.candidates[i](x)
    return out


@pytest.mark.parametrize("pruned", [False, True])
def test_the_mixture_equals_its_written_definition(shared, pruned):
    space, net = shared
    torch.manual_seed(1)
    net.eval()
    net.set_mode("weighted")
    for index, layer in enumerate(net.layers):
        with torch.no_grad():
            layer.alpha.normal_()
        if pruned:  # keep a random half: the pass then runs only as wide and as large as the survivors need
            keep = [o for o in layer.options if torch.rand(()) < 0.5] or [layer.options[0]]
            layer.alive.copy_(torch.tensor([o in keep for o in layer.options]))
        cin = space.plan[index].in_channels
        size = space.plan[index].size
        x = torch.randn(2, cin, size, size, dtype=torch.float64)
        p = layer.probabilities().detach()
        weights = {i: float(p[i]) for i in layer.alive_indices()}
        torch.testing.assert_close(layer(x), _slow_mixture(layer, x, weights), rtol=1e-10, atol=1e-10)
        layer.alive.fill_(True)


def test_pruned_options_get_no_weight_and_no_gradient():
    torch.manual_seed(2)
    space = SPACES["mbv3"]()
    net = Supernet(space, sharing="shared").double()
    layer = net.layers[2]
    small = [o for o in layer.options if o.startswith("k3_e3")]  # no 5x5/7x7 taps, no e6 channels
    layer.alive.copy_(torch.tensor([o in small for o in layer.options]))
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    net.train()
    net(x).square().sum().backward()
    b = layer.shared.block
    mid3 = make_divisible(space.plan[2].in_channels * 3, 8)
    k = layer.shared.kernel_size
    assert b.depthwise.conv.weight.grad[:, :, (k - 3) // 2:(k + 3) // 2, (k - 3) // 2:(k + 3) // 2].abs().sum() > 0
    ring = b.depthwise.conv.weight.grad.clone()
    ring[:, :, (k - 3) // 2:(k + 3) // 2, (k - 3) // 2:(k + 3) // 2] = 0
    assert ring.abs().sum() == 0  # the outer taps of the larger kernels
    for grad in (b.expand.conv.weight.grad[mid3:], b.depthwise.conv.weight.grad[mid3:],
                 b.project.conv.weight.grad[:, mid3:], b.expand.bn.weight.grad[mid3:]):
        assert grad.abs().sum() == 0  # channels only the e6 candidates use
    pruned = [i for i, o in enumerate(layer.options) if o not in small]
    assert layer.alpha.grad[pruned].abs().sum() == 0
    assert layer.alpha.grad[[layer.options.index(o) for o in small]].abs().sum() > 0
    assert float(layer.probabilities().detach()[pruned].sum()) == 0


def test_gradient_reaches_every_shared_weight_and_every_logit():
    torch.manual_seed(3)
    space = SPACES["mbv3"]()
    net = Supernet(space, sharing="shared").double()
    net.train()
    net.set_mode("weighted")
    F.cross_entropy(net(torch.randn(8, 1, 16, 16, dtype=torch.float64)), torch.arange(8)).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for layer in net.layers:
        assert bool((layer.alpha.grad != 0).all()), layer.label


def test_held_out_skip_is_sampled_alone_never_mixed_or_pruned():
    space = SPACES["mbv3"]()
    net = Supernet(space, sharing="shared")
    hold_out_parameter_free(net)
    layer = next(layer for layer in net.layers if "skip" in layer.options)
    skip = layer.options.index("skip")
    assert float(layer.probabilities()[skip]) == 0 and skip not in layer.mixture_indices()
    with torch.no_grad():
        layer.alpha[skip] = 100.0  # would dominate a softmax that included it
    prune(net, space, 0.3, None)
    assert "skip" in net.alive_options()[layer.label]
    layer.mode = "single"
    torch.manual_seed(0)
    assert any(layer.path()[1] == [skip] for _ in range(200))


def test_accuracy_derivation_returns_the_best_architecture_under_the_budget(monkeypatch):
    """On a space small enough to enumerate, the derivation finds the best feasible architecture."""
    from xsearch import evaluators

    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=4, width_mult=0.5)
    alive = {c.label: list(c.options[:2]) + (["skip"] if "skip" in c.options else []) for c in space.choices}
    small = space.restrict(alive)
    archs = [dict(zip(small.labels, picks)) for picks in itertools.product(*(c.options for c in small.choices))]
    flops = sorted(space.flops(a) for a in archs)
    budget = flops[len(flops) // 2]
    rng = random.Random(0)
    value = {o: rng.random() for c in small.choices for o in c.options}

    class Scorer:
        def __init__(self, *args, **kwargs):
            pass

        def score(self, space_, arch, data, seed=0):
            return {"score": sum(value[o] * (i + 1) for i, o in enumerate(arch.values()))}

    monkeypatch.setattr(evaluators, "InheritedWeightsEvaluator", Scorer)
    feasible = [a for a in archs if space.flops(a) <= budget]
    best = max(feasible, key=lambda a: Scorer().score(space, a, None)["score"])
    strategy = STRATEGIES.get("danas")(derive_trials=len(feasible), show_progress=False)
    net = SimpleNamespace(alive_options=lambda: alive)
    ctx = SimpleNamespace(space=space, net=net, budget=Constraints(flops=budget), events=NoEvents(), w_idx=torch.arange(10),
                          task=CLASSIFICATION, model=net,
                          a_idx=torch.arange(10), val_idx=torch.arange(10), data=SimpleNamespace(train=SimpleNamespace(targets=torch.zeros(10).long())))
    by_probability = {c.label: c.options[0] for c in small.choices}
    if space.flops(by_probability) > budget:
        by_probability = min(feasible, key=space.flops)
    result = strategy.derive_by_accuracy(ctx, by_probability)
    assert space.flops(result.arch) <= budget
    assert all(space.flops(q.arch) <= budget for q in result.history)
    assert result.arch == best


def test_danas_derives_by_accuracy_and_records_it(digits):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=5)
    budget = (space.min_flops() + space.max_flops()) // 3
    strategy = STRATEGIES.get("danas")(epochs=3, warmup_epochs=1, train_samples=600, batch_size=50, derive_trials=6,
                                       val_samples=200, show_progress=False)
    result = strategy.search(space, None, digits, Constraints(budget), None)
    assert result.flops <= budget and result.metrics["derivation"] == "accuracy"
    stages = [h for h in result.history if isinstance(h, StageRecord)]
    queries = [h for h in result.history if not isinstance(h, StageRecord)]
    assert [s.num_classes for s in stages] == [3, 6, 10] and len(queries) == 6
    assert result.arch == max(queries, key=lambda q: q.score).arch
    assert result.metrics["inherited_val_accuracy"] == max(q.score for q in queries)
    # the survivors of the last stage are the derivation's space
    assert all(result.arch[k] in stages[-1].alive[k] for k in result.arch)
    legacy = STRATEGIES.get("danas")(epochs=3, warmup_epochs=1, train_samples=600, batch_size=50,
                                     derive="probability", sharing="none", skip="mixed", show_progress=False)
    old = legacy.search(space, None, digits, Constraints(budget), None)
    assert old.metrics["derivation"] == "probability" and old.arch == old.history[-1].derived_arch


def test_blend_pruning_scores_every_mixed_candidate(digits):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=8, num_layers=5)
    strategy = STRATEGIES.get("danas")(epochs=3, warmup_epochs=1, train_samples=600, batch_size=50, derive_trials=2,
                                       val_samples=100, prune_score="blend", show_progress=False)
    result = strategy.search(space, None, digits, Constraints(None), None)
    stages = [h for h in result.history if isinstance(h, StageRecord)]
    assert sum(stages[0].alive_per_layer.values()) > sum(stages[1].alive_per_layer.values())
    for choice in space.choices:  # skip is held out of the mixture: never pruned
        assert ("skip" in stages[-1].alive[choice.label]) == ("skip" in choice.options)


def test_dyhead_layers_share_one_block_and_mix_like_their_candidates():
    from xsearch.supernets._execution import PlainExecution
    from xsearch.supernets.shared_dyhead import SharedDyHeadLayer

    space = get_space("dyhead", num_classes=4, in_chans=3, image_size=64, channels=8, num_blocks=2)
    net = Supernet(space, sharing="shared").eval()
    assert all(isinstance(layer, SharedDyHeadLayer) for layer in net.layers)
    layer = net.layers[0]
    spatial = [c for c in layer.candidates if getattr(c, "use_spatial", False)]
    assert len({id(c.dcn_weight) for c in spatial}) == 1  # one deformable conv for every spatial candidate
    with torch.no_grad():
        for p in layer.shared.offset_conv.parameters():  # non-zero offsets, so the reads are really deformable
            p.normal_(0, 0.1)
    features = net.stem(torch.randn(2, 3, 64, 64))
    weights = torch.softmax(torch.randn(len(layer.options)), 0)
    active = list(range(len(layer.options)))
    with torch.no_grad():
        mixed = layer.run(features, weights, active)
        plain = PlainExecution().run(layer, features, weights, active)
    for a, b in zip(mixed, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    arch = {c.label: "scale_spatial" for c in space.choices}
    net.set_arch(arch)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = net(x), net.extract(arch).eval()(x)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-6)
