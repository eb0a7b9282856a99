"""Input-dependent operators: dynamic convolution and dynamic ReLU (Chen et al. 2020).

Both compute a few coefficients per image from a globally pooled feature and use them to pick
a per-image kernel (``DynamicConv2d``) or a per-image piecewise-linear activation (``DyReLU``).
Like the other blocks, each has ``macs(height, width)``: the MACs fvcore counts for one image
under the project's convention (convolutions, linear layers and matrix products only).

Trainers anneal the attention temperature of dynamic convolutions through
``xsearch.core.training.set_temperature`` and ``temperature_at`` (re-exported here), which
duck-type on the ``anneal_temperature`` class attribute, so the shared training code below the
spaces never imports these classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xsearch.core.training import set_temperature, temperature_at

from ._sizes import conv_out_size

__all__ = ["DyReLU", "DynamicConv2d", "set_temperature", "temperature_at"]


class DynamicConv2d(nn.Module):
    """K parallel kernels mixed per image by a softmax attention over GAP(x); one conv per batch.

    The per-image kernel ``sum_k pi_k W_k`` is one matrix product (attention @ stacked kernels),
    and the whole batch runs as a single grouped convolution with the batch folded into the
    groups, so the cost over a static conv is the tiny attention branch plus the aggregation.
    """

    anneal_temperature = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, num_kernels: int = 4, temperature: float = 30.0, bias: bool = False,
                 reduction: int = 4) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} "
                             f"and out_channels={out_channels}")
        if num_kernels < 1:
            raise ValueError(f"num_kernels must be >= 1, got {num_kernels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.num_kernels = num_kernels
        # a buffer, so a saved model.pt carries the annealed value (a fresh module starts at 30)
        self.register_buffer("_temperature", torch.tensor(float(temperature)))
        self.hidden = max(4, in_channels // reduction)
        self.fc1 = nn.Linear(in_channels, self.hidden)
        self.fc2 = nn.Linear(self.hidden, num_kernels)
        self.weight = nn.Parameter(torch.empty(num_kernels, out_channels, in_channels // groups,
                                               kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(num_kernels, out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each kernel gets its own nn.Conv2d-style init, so the mixture starts as K distinct convs."""
        fan_in = (self.in_channels // self.groups) * self.kernel_size ** 2
        for k in range(self.num_kernels):
            nn.init.kaiming_uniform_(self.weight.data[k], a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def temperature(self) -> float:
        """The attention softmax temperature (trainers anneal it with ``set_temperature``)."""
        return float(self._temperature)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature.fill_(float(value))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Kernel weights pi of shape (batch, num_kernels): softmax(fc2(relu(fc1(GAP(x)))) / temperature)."""
        z = self.fc2(F.relu(self.fc1(x.mean((2, 3)))))
        return torch.softmax(z / self._temperature.to(z.dtype), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k, out, ks = self.num_kernels, self.out_channels, self.kernel_size
        attn = self.attention(x)
        weight = (attn @ self.weight.view(k, -1)).view(b * out, c // self.groups, ks, ks)
        bias = (attn @ self.bias).view(b * out) if self.bias is not None else None
        y = F.conv2d(x.reshape(1, b * c, h, w), weight, bias, self.stride, ks // 2, 1, b * self.groups)
        return y.view(b, out, y.shape[-2], y.shape[-1])

    def macs(self, height: int, width: int) -> int:
        oh = conv_out_size(height, self.kernel_size, self.stride)
        ow = conv_out_size(width, self.kernel_size, self.stride)
        kernel_numel = self.out_channels * (self.in_channels // self.groups) * self.kernel_size ** 2
        total = self.in_channels * self.hidden + self.hidden * self.num_kernels  # attention branch
        total += self.num_kernels * kernel_numel  # kernel aggregation
        if self.bias is not None:
            total += self.num_kernels * self.out_channels
        return total + oh * ow * kernel_numel

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, groups={self.groups}, num_kernels={self.num_kernels}, "
                f"temperature={self.temperature}, bias={self.bias is not None}")


class DyReLU(nn.Module):
    """DyReLU-B: per-image, per-channel ``y_c = max_k(a_k,c * x_c + b_k,c)`` with coefficients from GAP.

    The last linear layer is zero-initialised, so the residuals start at exactly 0 and the
    activation starts as exactly ReLU (a = (1, 0, ...), b = 0); training then learns how far
    to move away from it, bounded by ``lambda_a`` and ``lambda_b``.
    Coefficient layout of the last layer's output: (2, num_pieces, channels), slopes then offsets.
    """

    def __init__(self, channels: int, reduction: int = 4, num_pieces: int = 2, lambda_a: float = 1.0,
                 lambda_b: float = 0.5, hard: bool = False) -> None:
        super().__init__()
        if num_pieces < 1:
            raise ValueError(f"num_pieces must be >= 1, got {num_pieces}")
        self.channels, self.num_pieces = channels, num_pieces
        self.lambda_a, self.lambda_b, self.hard = float(lambda_a), float(lambda_b), hard
        self.hidden = max(4, channels // reduction)
        self.fc1 = nn.Linear(channels, self.hidden)
        self.fc2 = nn.Linear(self.hidden, 2 * num_pieces * channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        init_a = torch.zeros(num_pieces)
        init_a[0] = 1.0
        self.register_buffer("init_a", init_a, persistent=False)

    def coefficients(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slopes ``a`` and offsets ``b``, each (batch, num_pieces, channels), from GAP of ``source``."""
        z = self.fc2(F.relu(self.fc1(source.mean((2, 3)))))
        r = 2.0 * (F.hardsigmoid(z) if self.hard else torch.sigmoid(z)) - 1.0
        r = r.view(-1, 2, self.num_pieces, self.channels)
        a = self.init_a.to(r.dtype).view(1, -1, 1) + self.lambda_a * r[:, 0]
        b = self.lambda_b * r[:, 1]
        return a, b

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the activation to ``x``; coefficients come from ``context`` when given, else from ``x``."""
        a, b = self.coefficients(x if context is None else context)
        y = x.unsqueeze(1) * a[..., None, None] + b[..., None, None]
        return y.amax(dim=1)

    def macs(self, height: int, width: int) -> int:
        return self.channels * self.hidden + self.hidden * 2 * self.num_pieces * self.channels

    def extra_repr(self) -> str:
        return (f"{self.channels}, num_pieces={self.num_pieces}, lambda_a={self.lambda_a}, "
                f"lambda_b={self.lambda_b}, hard={self.hard}")
