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

    ``held_out`` candidates (e.g. ``skip`` while the blocks learn) are alive but left out of the
    weighted and gated mixtures: their probability is 0 there, ``single`` still samples them.

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
        # candidates kept out of the weighted and gated mixtures (still sampled by ``single``, still
        # alive, never pruned by probability): a strategy's setting, not state, so not in the state dict
        self.held_out: frozenset[int] = frozenset()
        self.execution: Execution = PlainExecution()

    def alive_indices(self) -> list[int]:
        return [i for i, a in enumerate(self.alive.tolist()) if a]

    def mixture_indices(self) -> list[int]:
        """Alive candidates that take part in the weighted and gated mixtures (all but ``held_out``)."""
        return [i for i in self.alive_indices() if i not in self.held_out]

    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits over the mixture's candidates (0 for pruned and held-out ones); differentiable."""
        keep = self.alive.clone()
        for i in self.held_out:
            keep[i] = False
        if not bool(keep.any()):  # only held-out candidates left: they share the mass
            keep = self.alive
        logits = self.alpha.masked_fill(~keep, float("-inf"))
        return torch.softmax(logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, active = self.path()
        return self.run(x, weights, active)

    def run(self, x: torch.Tensor, weights: torch.Tensor | None, active: list[int]) -> torch.Tensor:
        """The sum over ``active`` of ``weights[i] * candidate_i(x)`` (unweighted when ``weights`` is None)."""
        return self.execution.run(self, x, weights, active)

    def path(self) -> tuple[torch.Tensor | None, list[int]]:
        """The candidates this forward runs and their weights (None: one candidate, unweighted), per the mode."""
        if self.mode == "weighted":
            mixture = self.mixture_indices() or self.alive_indices()
            if len(mixture) == 1:
                return None, mixture
            return self.probabilities(), mixture
        if self.mode == "gated":
            mixture = self.mixture_indices() or self.alive_indices()
            if len(mixture) == 1:
                return None, mixture
            picked = torch.multinomial(self.probabilities().detach(), 2, replacement=False).tolist()
            weights = torch.zeros_like(self.alpha)
            index = torch.tensor(picked, device=weights.device)
            weights = weights.index_put((index,), torch.softmax(self.alpha[index], 0))
            return weights, sorted(picked)
        if self.mode == "single":
            alive = self.alive_indices()
            return None, [alive[int(torch.randint(len(alive), ()))]]
        if self.mode == "fixed":
            return None, [self.fixed_index]
        raise ValueError(f"unknown path mode {self.mode!r}; valid: {PATH_MODES}")
