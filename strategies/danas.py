"""``danas``: progressive data-adapted pruning (DA-NAS, ECCV 2020), our version.

What we chose where the paper is silent, and why: docs/concepts/danas.md and docs/design.md (the
documentation site's "DA-NAS as implemented" and "Design" pages).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from xsearch.core.errors import SettingError

from ._base import STRATEGIES
from ._differentiable import DifferentiableSearch, Stage


@STRATEGIES.register("danas")
class ProgressiveDataAdaptedPruning(DifferentiableSearch):
    """Easy classes first with every candidate, harder classes added as the candidate set shrinks.

    After a single-path warm-up on all classes, classes are ranked by the per-class held-out
    accuracy of sampled sub-networks (easy first). ``easy_warmup=True`` warms up as the paper does,
    on easy data: one epoch on all classes ranks them, the other warm-up epochs train on the first
    stage's classes only; it saved 10 % of the search time in ``bench search`` but left the supernet
    unable to rank on all classes (inherited accuracy 48-58 % against 69-76 % on Fashion-MNIST, 53-60 %
    against 87-92 % on digits), so it is off by default. Stage ``i`` trains on the easiest ``class_fractions[i]`` of the
    classes; after every stage but the last, each layer keeps its ``keep_fraction`` most probable
    candidates (about 40% pruned per stage). ``epochs`` is split evenly over the stages.
    """

    name = "danas"

    rank_classes = True

    def __init__(self, class_fractions: Sequence[float] = (0.3, 0.6, 1.0), keep_fraction: float = 0.6,
                 easy_warmup: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        fractions = [float(f) for f in class_fractions]
        if not fractions or any(not 0 < f <= 1 for f in fractions) or fractions != sorted(fractions) or fractions[-1] != 1:
            raise SettingError(f"search.class_fractions must rise within (0, 1] and end at 1.0, got {fractions}")
        if not 0 < keep_fraction <= 1:
            raise SettingError(f"search.keep_fraction must be in (0, 1], got {keep_fraction}")
        if self.epochs < len(fractions):
            raise SettingError(f"search.epochs ({self.epochs}) must be at least the number of stages ({len(fractions)})")
        self.class_fractions, self.keep_fraction, self.easy_warmup = fractions, keep_fraction, easy_warmup

    def warmup_split(self) -> tuple[int, int]:
        """One warm-up epoch on all classes (it ranks them), the others on the first stage's classes."""
        total = self.single_path_epochs()
        if not self.easy_warmup or total <= 1 or self.class_fractions[0] >= 1:
            return total, 0
        return 1, total - 1

    def stages(self, num_classes: int) -> list[Stage]:
        n = len(self.class_fractions)
        base, extra = divmod(self.epochs, n)
        out = []
        for i, f in enumerate(self.class_fractions):
            classes = min(num_classes, max(2, math.ceil(f * num_classes)))
            epochs = base + (1 if i >= n - extra else 0)
            out.append(Stage(classes, epochs, self.keep_fraction if i < n - 1 else None))
        return out
