"""Weight-sharing supernets over a search space: mixed layers, logits, pruning masks, execution policies."""

from __future__ import annotations

from ._execution import Execution, PlainExecution
from .fused import FusedExecution, fused_batch_norm
from .mixed import PATH_MODES, MixedLayer
from .shared import SHARING, SharedInvertedResidual, SharedMixedLayer
from .supernet import Supernet

__all__ = ["PATH_MODES", "SHARING", "Execution", "FusedExecution", "MixedLayer", "PlainExecution",
           "SharedInvertedResidual", "SharedMixedLayer", "Supernet", "fused_batch_norm"]
