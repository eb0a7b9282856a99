"""A mixed layer: every candidate of one searchable layer, architecture logits and an alive-mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._execution import Execution, PlainExecution

PATH_MODES = ("weighted", "gated", "single", "fixed")


class MixedLayer(nn.Module):
    """Holds candidates, their logits ``alpha`` and the ``alive`` mask that pruning edits.

    Path modes (set by the supernet):
    - ``weighted``: softmax over the alive logits weights every alive candidate (DARTS, FBNet);
    - ``gated``: two alive candidates are drawn from the softmax and weighted by the softmax over
      just those two, so the logits learn from two paths at the cost of two (ProxylessNAS);
    - ``single``: one alive candidate uniformly at random, unweighted (SPOS);
    - ``fixed``: the candidate chosen by ``fixed_index``.

    The candidates run through ``execution`` (the supernet's policy; ``PlainExecution`` alone).
    """

    def __init__(self, label: str, options: Sequence[str], candidates: Sequence[nn.Module]) -> None:
        super().__init__()
        self.label = label
        self.options = tuple(options)
        self.candidates = nn.ModuleList(candidates)
        self.alpha = nn.Parameter(torch.zeros(len(options)))
        self.register_buffer("alive", torch.ones(len(options), dtype=torch.bool))
        self.mode = "weighted"
        self.fixed_index = 0
        self.execution: Execution = PlainExecution()

    def alive_indices(self) -> list[int]:
        return [i for i, a in enumerate(self.alive.tolist()) if a]

    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits over alive candidates (0 for pruned ones); differentiable."""
        logits = self.alpha.masked_fill(~self.alive, float("-inf"))
        return torch.softmax(logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alive = self.alive_indices()
        if self.mode == "weighted":
            if len(alive) == 1:
                return self.execution.run(self, x, None, alive)
            return self.execution.run(self, x, self.probabilities(), alive)
        if self.mode == "gated":
            if len(alive) == 1:
                return self.execution.run(self, x, None, alive)
            picked = torch.multinomial(self.probabilities().detach(), 2, replacement=False).tolist()
            weights = torch.zeros_like(self.alpha)
            index = torch.tensor(picked, device=weights.device)
            weights = weights.index_put((index,), torch.softmax(self.alpha[index], 0))
            return self.execution.run(self, x, weights, sorted(picked))
        if self.mode == "single":
            pick = alive[int(torch.randint(len(alive), ()))]
            return self.execution.run(self, x, None, [pick])
        if self.mode == "fixed":
            return self.execution.run(self, x, None, [self.fixed_index])
        raise ValueError(f"unknown path mode {self.mode!r}; valid: {PATH_MODES}")
