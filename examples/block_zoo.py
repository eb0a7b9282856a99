"""The block zoo as a library: operators in your own model, the new spaces, FLOPs checked with fvcore.

Run: python examples/block_zoo.py   (CPU, a few seconds; no data needed)
"""

from __future__ import annotations

import torch
from torch import nn

from xsearch.core.flops import fvcore_macs
from xsearch.search_spaces import get_space
from xsearch.search_spaces.blocks import (
    DyHeadBlock,
    DynamicConv2d,
    DyReLU,
    FocalNetBlock,
    MicroBlockC,
    set_temperature,
    temperature_at,
)

# 1. Operators in a hand-written model: each reports its own MACs, which fvcore confirms.
model = nn.Sequential(
    DynamicConv2d(3, 32, 3, stride=2), nn.BatchNorm2d(32), DyReLU(32),
    MicroBlockC(32, 32, kernel_size=3, expansion=4),
    FocalNetBlock(32, focal_level=2, focal_window=3, mlp_ratio=2.0),
)
x = torch.randn(8, 3, 32, 32)
print("output", tuple(model(x).shape))
ours = model[0].macs(32, 32) + model[2].macs(16, 16) + model[3].macs(16, 16) + model[4].macs(16, 16)
print(f"MACs: blocks say {ours}, fvcore says {fvcore_macs(model, (3, 32, 32))}")

# 2. Dynamic convolution's attention temperature: a trainer anneals it 30 -> 1 over the first epochs.
for epoch in (0.0, 0.5, 1.0):
    set_temperature(model, temperature_at(epoch, anneal_epochs=1.0))
    print(f"epoch {epoch}: temperature {model[0].temperature:.1f}, attention {[round(v, 3) for v in model[0].attention(x[:1])[0].tolist()]}")

# 3. DyHead over a three-level pyramid: same shapes out; deformable conv counted by our fvcore handle.
head = DyHeadBlock(16, num_levels=3)
pyramid = [torch.randn(1, 16, s, s) for s in (16, 8, 4)]
print("dyhead", [tuple(f.shape) for f in head(pyramid)],
      "MACs", head.macs([(16, 16), (8, 8), (4, 4)]), "fvcore", fvcore_macs(head, inputs=pyramid))

# 4. The spaces: FLOPs range, a sampled network, its FLOPs from the table and from fvcore.
for name, kwargs in [("micronet", {}), ("focalnet", {}), ("mbv3", {"dynamic": True}), ("dyhead", {})]:
    space = get_space(name, **kwargs)
    arch = space.sample(seed=0)
    print(f"{name:9s} {space.min_flops() / 1e6:6.2f}M to {space.max_flops() / 1e6:6.2f}M MACs; sample "
          f"{space.flops(arch) / 1e6:.2f}M (fvcore {fvcore_macs(space.build(arch), space.input_shape) / 1e6:.2f}M)")
