"""``dnas``: the full-data, full-candidate differentiable baseline that DA-NAS is measured against."""

from __future__ import annotations

from ._base import STRATEGIES
from ._differentiable import DifferentiableSearch


@STRATEGIES.register("dnas")
class DifferentiableNAS(DifferentiableSearch):
    """Same supernet, warm-up, FLOPs penalty and derivation as ``danas``; all classes and candidates throughout."""

    name = "dnas"
