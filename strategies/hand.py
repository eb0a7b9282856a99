"""``hand``: no search, the space's hand-designed network (MobileNetV3-Large's pattern), shrunk to the budget.

The anchor every search is compared with: what a person would pick without searching. The space
says what its hand design is (``space.hand_designed(max_flops)``); this strategy only returns it,
so the run retrains it exactly as it retrains a searched network.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from xsearch.core.errors import UserError

from ._base import STRATEGIES, Constraints, SearchEvents, SearchResult, Strategy


def spaces_with_hand_design() -> list[str]:
    """The registered spaces that define ``hand_designed``."""
    from xsearch.search_spaces import SPACES

    return [name for name in SPACES.names() if callable(getattr(SPACES.get(name), "hand_designed", None))]


@STRATEGIES.register("hand")
class HandDesigned(Strategy):
    """No search: the space's hand-designed network (MobileNetV3-Large's blocks), thinned to fit the budget (FLOPs, latency).

    Deterministic: ``seed`` and ``show_progress`` are taken for the run's sake and change nothing.
    """

    name = "hand"
    needs_data = False  # it queries nothing (the evaluator says for itself whether it needs images)

    def __init__(self, seed: int = 0, show_progress: bool = True) -> None:
        self.seed, self.show_progress = seed, show_progress

    def search(self, space: Any, evaluator: Any, data: Any, constraints: Constraints,
               events: SearchEvents | None = None, checkpoint: Path | None = None) -> SearchResult:
        t0 = time.time()
        design = getattr(space, "hand_designed", None)
        if not callable(design):
            raise UserError(f"strategy=hand needs a space with a hand-designed network; space {space.name!r} has "
                            f"none. Spaces that have one: {', '.join(spaces_with_hand_design())}")
        unconstrained = space.flops(design())
        arch = design(constraints)
        flops = space.flops(arch)
        return SearchResult(arch=arch, flops=flops, params=space.params(arch),
                            metrics={"design": "mobilenetv3-large", "queries": 0,
                                     "unconstrained_flops": unconstrained, "shrunk": flops != unconstrained},
                            history=[], search_seconds=time.time() - t0)
