"""Weight-sharing supernets over a search space: mixed layers, logits, pruning masks, one execution seam."""

from __future__ import annotations

from ._execution import Executor, naive_mixed_forward
from .fused import fused_batch_norm, fused_mixed_forward
from .mixed import PATH_MODES, MixedLayer
from .supernet import Supernet

__all__ = ["PATH_MODES", "Executor", "MixedLayer", "Supernet", "fused_batch_norm", "fused_mixed_forward",
           "naive_mixed_forward"]
