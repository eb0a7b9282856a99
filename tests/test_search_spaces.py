"""The registry and the ``mbv3`` space's own promises; the contract every space keeps is in test_space_contracts.py."""

from __future__ import annotations

import pytest
import torch

from xsearch.core.errors import UserError
from xsearch.core.flops import fvcore_macs
from xsearch.search_spaces import SKIP, get_space, list_spaces


def test_registry_lists_mbv3_and_rejects_unknown():
    assert "mbv3" in list_spaces()
    with pytest.raises(UserError, match="valid spaces: .*mbv3"):
        get_space("nope")


def test_candidate_set_is_large_with_skip_only_where_shapes_allow():
    space = get_space("mbv3")
    for choice, (cin, cout, stride, _) in zip(space.choices, space.plan):
        assert len([o for o in choice.options if o != SKIP]) == 12  # k 3/5/7 x e 3/6 x SE
        assert (SKIP in choice.options) == (stride == 1 and cin == cout)


def test_every_space_takes_num_classes_in_chans_and_image_size():
    for name in list_spaces():
        space = get_space(name, num_classes=7, in_chans=3, image_size=64)
        assert space.input_shape == (3, 64, 64) and space.num_classes == 7


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
