"""The evaluator contract: how good an architecture is on one task, under a budget."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from xsearch.core.errors import UserError
from xsearch.core.registry import Registry

EVALUATORS: Registry = Registry("evaluator")


class Evaluator(ABC):
    """Trains and/or scores an architecture.

    Two entry points:
    - ``evaluate``: the final word on a found network (the ``run`` and ``train`` commands call it);
      its metrics hold ``test_accuracy`` when ``reports_accuracy`` is true.
    - ``score``: what a multi-trial search maximizes; its metrics hold ``score``. It must not look
      at the test split when the evaluator trains (stand-alone training scores on held-out training
      images); a table or a proxy has no such split and scores what it reports.
    """

    name = ""
    reports_accuracy = True  # evaluate() returns test_accuracy
    needs_data = True        # False: answers without images (a benchmark table, FLOPs)
    trains = False           # evaluate() trains the network from scratch (its settings are train.*): "retrained"
    data_parallel = False    # its training runs data-parallel under torchrun (one global batch split across processes)
    data_task: str | None = None  # what a loader with a ``task`` setting (data=coco) loads for it; None: the default
    reports_epochs = False   # score(report=...) calls report(epoch, value) after every training epoch (multi-fidelity)

    # --- how the dashboard and the run's summary name what it reports ----------------------
    @property
    def label(self) -> str:
        """The evaluator in study names (``retrained/<space>/<data>/<label>``): its name, with its variant if any."""
        return self.name

    @property
    def metric_name(self) -> str:
        """Its task's metric in words: ``accuracy``, ``box AP``."""
        from .tasks import task_of

        return task_of(self).metric.replace("_ap", " AP").replace("_", " ")

    @property
    def score_name(self) -> str:
        """What ``score`` values are called: a trainer scores on held-out training images, others say their name."""
        return f"held-out {self.metric_name}" if self.trains else f"{self.name} score"

    @property
    def result_name(self) -> str:
        """What ``evaluate``'s headline value is called: test accuracy, or the task's metric on the val split."""
        return "test accuracy" if self.reports_accuracy else f"val {self.metric_name}"

    @abstractmethod
    def evaluate(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0,
                 workdir: Path | None = None) -> dict[str, Any]:
        """Metrics of ``arch`` (at least ``test_accuracy``). With ``workdir`` it checkpoints there and resumes."""

    def check(self, space: Any) -> None:
        """Raise UserError when this evaluator cannot judge architectures of ``space``.

        Default: the space's networks must be classifiers (``space.task``); a detection-head space
        such as ``dyhead`` needs a detection evaluator.
        """
        task = getattr(space, "task", "classification")
        if task != "classification":
            raise UserError(f"space {space.name!r} builds {task} networks; evaluator {self.name!r} judges image "
                            f"classifiers. Use evaluator={task} with data=coco data.root=DIR (make one with `xsearch "
                            f"data fashion-coco DIR`), or pick a classification space (mbv3, micronet, focalnet)")

    def check_data(self, data: Any) -> None:
        """Raise UserError when this evaluator cannot train on ``data``. Default: image classification data."""
        if data is not None and getattr(data, "task", None) == "semantic":
            raise UserError(f"data={data.name} holds semantic label maps; evaluator {self.name!r} judges image "
                            "classifiers. Use evaluator=semantic_segmentation, or a classification dataset "
                            "(data=fashion_mnist, digits, cifar10, imagefolder)")
        if data is not None and hasattr(data, "category_ids"):
            raise UserError(f"data={data.name} holds detection annotations (COCO format); evaluator {self.name!r} "
                            "judges image classifiers. Use evaluator=detection, segmentation or keypoints, or a "
                            "classification dataset (data=fashion_mnist, digits, cifar10, imagefolder)")

    def score(self, space: Any, arch: dict[str, str], data: Any, seed: int = 0, report: Any = None) -> dict[str, Any]:
        """Metrics of ``arch`` for search, with ``score`` (higher is better). Default: test accuracy.

        ``report``: None, or ``report(epoch, value)`` for an evaluator that ``reports_epochs``: called after every
        training epoch with the score at that point, and may raise ``xsearch.core.fidelity.Pruned`` to stop the
        training (``score`` then returns metrics with ``pruned``; see ``ClassificationEvaluator.score``). An
        evaluator that does not report per epoch accepts it and calls nothing.
        """
        metrics = self.evaluate(space, arch, data, seed=seed)
        return {**metrics, "score": metrics["test_accuracy"]}
