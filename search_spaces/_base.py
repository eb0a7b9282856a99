"""The search-space contract: named choices over a chain of layers, a fixed stem and head."""

from __future__ import annotations

import copy
import inspect
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from xsearch.core.errors import UserError

from .blocks.mbv3 import conv_out_size

Arch = dict[str, str]
SKIP = "skip"
COSTS = ("flops", "latency")  # what a constraint can limit: MACs per image, predicted milliseconds per call


@dataclass(frozen=True)
class Constraints:
    """Hard limits on a network: ``flops`` (MACs for one image) and ``latency`` (milliseconds, as the space's
    latency table predicts for the runtime it was measured on); None means unconstrained.

    Every space method that takes a budget takes either this or a plain integer, which means ``flops``.
    """

    flops: int | None = None
    latency: float | None = None

    def limits(self) -> dict[str, float]:
        """``{cost: limit}`` of the limits that are set, in ``COSTS`` order."""
        return {k: getattr(self, k) for k in COSTS if getattr(self, k) is not None}

    def describe(self) -> str:
        parts = [f"{format_flops(self.flops)} MACs" if self.flops is not None else "",
                 f"{self.latency:g} ms" if self.latency is not None else ""]
        return " and ".join(p for p in parts if p) or "none"


def as_constraints(budget: int | Constraints | None) -> Constraints:
    """``budget`` as ``Constraints``: an integer is a FLOPs budget, None no limit."""
    if budget is None:
        return Constraints()
    if isinstance(budget, Constraints):
        return budget
    return Constraints(flops=int(budget))


@dataclass(frozen=True)
class Choice:
    """One searchable layer: its label in an arch dict and its option names, in table order."""

    label: str
    options: tuple[str, ...]


class PlannedLayer(NamedTuple):
    """Where one searchable layer of a chain sits: widths, stride and input size (square)."""

    in_channels: int
    out_channels: int
    stride: int
    size: int

    @property
    def keeps_shape(self) -> bool:
        """Stride 1 and equal widths: the layer may be skipped (depth search) or be residual."""
        return self.stride == 1 and self.in_channels == self.out_channels


class ChainNetwork(nn.Module):
    """A standalone network: ``head(layers(stem(x)))``. Skipped layers are ``nn.Identity``."""

    def __init__(self, stem: nn.Module, layers: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.layers = nn.ModuleList(layers)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class FeatureNetwork(nn.Module):
    """A chain network's stem and layers up to its last feature level (no head): ``forward(x)`` gives the
    NCHW outputs of the level layers, in increasing stride.

    Module names match ``ChainNetwork`` (``stem``, ``layers.<i>``), so a ChainNetwork's state dict
    without the head and the layers after the last level loads into it. ``out_channels``, ``strides``
    and ``feature_info`` (timm-style dicts ``num_chs``/``reduction``/``module``) describe the levels.
    """

    def __init__(self, stem: nn.Module, layers: list[nn.Module], levels: list[int], info: list[dict]) -> None:
        super().__init__()
        if not levels or len(layers) != levels[-1] + 1 or len(info) != len(levels):
            raise ValueError(f"FeatureNetwork needs layers up to the last level {levels} and one info per level")
        self.stem = stem
        self.layers = nn.ModuleList(layers)
        self.levels = list(levels)
        self.feature_info = [dict(d) for d in info]
        self.out_channels = [d["num_chs"] for d in info]
        self.strides = [d["reduction"] for d in info]

    @classmethod
    def from_network(cls, net: ChainNetwork, levels: list[int], info: list[dict]) -> FeatureNetwork:
        """The feature network of a built ``net`` with its weights (copied: ``net`` is left untouched)."""
        layers = [copy.deepcopy(layer) for layer in net.layers[: levels[-1] + 1]]
        return cls(copy.deepcopy(net.stem), layers, levels, info)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features, wanted = [], set(self.levels)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in wanted:
                features.append(x)
        return features


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class SearchSpace(ABC):
    """An ordered set of named choices with a fixed stem and head.

    Subclasses say what a layer's candidates are (``build_candidate``) and build the fixed parts;
    this base turns that into sampling, building, exact FLOPs/parameter tables and validation.
    Call order: ``__init__`` fills ``self.choices`` and then calls ``self._build_tables()``.
    """

    name: str = ""
    task: str = "classification"  # what the built network predicts; evaluators refuse other tasks
    stem_stride: int = 1  # the stem's output stride; chain spaces whose stem strides set it

    def __init__(self, num_classes: int, in_chans: int, image_size: int) -> None:
        self.num_classes, self.in_chans, self.image_size = num_classes, in_chans, image_size
        self.choices: list[Choice] = []
        self.flops_table: dict[str, dict[str, int]] = {}
        self.params_table: dict[str, dict[str, int]] = {}
        self.fixed_flops = 0
        self.fixed_params = 0
        self.latency_table: dict[str, dict[str, float]] | None = None  # ms per option; see ``use_latency``
        self.fixed_latency = 0.0
        self.latency_source: dict[str, Any] = {}

    # --- what a subclass provides -------------------------------------------------------
    @abstractmethod
    def build_stem(self) -> nn.Module: ...

    @abstractmethod
    def build_head(self) -> nn.Module: ...

    @abstractmethod
    def build_candidate(self, index: int, option: str) -> nn.Module:
        """The module for option ``option`` of layer ``index`` (``nn.Identity`` for a skip)."""

    @abstractmethod
    def fixed_macs(self) -> int:
        """MACs of the stem and head for one image."""

    @abstractmethod
    def candidate_macs(self, index: int, module: nn.Module) -> int:
        """MACs of one candidate module at layer ``index`` for one image."""

    def stem_macs(self) -> int:
        """MACs of the stem alone for one image (part of ``fixed_macs``); override where the stem has no ``macs``."""
        return self.build_stem().macs(self.image_size, self.image_size)

    def to_timm(self, arch: Arch) -> list[list[str]] | None:
        """timm ``arch_def`` block strings for ``arch``, or None where the blocks have no timm form."""
        return None

    # --- provided -----------------------------------------------------------------------
    @property
    def space_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this space with ``get_space(name, **kwargs)`` (JSON-ready).

        Read from the constructor's signature: a subclass stores every argument under its own name
        (sequences come back as lists).
        """
        names = [p.name for p in inspect.signature(type(self)).parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        values = {name: getattr(self, name) for name in names}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.image_size, self.image_size)

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.choices]

    def _plan_layers(self, channels: int, size: int, stages: Iterable[tuple[int, int, int]]) -> None:
        """Fill ``plan`` (one ``PlannedLayer`` per searchable layer), ``final_channels`` and ``final_size``.

        ``stages``: ``(width, stride, depth)`` each, only a stage's first layer striding; ``channels``
        and ``size`` are the stem's output. Sizes follow a 3x3 conv with padding 1, which every
        candidate of the chain spaces matches.
        """
        self.plan: list[PlannedLayer] = []
        for width, stride, depth in stages:
            for j in range(depth):
                s = stride if j == 0 else 1
                self.plan.append(PlannedLayer(channels, width, s, size))
                channels, size = width, conv_out_size(size, 3, s)
        self.final_channels, self.final_size = channels, size

    def _build_tables(self) -> None:
        self.fixed_flops = self.fixed_macs()
        self.fixed_params = count_params(self.build_stem()) + count_params(self.build_head())
        for i, choice in enumerate(self.choices):
            self.flops_table[choice.label] = {}
            self.params_table[choice.label] = {}
            for option in choice.options:
                module = self.build_candidate(i, option)
                self.flops_table[choice.label][option] = self.candidate_macs(i, module)
                self.params_table[choice.label][option] = count_params(module)

    def validate(self, arch: Any) -> Arch:
        """Return ``arch`` if it names one valid option for every choice, else raise UserError."""
        if not isinstance(arch, dict):
            raise UserError(f"an architecture is a dict {{choice label: option}}, got {type(arch).__name__}")
        missing = [c.label for c in self.choices if c.label not in arch]
        extra = sorted(set(arch) - set(self.labels))
        if missing or extra:
            raise UserError(
                f"architecture does not fit space {self.name!r}: missing choices {missing}, "
                f"unknown choices {extra}; valid choices: {self.labels}"
            )
        for c in self.choices:
            if arch[c.label] not in c.options:
                raise UserError(
                    f"option {arch[c.label]!r} is not valid for {c.label!r} in space {self.name!r}; "
                    f"valid options: {list(c.options)}"
                )
        return {c.label: arch[c.label] for c in self.choices}

    def sample(self, seed: int | None = None, max_flops: int | Constraints | None = None) -> Arch:
        """A uniformly random architecture (a JSON-ready dict), optionally within a budget (a FLOPs budget or
        ``Constraints``): rejection sampling, then, when the budget is tight, a walk down to cheaper options."""
        rng = random.Random(seed)
        budget = as_constraints(max_flops)
        self.check_budget(budget)
        limits = budget.limits()
        for _ in range(10_000):
            arch = {c.label: rng.choice(c.options) for c in self.choices}
            if not limits or self.fits(arch, budget):
                return arch
        # rejection failed: the budget is tight; walk down to the cheapest options instead, the most
        # over-budget cost first (with FLOPs alone, the layers in decreasing MACs)
        arch = {c.label: rng.choice(c.options) for c in self.choices}
        for kind in sorted(limits, key=lambda k: -self.cost(k, arch) / limits[k]):
            _, table = self.cost_table(kind)
            for c in sorted(self.choices, key=lambda c: -table[c.label][arch[c.label]]):
                if self.cost(kind, arch) <= limits[kind]:
                    break
                arch[c.label] = min(c.options, key=lambda o: table[c.label][o])
        if not self.fits(arch, budget):
            raise UserError(f"no architecture of space {self.name!r} found within {budget.describe()} (each limit "
                            f"alone can be met, both together were not); loosen one of the constraints")
        return arch

    def flops(self, arch: Arch) -> int:
        """Exact MACs of ``build(arch)`` for one image (convolutions and linear layers), from the table."""
        arch = self.validate(arch)
        return self.fixed_flops + sum(self.flops_table[k][v] for k, v in arch.items())

    def params(self, arch: Arch) -> int:
        """Exact number of parameters of ``build(arch)``, from the table."""
        arch = self.validate(arch)
        return self.fixed_params + sum(self.params_table[k][v] for k, v in arch.items())

    def min_flops(self) -> int:
        return self.fixed_flops + sum(min(self.flops_table[c.label][o] for o in c.options) for c in self.choices)

    def max_flops(self) -> int:
        return self.fixed_flops + sum(max(self.flops_table[c.label][o] for o in c.options) for c in self.choices)

    # --- latency and budgets over several costs --------------------------------------------
    def use_latency(self, fixed_ms: float, table: dict[str, dict[str, float]], source: dict[str, Any]) -> None:
        """Predict latency with ``fixed_ms + sum(table[label][option])`` (milliseconds; the latency table's
        calibrated per-layer terms, see ``xsearch.core.latency``). ``source`` says where it was measured."""
        for c in self.choices:
            missing = [o for o in c.options if o not in table.get(c.label, {})]
            if missing:
                raise UserError(f"the latency table has no time for {c.label!r} options {missing} of space "
                                f"{self.name!r}; build one for this space with `xsearch latency table space={self.name}`")
        self.fixed_latency = float(fixed_ms)
        self.latency_table = {c.label: {o: float(table[c.label][o]) for o in c.options} for c in self.choices}
        self.latency_source = dict(source)

    def latency(self, arch: Arch) -> float:
        """Predicted milliseconds of ``build(arch)`` per call on the latency table's runtime and machine."""
        arch = self.validate(arch)
        if self.latency_table is None:
            raise UserError(f"space {self.name!r} has no latency table: a latency constraint needs one "
                            "(latency.table=FILE, made by `xsearch latency table space=NAME`)")
        return self.fixed_latency + sum(self.latency_table[k][v] for k, v in arch.items())

    def cost_table(self, kind: str) -> tuple[float, dict[str, dict[str, float]]]:
        """``(fixed, {label: {option: cost}})`` of ``kind`` in ``COSTS``: a network costs fixed + its options' sum."""
        if kind == "flops":
            return self.fixed_flops, self.flops_table
        if kind == "latency":
            self.latency({c.label: c.options[0] for c in self.choices})  # the error when there is no table
            return self.fixed_latency, self.latency_table
        raise ValueError(f"unknown cost {kind!r}; valid: {COSTS}")

    def cost(self, kind: str, arch: Arch) -> float:
        return self.flops(arch) if kind == "flops" else self.latency(arch)

    def min_cost(self, kind: str) -> float:
        fixed, table = self.cost_table(kind)
        return fixed + sum(min(table[c.label][o] for o in c.options) for c in self.choices)

    def fits(self, arch: Arch, budget: int | Constraints | None) -> bool:
        """Whether ``arch`` is within every limit of ``budget`` (a FLOPs budget or ``Constraints``)."""
        return all(self.cost(k, arch) <= limit for k, limit in as_constraints(budget).limits().items())

    def violation(self, arch: Arch, budget: int | Constraints | None) -> float:
        """``max(cost / limit - 1)`` over the limits of ``budget``: positive over it, -1 without limits."""
        limits = as_constraints(budget).limits()
        return max((self.cost(k, arch) / limit - 1.0 for k, limit in limits.items()), default=-1.0)

    def restrict(self, options: dict[str, list[str]]) -> SearchSpace:
        """This space with each choice narrowed to ``options[label]`` (same layers, tables and builders).

        A search over what survives pruning uses it: sampling, mutation and validation then only
        see the listed options, and ``build``/``flops`` give what the full space gives.
        """
        narrowed = []
        for c in self.choices:
            keep = [o for o in c.options if o in set(options.get(c.label, c.options))]
            if not keep:
                raise ValueError(f"restrict: no option of {c.label!r} left; valid: {list(c.options)}")
            narrowed.append(Choice(c.label, tuple(keep)))
        view = copy.copy(self)
        view.choices = narrowed
        return view

    def check_budget(self, max_flops: int | Constraints | None) -> None:
        """Raise UserError when no architecture of the space fits a limit of the budget (FLOPs or ``Constraints``)."""
        budget = as_constraints(max_flops)
        if budget.flops is not None and budget.flops < self.min_flops():
            raise UserError(
                f"FLOPs budget {format_flops(budget.flops)} is below the smallest network of space "
                f"{self.name!r} ({format_flops(self.min_flops())} = {self.min_flops()} MACs); "
                f"raise constraints.flops to at least that, or shrink the space (e.g. space.width_mult)."
            )
        if budget.latency is not None and budget.latency < self.min_cost("latency"):
            raise UserError(
                f"latency budget {budget.latency:g} ms is below the fastest network of space {self.name!r} "
                f"({self.min_cost('latency'):.3g} ms predicted on {self.latency_source.get('runtime', '?')}); raise "
                f"constraints.latency to at least that, or shrink the space (e.g. space.width_mult)."
            )

    def build(self, arch: Arch) -> ChainNetwork:
        """A standalone ``nn.Module`` for ``arch``, freshly initialised."""
        arch = self.validate(arch)
        layers = [self.build_candidate(i, arch[c.label]) for i, c in enumerate(self.choices)]
        return ChainNetwork(self.build_stem(), layers, self.build_head())


    # --- multi-scale features for downstream tasks (detection, segmentation) --------------
    def _check_chain(self) -> None:
        if self.task != "classification" or not hasattr(self, "plan"):
            raise UserError(f"space {self.name!r} ({self.task}) is not a classification chain of layers: "
                            f"it has no backbone feature levels (build_features needs a chain space, e.g. mbv3)")

    def layer_strides(self) -> list[int]:
        """Output stride of each layer: the stem's stride times the layer strides so far."""
        self._check_chain()
        strides, stride = [], self.stem_stride
        for layer in self.plan:
            stride *= layer.stride
            strides.append(stride)
        return strides

    def feature_levels(self) -> list[int]:
        """Indices (into self.plan / the layers) of the layers whose outputs are the feature levels: the last layer
        at each of the last three distinct output strides of the chain (fewer when the chain has fewer), in increasing
        stride."""
        strides = self.layer_strides()
        last = {s: i for i, s in enumerate(strides)}  # the last layer of each stride, in increasing stride
        return sorted(last.values())[-3:]

    def feature_info(self) -> list[dict]:
        """timm-style level descriptions: ``[{"num_chs": C, "reduction": stride, "module": "layers.<i>"}, ...]``."""
        strides = self.layer_strides()
        return [{"num_chs": self.plan[i].out_channels, "reduction": strides[i], "module": f"layers.{i}"}
                for i in self.feature_levels()]

    def build_features(self, arch: Arch) -> FeatureNetwork:
        """stem + the layers up to the last level (head dropped), freshly initialised; forward(x) -> list of NCHW
        tensors, one per level (``feature_info``), each ``ceil(image_size / reduction)`` pixels square.

        At ``image_size=128``: ``mbv3`` gives strides 4, 8, 16 (widths 24/40/112 x ``width_mult`` at the default 8 layers);
        ``micronet`` and ``focalnet`` 2, 4, 8 (micronet 32/48/128, focalnet 24/48/96, x ``width_mult``;
        ``nasbench_macro`` at 32 px: 2, 4, 8 with 64/128/256).
        A skipped level layer passes its input on (same shape). UserError for a space without a chain
        of layers (``dyhead``).
        """
        arch = self.validate(arch)
        levels = self.feature_levels()
        layers = [self.build_candidate(i, arch[c.label]) for i, c in enumerate(self.choices[: levels[-1] + 1])]
        return FeatureNetwork(self.build_stem(), layers, levels, self.feature_info())

    def features_from(self, net: ChainNetwork) -> FeatureNetwork:
        """The feature network of ``net`` (built by this space), reusing its weights (copied)."""
        return FeatureNetwork.from_network(net, self.feature_levels(), self.feature_info())

    def feature_flops(self, arch: Arch) -> int:
        """Exact MACs of build_features(arch) for one image of self.input_shape, from the tables (stem + layers up to
        the last level), equal to fvcore's count."""
        arch = self.validate(arch)
        last = self.feature_levels()[-1]
        return self.stem_macs() + sum(self.flops_table[c.label][arch[c.label]] for c in self.choices[: last + 1])


def format_flops(value: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return str(int(value))
