from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xsearch.core.data import stratified_split
from xsearch.evaluators import EVALUATORS, ProxyEvaluator, proxy_score
from xsearch.evaluators.proxy import PROXIES, naswot_kernel


@pytest.fixture(scope="module")
def fashion(fashion_root):
    from xsearch.datasets import load_dataset

    return load_dataset("fashion_mnist", root=str(fashion_root))


@pytest.fixture(scope="module")
def space():
    from xsearch.search_spaces import get_space

    return get_space("mbv3", num_classes=10, in_chans=1)


def _linear(weight, bias=None) -> nn.Linear:
    w = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


def test_synflow_of_a_bias_free_linear_net_by_hand():
    # R = sum_j |w2_j| * s_j with s_j = sum_i |w1_ji| = (6, 1.5); R = 2*6 + 3*1.5 = 16.5.
    # dR/d|w1_ji| = |w2_j|, dR/d|w2_j| = s_j, so sum |theta * grad| = R (first layer) + R (second) = 33.
    net = nn.Sequential(_linear([[1.0, -2.0, 3.0], [-1.0, 0.5, 0.0]]), nn.ReLU(), _linear([[2.0, -3.0]]))
    x = torch.randn(5, 3)
    assert proxy_score("synflow", net, x, torch.zeros(5, dtype=torch.long)) == pytest.approx(33.0, rel=1e-12)


def test_naswot_kernel_against_codes_written_out():
    # layer 1 pre-activations: x1=(1,2) -> (1,2,2); x2=(-1,1) -> (-1,1,-1); x3=(2,-3) -> (2,-3,-2)
    # layer 2 on relu(layer 1): x1 -> 1-2+2 = 1; x2 -> -1; x3 -> 2
    net = nn.Sequential(_linear([[1, 0], [0, 1], [1, 1]], [0, 0, -1]), nn.ReLU(inplace=True),
                        _linear([[1, -1, 1]], [0]), nn.ReLU())
    x = torch.tensor([[1.0, 2.0], [-1.0, 1.0], [2.0, -3.0]])
    codes = torch.tensor([[1, 1, 1, 1], [0, 1, 0, 0], [1, 0, 0, 1]])
    agree = torch.tensor([[int((a == b).sum()) for b in codes] for a in codes], dtype=torch.float64)
    assert agree.tolist() == [[4, 1, 2], [1, 4, 1], [2, 1, 4]]
    assert torch.equal(naswot_kernel(net, x), agree)
    assert proxy_score("naswot", net, x, torch.zeros(3, dtype=torch.long)) == pytest.approx(math.log(44.0))


def test_snip_by_hand():
    # one linear layer, logits z = W x; dL/dW = (softmax(z) - onehot(y)) x^T
    net = _linear([[1.0, -1.0], [0.5, 2.0]])
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    p = torch.softmax(torch.tensor([-1.0, 4.5]), 0) - torch.tensor([0.0, 1.0])
    expected = float((torch.tensor([[1.0, -1.0], [0.5, 2.0]]) * p[:, None] * x).abs().sum())
    assert proxy_score("snip", net, x, y) == pytest.approx(expected, rel=1e-6)


def test_proxies_leave_the_callers_model_untouched(space):
    torch.manual_seed(0)
    model = space.build(space.sample(seed=3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, *space.input_shape), torch.randint(0, 10, (8,))
    for name in ("synflow", "naswot", "snip"):
        assert math.isfinite(proxy_score(name, model, x, y))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running statistics
    assert all(p.grad is None for p in model.parameters()) and model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_unknown_proxy_lists_the_valid_ones():
    with pytest.raises(ValueError, match="synflow, naswot, snip, flops, params"):
        ProxyEvaluator(proxy="grasp")
    with pytest.raises(ValueError, match="synflow, naswot, snip, flops, params"):
        proxy_score("grasp", nn.Linear(2, 2), torch.ones(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="space"):
        proxy_score("flops", nn.Linear(2, 2), torch.ones(1, 2), torch.zeros(1, dtype=torch.long))


def test_registered_with_its_contract():
    assert EVALUATORS.get("proxy") is ProxyEvaluator and PROXIES == ("synflow", "naswot", "snip", "flops", "params")
    assert ProxyEvaluator.reports_accuracy is False
    assert ProxyEvaluator("naswot").needs_data and not ProxyEvaluator("params").needs_data


def test_scoring_batch_is_stratified_and_fixed_by_the_seed():
    targets = torch.arange(100) % 10
    a, b = (stratified_split(targets, seed=1, size=20)[0] for _ in range(2))
    assert torch.equal(a, b) and len(set(a.tolist())) == 20
    assert torch.bincount(targets[a], minlength=10).tolist() == [2] * 10
    assert not torch.equal(a, stratified_split(targets, seed=2, size=20)[0])


def test_scores_are_finite_and_deterministic_on_real_data(fashion, space):
    arch = space.sample(seed=5)
    for name in PROXIES:
        evaluator = ProxyEvaluator(name, batch_size=16, device="cpu")
        first = evaluator.evaluate(space, arch, fashion, seed=0)
        again = ProxyEvaluator(name, batch_size=16, device="cpu").score(space, arch, fashion, seed=0)
        assert math.isfinite(first["score"]) and first["score"] == again["score"], name
        assert first["proxy"] == name and (first["flops"], first["params"]) == (space.flops(arch), space.params(arch))
        assert first["seconds"] >= 0
    assert ProxyEvaluator("flops").evaluate(space, arch, None)["score"] == space.flops(arch)
    assert ProxyEvaluator("params").evaluate(space, arch, None)["score"] == space.params(arch)


def test_synflow_ranks_mbv3_roughly_like_params(fashion, space):
    # Checked over 48 sampled archs (six disjoint sets of 8, two init seeds): Spearman(synflow, params)
    # was positive in every set (0.26..0.69; 0.45 over all 48); synflow follows FLOPs more closely (0.81).
    from scipy.stats import kendalltau, spearmanr

    archs = [space.sample(seed=i) for i in range(8)]
    evaluator = ProxyEvaluator("synflow", device="cpu")
    scores = [evaluator.evaluate(space, a, fashion, seed=0)["score"] for a in archs]
    params = [space.params(a) for a in archs]
    assert all(math.isfinite(s) and s > 0 for s in scores)
    assert spearmanr(scores, params)[0] > 0 and kendalltau(scores, params)[0] > 0
