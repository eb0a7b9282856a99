"""``mbv3``: a MobileNetV3-style space with a large candidate set per layer, sized for the input.

Each searchable layer picks kernel 3/5/7 x expansion 3/6 x squeeze-excite off/on (12 inverted
residual candidates), plus ``skip`` where the layer keeps its shape (stride 1, same width), which
makes depth searchable. ``dynamic=True`` adds, per kernel and expansion, a dynamic-convolution
variant (``_dc``: all three convolutions dynamic, four kernels each) and a DyReLU variant (``_dr``:
DyReLU after the expansion and the depthwise convolution), 24 candidates per layer, so a search
chooses between static and dynamic blocks. Stem: 3x3 conv (stride 1 for inputs up to 32 pixels, else 2) and a fixed
depthwise-separable block; then stages of widths 24/40/80/112 (times ``width_mult``), each opening
with a stride-2 layer; head: 1x1 conv, global pool, a hidden linear layer and the classifier,
as in MobileNetV3.

Feature levels (``build_features``): the last layer at each of the last three output strides; at
``image_size=128`` (stem stride 2) strides 4, 8, 16 with 24/40/112 channels (x ``width_mult``, 8 layers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from torch import nn

from xsearch.core.errors import SettingError, UserError

from ._base import SKIP, Arch, Choice, Constraints, SearchSpace, as_constraints, format_flops
from ._registry import SPACES
from .blocks import ClassifierHead, ConvBNAct, DepthwiseSeparable, InvertedResidual, conv_out_size, make_divisible

STAGE_WIDTHS = (24, 40, 80, 112)
STAGE_STRIDES = (2, 2, 2, 1)


VARIANTS = ("", "se", "dc", "dr")  # plain, squeeze-excite, dynamic convolution, DyReLU


def option_name(kernel_size: int, expansion: int, variant: str = "") -> str:
    """(5, 6, 'se') -> 'k5_e6_se'."""
    return f"k{kernel_size}_e{expansion}" + (f"_{variant}" if variant else "")


def parse_option(option: str) -> tuple[int, int, str]:
    """'k5_e6_se' -> (5, 6, 'se'); 'k3_e3' -> (3, 3, '')."""
    parts = option.split("_")
    return int(parts[0][1:]), int(parts[1][1:]), parts[2] if len(parts) > 2 else ""


def candidate_block(cin: int, cout: int, stride: int, option: str, act: str = "hswish") -> nn.Module:
    """The inverted residual an option names (``act`` for every variant but DyReLU's)."""
    k, e, variant = parse_option(option)
    return InvertedResidual(cin, cout, k, e, stride, se=variant == "se", dynamic=variant == "dc",
                            act="dyrelu" if variant == "dr" else act)


class PaperBlock(NamedTuple):
    """One inverted residual of MobileNetV3-Large: kernel, expansion (exp size / input width), width, stride, SE."""

    kernel: int
    expansion: float
    width: int
    stride: int
    se: bool


# MobileNetV3-Large (Howard et al., "Searching for MobileNetV3", ICCV 2019, Table 1), the blocks after
# the 3x3 stem conv; the first (k3, e1, 16) is the fixed depthwise-separable block of this space's stem.
MBV3_LARGE_BLOCKS = (
    PaperBlock(3, 1, 16, 1, False),
    PaperBlock(3, 4, 24, 2, False), PaperBlock(3, 3, 24, 1, False),
    PaperBlock(5, 3, 40, 2, True), PaperBlock(5, 3, 40, 1, True), PaperBlock(5, 3, 40, 1, True),
    PaperBlock(3, 6, 80, 2, False), PaperBlock(3, 2.5, 80, 1, False), PaperBlock(3, 2.3, 80, 1, False),
    PaperBlock(3, 2.3, 80, 1, False),
    PaperBlock(3, 6, 112, 1, True), PaperBlock(3, 6, 112, 1, True),
    PaperBlock(5, 6, 160, 2, True), PaperBlock(5, 6, 160, 1, True), PaperBlock(5, 6, 160, 1, True),
)


def mbv3_large_stages(widths: Sequence[int] = STAGE_WIDTHS) -> list[list[PaperBlock]]:
    """MobileNetV3-Large's blocks of each width in ``widths``, the 160 blocks appended to the last stage.

    The default: [[24, 24], [40, 40, 40], [80, 80, 80, 80], [112, 112, 160, 160, 160]] (by width).
    """
    stages = [[b for b in MBV3_LARGE_BLOCKS if b.width == w] for w in widths]
    stages[-1] += [b for b in MBV3_LARGE_BLOCKS if b.width > widths[-1]]
    return stages


def nearest(value: float, allowed: Sequence[int]) -> int:
    """The element of ``allowed`` closest to ``value`` (the first on a tie): 4 -> 3 and 2.3 -> 3 of (3, 6)."""
    return min(allowed, key=lambda a: abs(a - value))


def shrink_to_budget(space: SearchSpace, arch: Arch, max_flops: int | Constraints | None,
                     changes: Callable[[int, str], Sequence[str | None]]) -> Arch:
    """``arch`` made to fit ``max_flops`` (a FLOPs budget or ``Constraints``) by single-layer changes, as a designer
    would thin a network.

    ``changes(index, option)`` lists the options layer ``index`` may change to from ``option``, one
    slot per kind of change (None where that change does not apply), in the order a designer
    reaches for them (for ``mbv3``: narrower expansion, smaller kernel, SE off, and dropping the
    layer only as the last resort). Each step applies a change of the earliest kind still
    available, among those the one saving the most MACs (ties: the earlier layer); under a latency budget the
    one saving the most predicted milliseconds (with both budgets, of the cost most over its limit); when the
    designer's changes save nothing more (a measured table need not follow FLOPs), any single-layer change to a
    cheaper option, the one saving the most. Untouched
    when it already fits; UserError (the space's ``check_budget``) when the budget is below the space's smallest
    network.
    """
    budget = as_constraints(max_flops)
    space.check_budget(budget)
    arch = space.validate(dict(arch))
    while not space.fits(arch, budget):
        limits = budget.limits()
        kind = max((k for k in limits if space.cost(k, arch) > limits[k]), key=lambda k: space.cost(k, arch) / limits[k])
        _, tables = space.cost_table(kind)
        best: tuple[tuple[int, float, int], str, str] | None = None
        for i, choice in enumerate(space.choices):
            table, old = tables[choice.label], arch[choice.label]
            for slot, new in enumerate(changes(i, old)):
                if new is None or new == old or new not in choice.options or table[old] - table[new] <= 0:
                    continue
                key = (-slot, table[old] - table[new], -i)
                if best is None or key > best[0]:
                    best = (key, choice.label, new)
        if best is None:  # the designer's changes save nothing more (a measured table need not follow FLOPs):
            # the single-layer change to any cheaper option that saves the most
            for i, choice in enumerate(space.choices):
                table, old = tables[choice.label], arch[choice.label]
                for new in choice.options:
                    key = (0, table[old] - table[new], -i)
                    if table[old] - table[new] > 0 and (best is None or key > best[0]):
                        best = (key, choice.label, new)
        if best is None:  # no layer has a cheaper option left: never after check_budget
            raise UserError(f"the hand-designed network of space {space.name!r} cannot shrink within "
                            f"{budget.describe()} (it stops at {format_flops(space.flops(arch))} MACs"
                            + (f", {space.latency(arch):.3g} ms" if budget.latency is not None else "")
                            + f"); raise constraints.{kind}")
        arch[best[1]] = best[2]
    return arch


def split_layers(num_layers: int, num_stages: int) -> list[int]:
    """Spread ``num_layers`` over stages, later stages taking the remainder: 8 over 4 -> [2, 2, 2, 2]."""
    base, extra = divmod(num_layers, num_stages)
    return [base + (1 if i >= num_stages - extra else 0) for i in range(num_stages)]


@SPACES.register("mbv3")
class MobileNetV3Space(SearchSpace):
    """MobileNetV3 inverted residuals with searchable kernel, expansion, SE and depth."""

    name = "mbv3"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 28,
                 width_mult: float = 1.0, num_layers: int = 8, dropout: float = 0.2,
                 dynamic: bool = False, act: str = "hswish") -> None:
        super().__init__(num_classes, in_chans, image_size)
        if num_layers < len(STAGE_WIDTHS):
            raise SettingError(f"num_layers must be at least {len(STAGE_WIDTHS)} (one per stage), got {num_layers}")
        if width_mult <= 0:
            raise SettingError(f"width_mult must be positive, got {width_mult}")
        if act not in ("hswish", "relu"):
            raise SettingError(f"act must be 'hswish' or 'relu' (DyReLU is the _dr candidates with dynamic=true), got {act!r}")
        self.width_mult, self.num_layers, self.dropout, self.dynamic = width_mult, num_layers, dropout, bool(dynamic)
        self.act = act
        self.stem_channels = make_divisible(16 * width_mult)
        self.stem_stride = 1 if image_size <= 32 else 2
        self.last_channels = make_divisible(384 * width_mult)
        self.head_hidden = 512
        widths = [make_divisible(w * width_mult) for w in STAGE_WIDTHS]
        depths = split_layers(num_layers, len(STAGE_WIDTHS))
        self._plan_layers(self.stem_channels, conv_out_size(image_size, 3, self.stem_stride),
                          zip(widths, STAGE_STRIDES, depths))
        variants = VARIANTS if self.dynamic else VARIANTS[:2]
        ir_options = tuple(option_name(k, e, v) for k in (3, 5, 7) for e in (3, 6) for v in variants)
        for i, layer in enumerate(self.plan):
            self.choices.append(Choice(f"layer{i + 1}", ir_options + ((SKIP,) if layer.keeps_shape else ())))
        self._build_tables()

    def build_stem(self) -> nn.Module:
        return nn.Sequential(
            ConvBNAct(self.in_chans, self.stem_channels, 3, self.stem_stride),
            DepthwiseSeparable(self.stem_channels, self.stem_channels, 3),
        )

    def build_head(self) -> nn.Module:
        return ClassifierHead(self.final_channels, self.num_classes, self.last_channels, act="hswish",
                              hidden=self.head_hidden, dropout=self.dropout)

    def build_candidate(self, index: int, option: str) -> nn.Module:
        if option == SKIP:
            return nn.Identity()
        cin, cout, stride, _ = self.plan[index]
        return candidate_block(cin, cout, stride, option, self.act)

    def stem_macs(self) -> int:
        stem = self.build_stem()
        size = conv_out_size(self.image_size, 3, self.stem_stride)
        return stem[0].macs(self.image_size, self.image_size) + stem[1].macs(size, size)

    def fixed_macs(self) -> int:
        head = self.final_size ** 2 * self.final_channels * self.last_channels
        head += self.last_channels * self.head_hidden + self.head_hidden * self.num_classes
        return self.stem_macs() + head

    def candidate_macs(self, index: int, module: nn.Module) -> int:
        size = self.plan[index][3]
        return module.macs(size, size) if isinstance(module, InvertedResidual) else 0

    def hand_designed(self, max_flops: int | None = None) -> Arch:
        """MobileNetV3-Large's block pattern on this space's layers, shrunk to ``max_flops`` if it is over.

        MobileNetV3-Large (Howard et al. 2019, Table 1), the blocks after the 3x3 stem conv (``e`` is
        the exp size over the input width; the first block is this space's fixed stem block)::

            kernel  exp   width  stride  SE      -> option here
            3       1     16     1       -       (the stem's depthwise-separable block)
            3       4     24     2       -       k3_e3
            3       3     24     1       -       k3_e3
            5       3     40     2       yes     k5_e3_se
            5       3     40     1       yes     k5_e3_se
            5       3     40     1       yes     k5_e3_se
            3       6     80     2       -       k3_e6
            3       2.5   80     1       -       k3_e3
            3       2.3   80     1       -       k3_e3
            3       2.3   80     1       -       k3_e3
            3       6     112    1       yes     k3_e6_se
            3       6     112    1       yes     k3_e6_se
            5       6     160    2       yes     k5_e6_se
            5       6     160    1       yes     k5_e6_se
            5       6     160    1       yes     k5_e6_se

        Mapping: this space's stages (24/40/80/112 times ``width_mult``) take the paper's blocks of
        those widths, by position (layer j of a stage takes block j, the stage's last block repeated
        when the stage here is longer). The paper's 160 stage has no stage here: its blocks follow
        the 112 blocks in the last stage (used only when that stage has more than 2 layers), and its
        stride is dropped (a stage strides only at its first layer). Expansion: the nearest of 3 and 6
        (4, 2.5, 2.3 -> 3); kernel and SE as in the paper; never ``skip``, never a dynamic variant;
        the paper's ReLU/hard-swish split is not mapped (one ``act`` for all blocks here). The
        default space (8 layers): k3_e3 k3_e3 | k5_e3_se k5_e3_se | k3_e6 k3_e3 | k3_e6_se k3_e6_se.

        With ``max_flops`` and the pattern over it, one layer changes at a time until the network fits,
        the kinds of change in a fixed order (``shrink_to_budget``): first e6 -> e3, then kernel -> 3,
        then SE off, and ``skip`` (where the layer may skip) only when no other change is left. A kind
        is used up before the next starts; within a kind the change saving the most MACs goes first
        (ties: the earlier layer). So a budget just under the pattern only narrows the costliest e6
        layers, and layers are dropped only once every layer is k3, e3 and without SE. A pattern
        under the budget is left as it is (never grown). UserError when the budget is below the
        space's smallest network.
        """
        stages = mbv3_large_stages()
        arch: Arch = {}
        depths = split_layers(self.num_layers, len(STAGE_WIDTHS))
        labels = iter(self.labels)
        for blocks, depth in zip(stages, depths):
            for j in range(depth):
                b = blocks[min(j, len(blocks) - 1)]
                arch[next(labels)] = option_name(b.kernel, nearest(b.expansion, (3, 6)), "se" if b.se else "")
        return shrink_to_budget(self, arch, max_flops, self._shrink_changes)

    def _shrink_changes(self, index: int, option: str) -> tuple[str | None, ...]:
        """The options ``hand_designed`` may shrink a layer to: e6 -> e3, kernel -> 3, SE off, skip."""
        if option == SKIP:
            return ()
        k, e, variant = parse_option(option)
        return (option_name(k, 3, variant) if e == 6 else None,
                option_name(3, e, variant) if k != 3 else None,
                option_name(k, e) if variant == "se" else None,
                SKIP)

    def to_timm(self, arch: Arch) -> list[list[str]] | None:
        """timm ``arch_def`` (MobileNetV3 builder, hard-swish default act, SE gate hard-sigmoid).

        None when ``arch`` uses a dynamic block (timm has no dynamic convolution or DyReLU) or when
        the blocks use ReLU (timm's builder would need a per-block activation override).
        """
        arch = self.validate(arch)
        if self.act != "hswish" or any(parse_option(o)[2] in ("dc", "dr") for o in arch.values() if o != SKIP):
            return None
        stages: list[list[str]] = [[f"ds_r1_k3_s1_c{self.stem_channels}"]]
        previous_out = None
        for (cin, cout, stride, _), choice in zip(self.plan, self.choices):
            if cout != previous_out:
                stages.append([])
                previous_out = cout
            option = arch[choice.label]
            if option == SKIP:
                continue
            k, e, variant = parse_option(option)
            stages[-1].append(f"ir_r1_k{k}_s{stride}_e{e}_c{cout}" + ("_se0.25" if variant == "se" else ""))
        stages = [s for s in stages if s]
        stages.append([f"cn_r1_k1_s1_c{self.last_channels}"])
        return stages
