"""Search the mbv3 space with DA-NAS on Fashion-MNIST from Python, then retrain the result.

Run: python examples/search_mbv3.py  (about 2 minutes on 2 CPU cores with these small settings)
"""

from __future__ import annotations

import json

from xsearch.datasets import load_dataset
from xsearch.evaluators import ClassificationEvaluator
from xsearch.search_spaces import format_flops, get_space
from xsearch.strategies import Constraints, ProgressiveDataAdaptedPruning

data = load_dataset("fashion_mnist")  # /usr/share/datasets/fashion-mnist, or root=...
space = get_space("mbv3", num_classes=data.num_classes, in_chans=1, image_size=28)
print(f"{len(space.choices)} searchable layers, FLOPs {format_flops(space.min_flops())} .. "
      f"{format_flops(space.max_flops())}")

strategy = ProgressiveDataAdaptedPruning(epochs=3, warmup_epochs=1, train_samples=6000,
                                         class_fractions=(0.3, 0.6, 1.0), keep_fraction=0.6)
result = strategy.search(space, None, data, Constraints(flops=7_000_000))
for stage in result.history:
    print(f"stage {stage['stage']}: {stage['num_classes']} classes, "
          f"{sum(stage['alive_per_layer'].values())} candidates, {stage['seconds']:.0f}s")
print("found:", json.dumps(result.arch), format_flops(result.flops))

net = space.build(result.arch)  # a plain nn.Module
metrics = ClassificationEvaluator(epochs=1).evaluate(space, result.arch, data)
print(f"test accuracy after 1 epoch: {100 * metrics['test_accuracy']:.2f}%")
print("timm arch_def:", space.to_timm(result.arch))
