"""Multi-scale features of the classification spaces (``SearchSpace.build_features``) for downstream tasks:
levels, shapes, timm-style ``feature_info``, table FLOPs equal to fvcore's, and weight reuse from a built network."""

from __future__ import annotations

import math

import pytest
import torch

from xsearch.core.errors import UserError
from xsearch.core.flops import fvcore_macs
from xsearch.search_spaces import SKIP, get_space
from xsearch.search_spaces._base import FeatureNetwork

# (space, kwargs, strides, channels) as documented in the spaces' docstrings (width_mult 0.5 where given)
CASES = [
    ("mbv3", {"image_size": 128, "width_mult": 0.5}, [4, 8, 16], [16, 24, 56]),
    ("mbv3", {"image_size": 128, "width_mult": 0.5, "dynamic": True}, [4, 8, 16], [16, 24, 56]),
    ("micronet", {"image_size": 128, "width_mult": 0.5}, [2, 4, 8], [16, 24, 64]),
    ("focalnet", {"image_size": 128, "width_mult": 0.5, "depths": [1, 2, 2]}, [2, 4, 8], [16, 24, 48]),
    ("micronet", {"image_size": 64, "width_mult": 0.5}, [2, 4, 8], [16, 24, 64]),
    ("nasbench_macro", {"image_size": 32}, [2, 4, 8], [64, 128, 256]),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}".replace(" ", "") for name, kw, _, _ in CASES]


def make_space(name, kwargs):
    return get_space(name, num_classes=10, in_chans=3, **kwargs)


def archs(space) -> list[dict[str, str]]:
    """A sampled architecture and one skipping every level layer that may skip (and a dynamic block or two)."""
    sampled = space.sample(seed=0)
    skipping = space.sample(seed=1)
    for i in space.feature_levels():
        if SKIP in space.choices[i].options:
            skipping[space.choices[i].label] = SKIP
    if getattr(space, "dynamic", False):
        sampled.update(layer1="k3_e3_dc", layer3="k5_e6_dr")
    return [sampled, skipping]


@pytest.mark.parametrize("name,kwargs,strides,channels", CASES, ids=IDS)
def test_features_have_the_documented_levels_and_the_table_flops_equal_fvcore(name, kwargs, strides, channels):
    space = make_space(name, kwargs)
    info = space.feature_info()
    assert [d["reduction"] for d in info] == strides and [d["num_chs"] for d in info] == channels
    assert [d["module"] for d in info] == [f"layers.{i}" for i in space.feature_levels()]
    for arch in archs(space):
        net = space.build_features(arch)
        assert net.strides == strides and net.out_channels == channels and net.feature_info == info
        assert len(net.layers) == space.feature_levels()[-1] + 1
        feats = net.eval()(torch.randn(2, *space.input_shape))
        sizes = [math.ceil(space.image_size / s) for s in strides]
        assert [tuple(f.shape) for f in feats] == [(2, c, n, n) for c, n in zip(channels, sizes)]
        assert space.feature_flops(arch) == fvcore_macs(net, input_shape=space.input_shape), arch


@pytest.mark.parametrize("name,kwargs", [("mbv3", {"image_size": 128}), ("micronet", {"image_size": 128}),
                                         ("focalnet", {"image_size": 128})])
def test_default_widths_at_128_pixels(name, kwargs):
    space = make_space(name, kwargs)
    expected = {"mbv3": ([4, 8, 16], [24, 40, 112]), "micronet": ([2, 4, 8], [32, 48, 128]),
                "focalnet": ([2, 4, 8], [24, 48, 96])}[name]
    assert ([d["reduction"] for d in space.feature_info()], [d["num_chs"] for d in space.feature_info()]) == expected


@pytest.mark.parametrize("name,kwargs,strides,channels", CASES[:4], ids=IDS[:4])
def test_from_network_reuses_the_weights_and_gives_the_chain_networks_intermediate_outputs(
        name, kwargs, strides, channels):
    space = make_space(name, kwargs)
    for arch in archs(space):
        net = space.build(arch).eval()
        levels = space.feature_levels()
        captured = {}
        for i in levels:
            net.layers[i].register_forward_hook(lambda m, inp, out, i=i, c=captured: c.__setitem__(i, out))
        x = torch.randn(2, *space.input_shape)
        with torch.no_grad():
            net(x)
            feats = FeatureNetwork.from_network(net, levels, space.feature_info()).eval()(x)
            assert all(torch.equal(f, captured[i]) for f, i in zip(feats, levels))
            # the same module names: the chain's state dict (minus head and later layers) loads strictly
            fresh = space.build_features(arch).eval()
            keep = {f"layers.{i}." for i in range(levels[-1] + 1)}
            state = {k: v for k, v in net.state_dict().items()
                     if k.startswith("stem.") or any(k.startswith(p) for p in keep)}
            fresh.load_state_dict(state)
            assert all(torch.equal(a, b) for a, b in zip(fresh(x), feats))


def test_a_detection_space_has_no_backbone_levels():
    space = get_space("dyhead", image_size=64, channels=16, num_blocks=3)
    with pytest.raises(UserError, match="not a classification chain"):
        space.build_features(space.sample(seed=0))
