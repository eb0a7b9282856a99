"""Stand-alone classification training: the recipe every found network is retrained with.

Recipe (documented in the README): SGD with Nesterov momentum 0.9, learning rate ``lr`` scaled by
batch_size/256 (AdamW with ``adamw_lr`` and ``adamw_weight_decay`` for spaces that ask for it, such
as ``focalnet``, or with ``optimizer="adamw"``), one warm-up epoch (or 10% of training if shorter) then cosine decay to zero,
weight decay ``weight_decay``, label smoothing 0.1, random-crop (zero padding) and, where the data
allows, horizontal-flip augmentation at strength ``augment`` (1: the data's own padding and flip, 0:
none, in between and above: the padding scaled, ``core.data.augment_strength``; ``xsearch tune`` tunes
it with the rest of the recipe). Budgets count images, not passes: an epoch is at least
``epoch_images`` images (a small training set is passed over several times per epoch), and a
training too short for ``min_steps`` optimizer steps runs at a smaller batch (halved, at the learning
rate per step of ``batch_size``). After the last epoch the batch norms' running statistics are
re-estimated on ``recalibration_batches`` training batches ("precise BN"): with a few dozen steps
the exponential averages lag the moving weights, and a 1-epoch training on 4,000 images scored
chance (10 %) in eval mode while its recalibrated statistics gave 48 % (README, "Short trainings").
Test accuracy is measured once, after the last epoch, on the
dataset's test split. ``score`` (what multi-trial searches maximize) trains the same way on the
training split minus ``val_samples`` held-out images and reports accuracy on those: a search never
sees the test split. With ``report`` (multi-fidelity, ``xsearch.core.fidelity``) it also measures that
held-out accuracy after every epoch, the same way (precise BN on a copy of the network), and stops
when ``report`` raises ``Pruned``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xsearch.core import distributed
from xsearch.core.checkpoint import Resumable
from xsearch.core.data import ImageData, stratified_subset
from xsearch.core.errors import SettingError
from xsearch.core.fidelity import Pruned, Report, pruned_metrics
from xsearch.core.io import atomic_write
from xsearch.core.training import (
    anneal_temperature,
    channels_last,
    check_epoch_images,
    check_finite_weights,
    check_optimizer,
    cosine_with_warmup,
    evaluate,
    passes_for,
    recalibrate_batchnorm,
    repeat_indices,
    resolve_device,
    retrain_epochs,
    seed_everything,
    short_training_batch,
    supervised_step,
    train_epoch,
    weight_optimizer,
)

from ._base import EVALUATORS, Evaluator
from .tasks import CLASSIFICATION

MAX_AUGMENT = 4.0  # train.augment's ceiling: 4x the data's crop padding (8 of 28 pixels on Fashion-MNIST)


@EVALUATORS.register("classification")
class ClassificationEvaluator(Evaluator):
    """Train ``space.build(arch)`` from scratch, report test accuracy, save the weights."""

    name = "classification"
    task = CLASSIFICATION
    trains = True
    data_parallel = True  # core.distributed: each process trains on its slice of every batch
    reports_epochs = True  # score(report=...) reports the held-out accuracy after every epoch

    def __init__(self, epochs: int = 4, batch_size: int = 128, lr: float = 0.2, weight_decay: float = 5e-5,
                 label_smoothing: float = 0.1, train_samples: int | None = None, test_samples: int | None = None,
                 val_samples: int = 5000, temperature_epochs: float = 1.0, optimizer: str = "auto",
                 adamw_lr: float = 2e-3, adamw_weight_decay: float = 0.05, epoch_images: int | None = None,
                 min_steps: int = 125, recalibration_batches: int = 20, augment: float = 1.0, device: str = "auto",
                 show_progress: bool = True) -> None:
        check_epoch_images("train.epoch_images", epoch_images)
        if not 0 <= augment <= MAX_AUGMENT:
            raise SettingError(f"train.augment must be between 0 (no augmentation) and {MAX_AUGMENT:g}, got {augment}; "
                               "1 is the data's own crop padding and flip")
        self.augment = augment
        for key, value in (("min_steps", min_steps), ("recalibration_batches", recalibration_batches)):
            if value < 0:
                raise SettingError(f"train.{key} must be at least 0, got {value}")
        self.epoch_images, self.min_steps, self.recalibration_batches = epoch_images, min_steps, recalibration_batches
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.label_smoothing, self.train_samples, self.test_samples = label_smoothing, train_samples, test_samples
        self.val_samples, self.temperature_epochs = val_samples, temperature_epochs
        self.optimizer = check_optimizer(optimizer)
        self.adamw_lr, self.adamw_weight_decay = adamw_lr, adamw_weight_decay
        self.device = resolve_device(device)
        self.show_progress = show_progress

    def evaluate(self, space: Any, arch: dict[str, str], data: ImageData, seed: int = 0,
                 workdir: Path | None = None) -> dict[str, Any]:
        train_idx = stratified_subset(data.train.targets, self.train_samples, seed)
        model, history, elapsed, seen = self._fit(space, arch, data, train_idx, seed, workdir)
        test_idx = stratified_subset(data.test.targets, self.test_samples, seed) if self.test_samples else None
        result = evaluate(model, data, "test", test_idx, device=self.device)
        if workdir is not None and distributed.is_main():  # under torchrun only rank 0 writes
            weights = model.state_dict()
            atomic_write(Path(workdir) / "model.pt", lambda f: torch.save(weights, f), binary=True)
        return {
            "test_accuracy": result["accuracy"],
            "test_loss": result["loss"],
            "test_samples": result["samples"],
            "per_class_test_accuracy": result["per_class_accuracy"],
            "train_epochs": self.epochs,
            "train_seconds": elapsed,
            **seen,
            "history": history,
            "seed": seed,
        }

    def holdout(self, data: ImageData, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(training indices, validation indices) for ``score``: ``val_samples`` (at most a fifth) held out, seeded."""
        targets = data.train.targets
        if self.val_samples < 1:
            raise ValueError(f"train.val_samples must be at least 1, got {self.val_samples}")
        n_val = min(self.val_samples, len(targets) // 5)
        perm = torch.randperm(len(targets), generator=torch.Generator().manual_seed(10_007 + seed))
        val, rest = perm[:n_val], perm[n_val:]
        return stratified_subset(targets, self.train_samples, seed, indices=rest), val

    def score(self, space: Any, arch: dict[str, str], data: ImageData, seed: int = 0,
              report: Report | None = None) -> dict[str, Any]:
        """Train on the training split minus the held-out images; score = accuracy on the held-out images.

        ``report(epoch, value)``, when given, is called after every epoch (from 1) with the held-out
        accuracy at that point, measured as the score is (batch norms re-estimated, the same images)
        on a copy of the network: the training (weights, random draws) is the one without ``report``.
        The last epoch's value is the score itself. When ``report`` raises ``Pruned`` the training
        stops there and the metrics say so: the last value as ``score``, ``pruned: True``,
        ``pruned_epoch`` and ``train_epochs`` (the epochs trained), ``epoch_scores``.
        """
        train_idx, val_idx = self.holdout(data, seed)
        t0, curve = time.time(), []

        def after_epoch(model: nn.Module, epoch: int) -> None:
            curve.append([epoch, self._held_out_now(model, data, train_idx, val_idx, seed)])
            report(epoch, curve[-1][1])

        try:
            model, _, elapsed, seen = self._fit(space, arch, data, train_idx, seed, None,
                                                after_epoch if report is not None else None)
            result = evaluate(model, data, "train", val_idx, device=self.device)
            if report is not None:
                curve.append([self.epochs, result["accuracy"]])
                report(self.epochs, result["accuracy"])
        except Pruned:
            plan, epochs = self.plan(len(train_idx)), curve[-1][0]
            done = {k: plan[k] * epochs // self.epochs for k in ("train_images_seen", "train_steps")}
            return pruned_metrics(curve, val_accuracy=curve[-1][1], val_samples=len(val_idx),
                                  train_seconds=time.time() - t0, **{**plan, **done}, seed=seed)
        return {"score": result["accuracy"], "val_accuracy": result["accuracy"], "val_loss": result["loss"],
                "val_samples": result["samples"], "train_epochs": self.epochs, "train_seconds": elapsed,
                **seen, "seed": seed}

    def _held_out_now(self, model: nn.Module, data: ImageData, train_idx: torch.Tensor, val_idx: torch.Tensor,
                      seed: int) -> float:
        """Held-out accuracy of ``model`` mid-training, measured as the final score is, on a deep copy (precise
        BN would overwrite the training's running statistics) and with the random state restored afterwards."""
        probe = copy.deepcopy(model)
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            self._recalibrate(probe, data, train_idx, seed)
            return evaluate(probe, data, "train", val_idx, device=self.device)["accuracy"]

    def _recalibrate(self, model: nn.Module, data: ImageData, train_idx: torch.Tensor, seed: int) -> None:
        """Precise BN: exact statistics of the trained weights (seeded, unaugmented batches); none with 0 batches."""
        if self.recalibration_batches:
            recalibrate_batchnorm(model, data.batches("train", train_idx, self.batch_size, shuffle=True,
                                                      generator=torch.Generator().manual_seed(seed),
                                                      device=self.device), self.recalibration_batches)

    def plan(self, images: int) -> dict[str, int]:
        """What a training on ``images`` distinct images does: passes per epoch, batch size, images and steps in all."""
        passes = passes_for(images, self.epoch_images)
        per_epoch = images * passes
        batch = short_training_batch(self.batch_size, per_epoch * self.epochs, self.min_steps)
        steps = (per_epoch + batch - 1) // batch
        return {"train_passes_per_epoch": passes, "train_batch_size": batch,
                "train_images_seen": per_epoch * self.epochs, "train_steps": steps * self.epochs}

    def _fit(self, space: Any, arch: dict[str, str], data: ImageData, train_idx: torch.Tensor, seed: int,
             workdir: Path | None, after_epoch: Callable[[nn.Module, int], None] | None = None,
             ) -> tuple[nn.Module, list[dict[str, float]], float, dict[str, int]]:
        """Train ``arch`` on ``train_idx``; ``after_epoch(model, epoch)`` after every epoch but the last (from 1)."""
        seed_everything(seed)
        model = channels_last(space.build(arch).to(self.device))
        # the learning rate per step is the one of train.batch_size, also when a short training runs smaller batches
        optimizer = weight_optimizer(model.parameters(), self.optimizer, space, self.batch_size,
                                     (self.lr, self.weight_decay), (self.adamw_lr, self.adamw_weight_decay))
        plan = self.plan(len(train_idx))
        passes, batch = plan["train_passes_per_epoch"], plan["train_batch_size"]
        steps = plan["train_steps"] // self.epochs
        scheduler = cosine_with_warmup(optimizer, steps * self.epochs, warmup_steps=min(steps, steps * self.epochs // 10))
        criterion = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        generator = torch.Generator().manual_seed(seed)
        resumable = Resumable(model, {"weights": optimizer}, {"weights": scheduler}, generator)
        step = supervised_step(model, criterion, optimizer, scheduler)
        hint = self._diverge_hint(optimizer)

        def run_epoch(epoch: int) -> tuple[str, dict[str, float]]:
            batches = data.batches("train", repeat_indices(train_idx, passes), batch, shuffle=True, augment=self.augment,
                                   generator=generator, device=self.device)
            desc = f"train epoch {epoch + 1}/{self.epochs}"
            metrics = train_epoch(batches, step, steps, desc, self.show_progress,
                                  lambda t: anneal_temperature(model, epoch + t, self.temperature_epochs),
                                  diverge_hint=hint)
            if after_epoch is not None and epoch + 1 < self.epochs:
                check_finite_weights(model, desc, hint)  # a diverged network is never scored
                after_epoch(model, epoch + 1)
            return desc, {"train_loss": metrics.get("train_loss", 0.0)}

        history, elapsed = retrain_epochs(model, resumable, workdir, self.epochs, run_epoch, hint)
        self._recalibrate(model, data, train_idx, seed)
        return model, history, elapsed, plan

    def _diverge_hint(self, optimizer: torch.optim.Optimizer) -> str:
        """What to change when this training diverges: the learning rate of the optimizer in use, or the other optimizer."""
        if isinstance(optimizer, torch.optim.AdamW):
            return (f"Lower train.adamw_lr (now {self.adamw_lr:g}, the AdamW learning rate) and train again, or "
                    f"use train.optimizer=sgd with train.lr (now {self.lr:g}).")
        return (f"Lower train.lr (now {self.lr:g}, the SGD learning rate per 256 images, scaled by "
                f"train.batch_size/256) and train again, or use train.optimizer=adamw with train.adamw_lr "
                f"(now {self.adamw_lr:g}).")
