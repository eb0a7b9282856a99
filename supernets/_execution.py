"""How a supernet runs its mixed layers: an execution policy object the supernet owns.

A policy has two jobs. ``run(layer, x, weights, active)`` computes one mixed layer's output, the
sum over ``active`` candidates of ``weights[i] * candidate_i(x)``; ``install(supernet)`` prepares
the supernet's modules for it, by swapping operators for supernet-side subclasses that run other
kernels on the same parameters (``swap_operators``). ``PlainExecution`` runs each candidate's own
forward and swaps every such operator back; ``supernets.fused.FusedExecution`` fuses candidates
horizontally and installs the fused operators. The blocks themselves carry no execution hooks, so a
network built or extracted from the space is always the plain one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar, Protocol

import torch
from torch import nn


class CandidateLayer(Protocol):
    """What a policy needs of the layer it runs: its candidates, indexed as ``active`` counts them.

    ``supernets.mixed.MixedLayer`` is one; a protocol here, and not that class, keeps this module
    below ``mixed``, which imports the policies.
    """

    candidates: nn.ModuleList


class Execution(ABC):
    """An execution policy: ``Supernet(space, execution=...)`` or ``supernet.set_execution(...)``.

    The supernet calls ``install`` once when the policy is set, and each mixed layer calls ``run``
    on every forward. Policies must give the same results as ``PlainExecution`` up to float rounding.
    """

    fused: ClassVar[bool] = False

    @abstractmethod
    def run(self, layer: CandidateLayer, x: torch.Tensor, weights: torch.Tensor | None,
            active: list[int]) -> torch.Tensor:
        """Sum over ``active`` candidates of ``weights[i] * candidate_i(x)`` (unweighted when ``weights`` is None)."""

    def install(self, supernet: nn.Module) -> None:
        """Swap ``supernet``'s operators to the ones this policy runs (the default: the blocks' own)."""
        swap_operators(supernet, {})


class PlainExecution(Execution):
    """One candidate at a time through its own forward: the reference every other policy must match."""

    def run(self, layer: CandidateLayer, x: torch.Tensor, weights: torch.Tensor | None,
            active: list[int]) -> torch.Tensor:
        out = None
        for i in active:
            y = layer.candidates[i](x)
            if isinstance(y, (list, tuple)):  # a feature pyramid (DyHead blocks): mixed level by level
                y = [t * weights[i] for t in y] if weights is not None else list(y)
                out = y if out is None else [a + b for a, b in zip(out, y)]
                continue
            if weights is not None:
                y = y * weights[i]
            out = y if out is None else out + y
        assert out is not None, "a mixed layer needs at least one active candidate"
        return out

    def __repr__(self) -> str:
        return "PlainExecution()"


class SwappedOperator:
    """Mixin of a supernet-side subclass of a block that ``swap_operators`` puts in the block's place.

    ``replaces`` is the block class; instances share the replaced block's parameters, buffers and
    submodules, so the state_dict keys and values are unchanged, and ``backend`` says which kernels
    the subclass's forward runs.
    """

    replaces: ClassVar[type[nn.Module]]
    backend: str


def swap_operators(root: nn.Module, operators: Mapping[type[nn.Module], type[nn.Module]],
                   backend: str = "auto") -> None:
    """Put ``operators[type(block)]`` in place of every such block under ``root``, every other swapped operator back.

    The replacement takes over the block's state as it is (no new parameters, no random draws), so
    swapping in and out any number of times leaves the numbers and the state_dict untouched.
    """
    for parent in list(root.modules()):
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            plain = getattr(type(child), "replaces", type(child))
            target = operators.get(plain, plain)
            if target is type(child) and getattr(child, "backend", backend) == backend:
                continue
            new = target.__new__(target)
            new.__dict__.update(child.__dict__)
            new.__dict__.pop("backend", None)
            if target is not plain:
                new.backend = backend
            parent._modules[name] = new
