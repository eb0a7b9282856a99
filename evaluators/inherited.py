"""``InheritedWeightsEvaluator``: an architecture's held-out accuracy with a trained supernet's weights.

No training per architecture: the supernet runs the architecture's path (``set_arch``), its
batch-norm statistics are re-estimated on training batches (without that, the statistics were
measured under a different path mix and the accuracy ranks nothing), and it is scored on held-out
training images. This is how one-shot methods (SPOS) rank candidates; it is cheap and biased, and
``xsearch bench ranking`` measures how well it ranks against stand-alone training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ._base import Evaluator
from .tasks import CLASSIFICATION, Task


class InheritedWeightsEvaluator(Evaluator):
    """Score = the task's metric of ``supernet`` on ``val_idx`` along ``arch``'s path, after BN recalibration on ``calib_idx``.

    ``task`` and ``model``: what the supernet is scored as (default: a classifier, the supernet itself);
    a downstream task passes its model around the supernet (e.g. a detector on its features).
    """

    name = "inherited"
    reports_accuracy = False

    def __init__(self, supernet: Any, calib_idx: torch.Tensor, val_idx: torch.Tensor, batch_size: int = 128,
                 recalibration_batches: int = 10, device: str | torch.device = "cpu", task: Task = CLASSIFICATION,
                 model: Any = None) -> None:
        self.supernet, self.calib_idx, self.val_idx = supernet, calib_idx, val_idx
        self.task, self.model = task, model if model is not None else supernet
        self.batch_size, self.recalibration_batches, self.device = batch_size, recalibration_batches, device

    def evaluate(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0,
                 workdir: Path | None = None) -> dict[str, Any]:
        self.supernet.set_arch(arch)
        generator = torch.Generator().manual_seed(seed)
        batches = self.task.batches(data, self.calib_idx, self.batch_size, shuffle=True, augment=False,
                                    generator=generator, device=self.device)
        if self.recalibration_batches > 0:
            self.task.recalibrate(self.model, batches, max_batches=self.recalibration_batches)
        result = self.task.evaluate(self.model, data, "train", self.val_idx, device=self.device)
        out = {"score": result["score"], f"inherited_val_{self.task.metric}": result["score"],
               "val_samples": result["samples"]}
        if "loss" in result:
            out["inherited_val_loss"] = result["loss"]
        return out

    def score(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0,
              report: Any = None) -> dict[str, Any]:  # no per-epoch reports (reports_epochs)
        return self.evaluate(space, arch, data, seed)
