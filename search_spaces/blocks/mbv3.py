"""MobileNetV3 building blocks, each able to report its exact multiply-accumulates.

Every block has ``macs(height, width)``: the MACs of one image of that input size under the
project's FLOPs convention (convolutions and linear layers only, batch norm, activations and
pooling not counted), the same number fvcore's ``conv`` + ``linear`` counters give.
"""

from __future__ import annotations

import torch
from torch import nn

from ._sizes import conv_out_size, make_divisible

ACTIVATIONS = ("relu", "hswish", "dyrelu")


def _activation(name: str, channels: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "hswish":
        return nn.Hardswish(inplace=True)
    if name == "dyrelu":
        from .dynamic import DyReLU

        return DyReLU(channels)
    raise ValueError(f"unknown activation {name!r}; valid: {list(ACTIVATIONS)}")


class ConvBNAct(nn.Sequential):
    """Convolution without bias, batch norm, optional activation.

    ``dynamic=True`` swaps the convolution for a ``DynamicConv2d`` (four kernels mixed per sample);
    ``act="dyrelu"`` swaps the activation for a ``DyReLU``. Both add their attention branches' MACs.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, act: str | None = "hswish", dynamic: bool = False) -> None:
        if dynamic:
            from .dynamic import DynamicConv2d

            conv: nn.Module = DynamicConv2d(in_channels, out_channels, kernel_size, stride, groups=groups)
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                             groups=groups, bias=False)
        layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_channels)]
        if act is not None:
            layers.append(_activation(act, out_channels))
        super().__init__(*layers)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups, self.dynamic = kernel_size, stride, groups, dynamic

    # named views of the Sequential's items (its module tree and state_dict keys stay 0/1/2)
    @property
    def conv(self) -> nn.Module:
        """The convolution: ``nn.Conv2d``, or ``DynamicConv2d`` when ``dynamic``."""
        return self[0]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]

    @property
    def act(self) -> nn.Module | None:
        """The activation, or None for a linear block (a projection)."""
        return self[2] if len(self) > 2 else None

    def macs(self, height: int, width: int) -> int:
        oh = conv_out_size(height, self.kernel_size, self.stride)
        ow = conv_out_size(width, self.kernel_size, self.stride)
        if self.dynamic:
            total = self.conv.macs(height, width)
        else:
            total = oh * ow * self.out_channels * (self.in_channels // self.groups) * self.kernel_size ** 2
        return total + (self.act.macs(oh, ow) if hasattr(self.act, "macs") else 0)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: pool, 1x1 down to ``make_divisible(C/4, 8)``, ReLU, 1x1 up, hard-sigmoid."""

    def __init__(self, channels: int, ratio: float = 0.25) -> None:
        super().__init__()
        self.reduced = make_divisible(channels * ratio, 8)
        self.reduce = nn.Conv2d(channels, self.reduced, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(self.reduced, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid(inplace=True)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.gate(self.expand(self.act(self.reduce(s))))
        return x * s

    def macs(self, height: int, width: int) -> int:
        return 2 * self.channels * self.reduced


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand, kxk depthwise, optional SE, 1x1 project, residual if shapes allow.

    ``dynamic=True`` makes all three convolutions dynamic (DY-MobileNetV3); ``act="dyrelu"`` uses
    DyReLU after the expansion and the depthwise convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, expansion: float,
                 stride: int = 1, se: bool = False, act: str = "hswish", dynamic: bool = False) -> None:
        super().__init__()
        mid = make_divisible(in_channels * expansion, 8) if expansion != 1 else in_channels
        self.expand = (ConvBNAct(in_channels, mid, 1, act=act, dynamic=dynamic) if expansion != 1
                       else nn.Identity())
        self.depthwise = ConvBNAct(mid, mid, kernel_size, stride, groups=mid, act=act, dynamic=dynamic)
        self.se = SqueezeExcite(mid) if se else nn.Identity()
        self.project = ConvBNAct(mid, out_channels, 1, act=None, dynamic=dynamic)
        self.has_residual = stride == 1 and in_channels == out_channels
        self.in_channels, self.out_channels, self.mid_channels = in_channels, out_channels, mid
        self.kernel_size, self.expansion, self.stride, self.use_se = kernel_size, expansion, stride, se
        self.act, self.dynamic = act, dynamic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        return out + x if self.has_residual else out

    def macs(self, height: int, width: int) -> int:
        total = self.expand.macs(height, width) if isinstance(self.expand, ConvBNAct) else 0
        total += self.depthwise.macs(height, width)
        oh = conv_out_size(height, self.kernel_size, self.stride)
        ow = conv_out_size(width, self.kernel_size, self.stride)
        if isinstance(self.se, SqueezeExcite):
            total += self.se.macs(oh, ow)
        return total + self.project.macs(oh, ow)


class DepthwiseSeparable(nn.Module):
    """Depthwise kxk + BN + act, then 1x1 projection + BN; residual when stride 1 and widths match."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 act: str = "hswish") -> None:
        super().__init__()
        self.depthwise = ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels, act=act)
        self.project = ConvBNAct(in_channels, out_channels, 1, act=None)
        self.has_residual = stride == 1 and in_channels == out_channels
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(x))
        return out + x if self.has_residual else out

    def macs(self, height: int, width: int) -> int:
        oh = conv_out_size(height, self.kernel_size, self.stride)
        ow = conv_out_size(width, self.kernel_size, self.stride)
        return self.depthwise.macs(height, width) + self.project.macs(oh, ow)
