"""The classifier head every classification space ends with."""

from __future__ import annotations

import torch
from torch import nn

from .focal import LayerNorm2d
from .mbv3 import ConvBNAct


class ClassifierHead(nn.Module):
    """Feature map to class logits: 1x1 conv (or channel LayerNorm), global average pool, [hidden linear], [dropout], linear.

    ``last_channels`` given: a 1x1 ``ConvBNAct`` to that width with activation ``act`` (MobileNetV3,
    MicroNet, NAS-Bench-Macro); None: a ``LayerNorm2d`` over the input channels (FocalNet).
    ``hidden``: a linear layer to that width and a hard-swish before the classifier (MobileNetV3);
    ``dropout``: dropout before the classifier (None: no dropout module at all). Modules are created
    in that order, so a space's random initialisation does not depend on which head it uses.
    """

    def __init__(self, in_channels: int, num_classes: int, last_channels: int | None = None,
                 act: str = "hswish", hidden: int | None = None, dropout: float | None = None) -> None:
        super().__init__()
        width = in_channels if last_channels is None else last_channels
        self.conv = None if last_channels is None else ConvBNAct(in_channels, last_channels, 1, act=act)
        self.norm = LayerNorm2d(in_channels) if last_channels is None else None
        self.fc = None if hidden is None else nn.Linear(width, hidden)
        self.act = None if hidden is None else nn.Hardswish(inplace=True)
        self.dropout = None if dropout is None else nn.Dropout(dropout)
        self.classifier = nn.Linear(width if hidden is None else hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (self.norm(x) if self.conv is None else self.conv(x)).mean((2, 3))
        if self.fc is not None:
            x = self.act(self.fc(x))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.classifier(x)
