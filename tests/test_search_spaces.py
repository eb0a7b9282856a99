from __future__ import annotations

import json

import pytest
import torch

from xsearch.core.errors import UserError
from xsearch.core.flops import fvcore_macs
from xsearch.search_spaces import SKIP, get_space, list_spaces, load_arch, save_arch

SHAPES = [dict(num_classes=10, in_chans=1, image_size=28), dict(num_classes=100, in_chans=3, image_size=32),
          dict(num_classes=10, in_chans=1, image_size=8, num_layers=5, width_mult=0.5)]


def test_registry_lists_mbv3_and_rejects_unknown():
    assert "mbv3" in list_spaces()
    with pytest.raises(UserError, match="valid spaces: .*mbv3"):
        get_space("nope")


@pytest.mark.parametrize("kwargs", SHAPES)
def test_sample_is_deterministic_and_json_ready(kwargs):
    space = get_space("mbv3", **kwargs)
    a, b = space.sample(seed=3), space.sample(seed=3)
    assert a == b and json.loads(json.dumps(a)) == a
    assert set(a) == set(space.labels)
    assert len({json.dumps(space.sample(seed=s)) for s in range(20)}) > 15


def test_candidate_set_is_large_with_skip_only_where_shapes_allow():
    space = get_space("mbv3")
    for choice, (cin, cout, stride, _) in zip(space.choices, space.plan):
        assert len([o for o in choice.options if o != SKIP]) == 12  # k 3/5/7 x e 3/6 x SE
        assert (SKIP in choice.options) == (stride == 1 and cin == cout)


@pytest.mark.parametrize("kwargs", SHAPES)
def test_flops_and_params_equal_fvcore_and_module_counts(kwargs):
    space = get_space("mbv3", **kwargs)
    # every option of every layer appears at least once, plus random mixes
    archs = [{c.label: c.options[i % len(c.options)] for c in space.choices} for i in range(13)]
    archs += [space.sample(seed=s) for s in range(5)]
    for arch in archs:
        net = space.build(arch)
        assert space.flops(arch) == fvcore_macs(net, space.input_shape), arch
        assert space.params(arch) == sum(p.numel() for p in net.parameters())


def test_build_runs_forward_and_backward():
    space = get_space("mbv3", num_classes=7, in_chans=3, image_size=32)
    net = space.build(space.sample(seed=1))
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_sample_under_budget_and_impossible_budget_names_the_minimum():
    space = get_space("mbv3")
    budget = (space.min_flops() + space.max_flops()) // 3
    for s in range(10):
        assert space.flops(space.sample(seed=s, max_flops=budget)) <= budget
    with pytest.raises(UserError, match=str(space.min_flops())):
        space.sample(max_flops=space.min_flops() - 1)


def test_validate_reports_bad_options():
    space = get_space("mbv3")
    arch = space.sample(seed=0)
    with pytest.raises(UserError, match="valid options"):
        space.flops({**arch, "layer1": "k9_e9"})
    with pytest.raises(UserError, match="missing choices"):
        space.build({"layer1": "k3_e3"})


def test_timm_export_builds_the_same_network_in_timm():
    from functools import partial

    from timm.layers import get_act_layer
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.mobilenetv3 import MobileNetV3

    space = get_space("mbv3")
    se_layer = partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=torch.nn.ReLU,
                       rd_round_fn=round_channels)
    for seed in range(5):
        arch = space.sample(seed=seed)
        model = MobileNetV3(decode_arch_def(space.to_timm(arch)), num_classes=10, in_chans=1, stem_size=16,
                            num_features=space.head_hidden, head_bias=True,
                            act_layer=get_act_layer("hard_swish"), se_layer=se_layer)
        model.conv_stem.stride = (space.stem_stride, space.stem_stride)  # timm's builder fixes stride 2
        assert sum(p.numel() for p in model.parameters()) == space.params(arch)
        assert fvcore_macs(model, space.input_shape) == space.flops(arch)


def test_save_and_load_arch_roundtrip(tmp_path):
    space = get_space("mbv3", num_classes=10, in_chans=1, image_size=28, width_mult=0.75)
    arch = space.sample(seed=5)
    save_arch(tmp_path / "arch.json", space, arch, metrics={"test_accuracy": 0.9})
    loaded_space, loaded = load_arch(tmp_path)
    assert loaded == arch and loaded_space.space_kwargs == space.space_kwargs
    record = json.loads((tmp_path / "arch.json").read_text())
    assert record["flops"] == space.flops(arch) and record["timm_arch_def"]
    with pytest.raises(UserError, match="does not exist"):
        load_arch(tmp_path / "missing.json")
