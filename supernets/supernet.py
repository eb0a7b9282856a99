"""A weight-sharing supernet over a chain search space."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from ._execution import Execution, PlainExecution
from .fused import FusedExecution
from .mixed import PATH_MODES, MixedLayer
from .shared import SHARING, SharedMixedLayer, can_share
from .shared_dyhead import SharedDyHeadLayer, can_share_dyhead

if TYPE_CHECKING:
    from xsearch.search_spaces import Arch, ChainNetwork, SearchSpace


class Supernet(nn.Module):
    """Stem, one ``MixedLayer`` per choice of the space, head.

    ``arch_parameters()`` are the logits (one vector per layer), ``weight_parameters()`` everything
    else, so a strategy can update them on different data. ``extract(arch)`` returns the standalone
    network of ``space.build(arch)`` carrying the supernet's weights.

    Execution is an object the supernet owns (``execution``, see ``supernets._execution``):
    ``fused=True`` (the default) gives ``FusedExecution()`` (candidates horizontally fused, dynamic
    operators through ``supernets.kernels``; same weights, same results up to float rounding),
    ``fused=False`` gives ``PlainExecution()`` (one candidate at a time, the blocks' own forward).
    An explicit ``execution`` overrides ``fused``; ``set_execution`` or ``supernet.fused = ...``
    switch at any time.

    Weights: ``sharing="none"`` (the default) gives every candidate its own module, and a mixture
    mixes the candidates' outputs. ``sharing="shared"`` holds the static inverted-residual
    candidates of a layer as slices of one widest block (``supernets.shared``: kernel sizes as
    centre crops, expansions as leading channels, SE switched on or off, mixing inside the block),
    so a weighted step costs about one largest candidate; other candidates (``skip``, dynamic
    blocks, projections) keep their own weights, and layers with fewer than two shareable
    candidates stay per-candidate.
    """

    def __init__(self, space: SearchSpace, mode: str = "weighted", fused: bool = True,
                 execution: Execution | None = None, sharing: str = "none") -> None:
        super().__init__()
        if sharing not in SHARING:
            raise ValueError(f"sharing must be one of {list(SHARING)}, got {sharing!r}")
        self.space, self.sharing = space, sharing
        self.stem = space.build_stem()
        layers = []
        for i, c in enumerate(space.choices):
            candidates = [space.build_candidate(i, o) for o in c.options]
            kind = MixedLayer
            if sharing == "shared" and can_share(candidates):
                kind = SharedMixedLayer
            elif sharing == "shared" and can_share_dyhead(candidates):
                kind = SharedDyHeadLayer
            layers.append(kind(c.label, c.options, candidates))
        self.layers = nn.ModuleList(layers)
        self.head = space.build_head()
        # per-layer FLOPs of each candidate, as a buffer so expected_flops runs on the right device
        for layer in self.layers:
            table = space.flops_table[layer.label]
            layer.register_buffer("flops", torch.tensor([float(table[o]) for o in layer.options]))
        self.set_execution(execution if execution is not None else
                           (FusedExecution() if fused else PlainExecution()))
        self.set_mode(mode)

    # --- execution --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    def set_mode(self, mode: str) -> None:
        """Path mode of every mixed layer: weighted, gated, single or fixed (see ``MixedLayer``)."""
        if mode not in PATH_MODES:
            raise ValueError(f"unknown path mode {mode!r}; valid: {PATH_MODES}")
        for layer in self.layers:
            layer.mode = mode
        self.mode = mode

    def set_execution(self, execution: Execution) -> None:
        """Run every mixed layer through ``execution`` and let it swap the operators it runs."""
        self.execution = execution
        for layer in self.layers:
            layer.execution = execution
        execution.install(self)

    @property
    def fused(self) -> bool:
        """True (the default) under a fused execution policy; assign ``False`` for ``PlainExecution()``.

        Assigning ``True`` to a plain supernet installs ``FusedExecution()`` (a fused policy
        already installed is kept, with its settings).
        """
        return self.execution.fused

    @fused.setter
    def fused(self, value: bool) -> None:
        if bool(value) != self.fused:
            self.set_execution(FusedExecution() if value else PlainExecution())

    def set_arch(self, arch: Arch) -> None:
        """Run only the candidates of ``arch`` (path mode ``fixed``)."""
        arch = self.space.validate(arch)
        for layer in self.layers:
            layer.fixed_index = layer.options.index(arch[layer.label])
        self.set_mode("fixed")

    # --- parameters -------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [layer.alpha for layer in self.layers]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    # --- architecture distribution and pruning ---------------------------------------
    def probabilities(self) -> dict[str, dict[str, float]]:
        """Per layer, the softmax probability of each alive option."""
        out = {}
        for layer in self.layers:
            p = layer.probabilities().detach().cpu().tolist()
            out[layer.label] = {o: p[i] for i, o in enumerate(layer.options) if layer.alive[i]}
        return out

    def alive_options(self) -> dict[str, list[str]]:
        return {layer.label: [layer.options[i] for i in layer.alive_indices()] for layer in self.layers}

    def set_alive(self, alive: dict[str, list[str]]) -> None:
        """Keep exactly the listed options of each layer alive (a layer needs at least one)."""
        for layer in self.layers:
            keep = alive[layer.label]
            if not keep:
                raise ValueError(f"layer {layer.label} would have no candidate left")
            unknown = set(keep) - set(layer.options)
            if unknown:
                raise ValueError(f"unknown options {sorted(unknown)} for {layer.label}")
            layer.alive.copy_(torch.tensor([o in keep for o in layer.options]))

    def expected_flops(self) -> torch.Tensor:
        """Expected MACs under the current distribution; differentiable in the logits."""
        total = torch.tensor(float(self.space.fixed_flops), device=self.layers[0].alpha.device)
        for layer in self.layers:
            total = total + (layer.probabilities() * layer.flops).sum()
        return total

    def expected_cost(self, kind: str) -> torch.Tensor:
        """Expected cost ``kind`` (``flops``, or ``latency`` in ms from the space's latency table, as FBNet's
        expected latency) under the current distribution; differentiable in the logits."""
        if kind == "flops":
            return self.expected_flops()
        fixed, table = self.space.cost_table(kind)
        device = self.layers[0].alpha.device
        total = torch.tensor(float(fixed), device=device)
        for layer in self.layers:
            costs = torch.tensor([float(table[layer.label][o]) for o in layer.options], device=device)
            total = total + (layer.probabilities() * costs).sum()
        return total

    def num_alive(self) -> int:
        return int(sum(int(layer.alive.sum()) for layer in self.layers))

    # --- extraction -------------------------------------------------------------------
    def extract(self, arch: Arch) -> ChainNetwork:
        """The standalone network for ``arch`` with the supernet's weights (a copy, on its device and in its dtype)."""
        reference = next(self.parameters())
        net = self.space.build(arch).to(device=reference.device, dtype=reference.dtype)
        arch = self.space.validate(arch)
        net.stem.load_state_dict(self.stem.state_dict())
        net.head.load_state_dict(self.head.state_dict())
        for target, layer in zip(net.layers, self.layers):
            index = layer.options.index(arch[layer.label])
            if isinstance(layer, SharedMixedLayer):
                layer.export(index, target)
            else:
                target.load_state_dict(layer.candidates[index].state_dict())
        return net
