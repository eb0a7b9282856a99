"""Tasks: what a search and an evaluator need to know about the problem a network solves.

A task turns a network body (a standalone ``ChainNetwork`` or a ``Supernet``: anything with
``stem``, ``layers`` and ``head``) into the trainable model, gives its batches, its loss, its
per-class score (DA-NAS ranks classes or categories by it, easy first) and its metric.

- ``ClassificationTask``: the body is the model; cross-entropy; per-class accuracy.
- ``DetectionTask`` (``evaluators.detection``): the body's multi-scale features in a torchvision
  detector; the detector's own losses; per-category box AP through ``COCOeval``.

Strategies ask the evaluator for its task (``evaluator.task``), so a supernet search trains and
scores on whatever the evaluator judges.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from xsearch.core.training import ClassSubset, evaluate, recalibrate_batchnorm, supervised_step


class Task:
    """The interface (see the module doc). ``metric`` names what ``evaluate(...)["score"]`` is."""

    name = ""
    metric = ""

    def model(self, space: Any, body: nn.Module, data: Any) -> nn.Module:
        raise NotImplementedError

    def weight_parameters(self, model: nn.Module, body: Any) -> list[nn.Parameter]:
        """The model's trainable weights: the body's (without architecture logits) then the task's own."""
        own = list(body.weight_parameters()) if hasattr(body, "weight_parameters") else list(body.parameters())
        seen = {id(p) for p in body.parameters()}
        return own + [p for p in model.parameters() if id(p) not in seen]

    def batches(self, data: Any, indices: torch.Tensor, batch_size: int, shuffle: bool = True, augment: bool = True,
                generator: torch.Generator | None = None, device: Any = "cpu",
                classes: list[int] | None = None) -> Iterator[Any]:
        raise NotImplementedError

    def subset_indices(self, data: Any, classes: list[int], indices: torch.Tensor) -> torch.Tensor:
        """The images of ``indices`` that hold any of ``classes`` (0-based)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any, classes: list[int] | None = None) -> tuple[torch.Tensor, dict]:
        """The training loss of one batch (model in train mode) and scalars to report."""
        raise NotImplementedError

    def train_step(self, model: nn.Module, optimizer: Any, scheduler: Any,
                   classes: list[int] | None = None) -> Callable[[Any], tuple[dict[str, float], int]]:
        from xsearch.core.distributed import reduce_metrics
        from xsearch.core.training import optimizer_step

        def step(batch: Any) -> tuple[dict[str, float], int]:
            loss, _ = self.loss(model, batch, classes)
            optimizer_step(loss, optimizer, scheduler, samples=len(batch[1]))
            return reduce_metrics({"train_loss": float(loss.detach())}, len(batch[1]))

        return step

    def recalibrate(self, model: nn.Module, batches: Iterable[Any], max_batches: int = 20) -> None:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, data: Any, split: str, indices: torch.Tensor | None = None,
                 classes: list[int] | None = None, device: Any = "cpu") -> dict[str, Any]:
        """``score`` (higher is better), ``per_class`` (one per class of the data), ``loss`` where defined, ``samples``."""
        raise NotImplementedError


class ClassificationTask(Task):
    """Image classification: the network is the model, cross-entropy, accuracy."""

    name = "classification"
    metric = "accuracy"

    def model(self, space: Any, body: nn.Module, data: Any) -> nn.Module:
        return body

    def weight_parameters(self, model: nn.Module, body: Any) -> list[nn.Parameter]:
        return list(body.weight_parameters()) if hasattr(body, "weight_parameters") else list(body.parameters())

    def batches(self, data: Any, indices: torch.Tensor, batch_size: int, shuffle: bool = True, augment: bool = True,
                generator: torch.Generator | None = None, device: Any = "cpu",
                classes: list[int] | None = None) -> Iterator[Any]:
        return data.batches("train", indices, batch_size, shuffle=shuffle, augment=augment, generator=generator,
                            device=device)

    def subset_indices(self, data: Any, classes: list[int], indices: torch.Tensor) -> torch.Tensor:
        return ClassSubset(classes, data.num_classes).indices(data.train.targets, indices)

    def loss(self, model: nn.Module, batch: Any, classes: list[int] | None = None,
             num_classes: int | None = None) -> tuple[torch.Tensor, dict]:
        x, y = batch
        logits = model(x)
        if classes is not None:
            logits, y = ClassSubset(classes, num_classes or logits.shape[1]).apply(logits, y)
        loss = nn.functional.cross_entropy(logits, y)
        return loss, {"arch_accuracy": float((logits.argmax(1) == y).float().mean())}

    def train_step(self, model: nn.Module, optimizer: Any, scheduler: Any,
                   classes: list[int] | None = None) -> Callable[[Any], tuple[dict[str, float], int]]:
        if classes is None:
            return supervised_step(model, nn.functional.cross_entropy, optimizer, scheduler)
        return super().train_step(model, optimizer, scheduler, classes)

    def recalibrate(self, model: nn.Module, batches: Iterable[Any], max_batches: int = 20) -> None:
        recalibrate_batchnorm(model, batches, max_batches=max_batches)

    def evaluate(self, model: nn.Module, data: Any, split: str, indices: torch.Tensor | None = None,
                 classes: list[int] | None = None, device: Any = "cpu") -> dict[str, Any]:
        subset = ClassSubset(classes, data.num_classes) if classes is not None else None
        result = evaluate(model, data, split, indices, device=device, subset=subset)
        return {"score": result["accuracy"], "per_class": result["per_class_accuracy"], "loss": result["loss"],
                "samples": result["samples"]}


CLASSIFICATION = ClassificationTask()


def task_of(evaluator: Any) -> Task:
    """The task ``evaluator`` judges (classification for evaluators that name none: tables, proxies)."""
    task = getattr(evaluator, "task", None)
    return task if isinstance(task, Task) else CLASSIFICATION
