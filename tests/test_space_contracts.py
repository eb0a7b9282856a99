"""The search-space contract, for every registered space: builds, runs, counts FLOPs like fvcore, samples
under a budget, rebuilds from its kwargs, and a supernet over it extracts the network it builds.

Parametrised over the ``SPACES`` registry, so a new space is tested as soon as it registers (at its
default size unless ``SMALL`` names a smaller one); ``VARIANTS`` add other settings of a space.
"""

from __future__ import annotations

import json

import pytest
import torch

from xsearch.core.errors import UserError
from xsearch.core.flops import fvcore_macs
from xsearch.search_spaces import arch_from_record, arch_record, get_space, list_spaces
from xsearch.supernets import Supernet

# smaller than the defaults where a space is slow at its default size
SMALL = {
    "dyhead": {"image_size": 64, "channels": 16, "num_blocks": 3},
}
VARIANTS = [
    ("mbv3", {"num_classes": 100, "in_chans": 3, "image_size": 32}),
    ("mbv3", {"num_classes": 10, "in_chans": 1, "image_size": 8, "num_layers": 5, "width_mult": 0.5}),
    ("mbv3", {"dynamic": True}),
    ("mbv3", {"dynamic": True, "act": "relu", "in_chans": 3, "image_size": 32, "num_classes": 7}),
    ("micronet", {"in_chans": 3, "image_size": 32, "num_classes": 7}),
    ("focalnet", {"width_mult": 0.5, "depths": [1, 2, 2], "image_size": 8}),
]
CASES = [(name, SMALL.get(name, {})) for name in list_spaces()] + VARIANTS
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kwargs.items()) or 'default'}".replace(" ", "")
       for name, kwargs in CASES]


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def space(request):
    name, kwargs = request.param
    return get_space(name, **kwargs)


def covering_archs(space, extra: int = 3) -> list[dict[str, str]]:
    """Architectures that use every option of every layer at least once, plus random ones."""
    widest = max(len(c.options) for c in space.choices)
    archs = [{c.label: c.options[i % len(c.options)] for c in space.choices} for i in range(widest)]
    return archs + [space.sample(seed=s) for s in range(extra)]


def _outputs(space, out) -> list[torch.Tensor]:
    """The network's output as a list of tensors, after checking its shape against the space's task."""
    if space.task == "detection":
        # the FCOS head's output: every level's locations concatenated
        assert set(out) == {"cls_logits", "bbox_regression", "bbox_ctrness"}
        locations = sum(s * s for s in space.sizes)
        assert out["cls_logits"].shape[1:] == (locations, space.num_classes)
        assert out["bbox_regression"].shape[1:] == (locations, 4)
        return list(out.values())
    assert out.shape[1:] == (space.num_classes,)
    return [out]


def test_every_registered_space_has_a_case():
    assert {name for name, _ in CASES} == set(list_spaces())


def test_builds_and_trains_forward_and_backward(space):
    net = space.build(space.sample(seed=0)).train()
    outputs = _outputs(space, net(torch.randn(2, *space.input_shape)))
    assert all(o.shape[0] == 2 for o in outputs)
    sum(o.sum() for o in outputs).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_flops_and_params_tables_equal_fvcore_and_the_module(space):
    for arch in covering_archs(space):
        net = space.build(arch)
        assert space.flops(arch) == fvcore_macs(net, space.input_shape), arch
        assert space.params(arch) == sum(p.numel() for p in net.parameters()), arch


def test_sample_is_deterministic_and_json_ready(space):
    a, b = space.sample(seed=3), space.sample(seed=3)
    assert a == b and json.loads(json.dumps(a)) == a
    assert set(a) == set(space.labels) and space.validate(a) == a
    distinct = {json.dumps(space.sample(seed=s)) for s in range(20)}
    assert len(distinct) > 10


def test_sample_respects_max_flops_and_an_impossible_budget_names_the_minimum(space):
    budget = space.min_flops() + (space.max_flops() - space.min_flops()) // 3
    for s in range(10):
        assert space.flops(space.sample(seed=s, max_flops=budget)) <= budget
    assert space.flops(space.sample(seed=0, max_flops=space.min_flops())) == space.min_flops()
    with pytest.raises(UserError, match=str(space.min_flops())):
        space.sample(max_flops=space.min_flops() - 1)


def test_space_kwargs_rebuild_the_space_and_records_round_trip(space):
    kwargs = json.loads(json.dumps(space.space_kwargs))
    rebuilt = get_space(space.name, **kwargs)
    assert rebuilt.space_kwargs == space.space_kwargs
    assert rebuilt.choices == space.choices and rebuilt.flops_table == space.flops_table
    arch = space.sample(seed=5)
    record = json.loads(json.dumps(arch_record(space, arch, metrics={"test_accuracy": 0.9})))
    assert record["flops"] == space.flops(arch) and record["params"] == space.params(arch)
    loaded_space, loaded = arch_from_record(record)
    assert loaded == arch and loaded_space.space_kwargs == space.space_kwargs


def test_validate_names_the_valid_options_and_choices(space):
    arch = space.sample(seed=0)
    first = space.choices[0].label
    with pytest.raises(UserError, match="valid options"):
        space.flops({**arch, first: "no_such_option"})
    with pytest.raises(UserError, match="missing choices"):
        space.build({first: arch[first]})


def test_supernet_extract_equals_the_built_network_in_fixed_mode(space):
    """float64, non-trivial batch-norm statistics: the fixed path and the extracted network agree."""
    torch.manual_seed(0)
    net = Supernet(space).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(2, *space.input_shape, dtype=torch.float64)
    for seed in range(2):
        arch = space.sample(seed=seed)
        standalone = net.extract(arch).eval()
        assert list(standalone.state_dict()) == list(space.build(arch).state_dict())
        net.set_arch(arch)
        for got, expected in zip(_outputs(space, net(x)), _outputs(space, standalone(x))):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_runs_on_cuda_like_on_the_cpu(space, dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare full float32, not TF32
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    for arch in covering_archs(space, extra=0)[:4]:
        net = space.build(arch).to(dtype).eval()
        x = torch.randn(2, *space.input_shape, dtype=dtype)
        expected = _outputs(space, net(x))
        got = [t.cpu() for t in _outputs(space, net.cuda()(x.cuda()))]
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=tol, atol=tol)
        net.train()
        sum(o.sum() for o in _outputs(space, net(x.cuda()))).backward()
