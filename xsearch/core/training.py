"""Training utilities shared by supernet search and stand-alone retraining.

A leaf module (torch, ``xsearch.core.data`` and ``xsearch.core.errors`` only), so every layer may use it.
"""

from __future__ import annotations

import math
import os
import random
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .data import ImageData, channels_last_tensor
from .errors import SettingError, UserError


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def release_memory() -> None:
    """Hand the memory freed so far back to the operating system (Linux glibc; elsewhere only ``gc.collect``).

    glibc keeps freed heap memory for later allocations, so a process's resident size stays at its
    high-water mark: after a supernet search the retraining started from 2.2 GB resident although
    the supernet was gone (1.35 GB after ``malloc_trim``). Called between phases (after every
    training epoch and after the search); it costs milliseconds.
    """
    import gc

    gc.collect()
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cosine_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0):
    """Linear warm-up then cosine decay to zero, stepped once per batch."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def passes_for(images: int, epoch_images: int | None) -> int:
    """Passes over ``images`` training images that make one epoch of at least ``epoch_images`` images (at least 1).

    The budgets count images seen, not passes: a small data set gets several passes per epoch, so a
    supernet phase or a stand-alone training sees as many images on 2,000 images as on 20,000.
    """
    if not epoch_images or images <= 0:
        return 1
    return max(1, math.ceil(epoch_images / images))


def check_epoch_images(key: str, value: int | None) -> int | None:
    """``value`` of setting ``key`` (``search.epoch_images``, ``train.epoch_images``): null or at least 1."""
    if value is not None and value < 1:
        raise SettingError(f"{key} must be at least 1 (or null: one pass per epoch), got {value}")
    return value


def repeat_indices(indices: torch.Tensor, passes: int) -> torch.Tensor:
    """``indices`` repeated ``passes`` times (the batches' shuffle mixes the passes): one epoch of several passes."""
    return indices.repeat(passes) if passes > 1 else indices


def short_training_batch(batch_size: int, images: int, min_steps: int, smallest: int = 16) -> int:
    """The batch size of a training of ``images`` images in all: ``batch_size``, halved until it takes ``min_steps`` steps.

    A short training on a small data set (1 epoch of 4,000 images at batch 128: 32 steps) ends
    before the network has learnt anything; the number of optimizer steps, not the number of
    images, is what it lacks. Never below ``smallest``; ``min_steps`` 0 keeps ``batch_size``.
    """
    batch = batch_size
    while min_steps and batch > smallest and math.ceil(images / batch) < min_steps:
        batch = max(smallest, batch // 2)
    return batch


class ClassSubset:
    """Restricts a classifier to a subset of classes: logits are sliced, targets re-indexed."""

    def __init__(self, classes: Iterable[int], num_classes: int) -> None:
        self.classes = torch.tensor(sorted(classes), dtype=torch.long)
        self.lookup = torch.full((num_classes,), -1, dtype=torch.long)
        self.lookup[self.classes] = torch.arange(len(self.classes))

    def indices(self, targets: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The entries of ``candidates`` whose target is in the subset."""
        return candidates[self.lookup[targets[candidates]] >= 0]

    def apply(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classes = self.classes.to(logits.device)
        return logits.index_select(1, classes), self.lookup.to(targets.device)[targets]


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageData, split: str, indices: torch.Tensor | None = None,
             batch_size: int = 256, device: torch.device | str = "cpu",
             subset: ClassSubset | None = None) -> dict[str, Any]:
    """Accuracy, mean cross-entropy and per-class accuracy of ``model`` on ``split`` (optionally a subset)."""
    was_training = model.training
    model.eval()
    correct = torch.zeros(data.num_classes)
    seen = torch.zeros(data.num_classes)
    loss_sum, n = 0.0, 0
    for x, y in data.batches(split, indices, batch_size, device=device):
        logits = model(x)
        if subset is not None:
            logits, local = subset.apply(logits, y)
            pred = subset.classes.to(y.device)[logits.argmax(1)]
            loss_sum += float(nn.functional.cross_entropy(logits, local, reduction="sum"))
        else:
            pred = logits.argmax(1)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        hit = (pred == y).float().cpu()
        yc = y.cpu()
        correct.index_add_(0, yc, hit)
        seen.index_add_(0, yc, torch.ones_like(hit))
        n += len(y)
    model.train(was_training)
    per_class = (correct / seen.clamp(min=1)).tolist()
    return {"accuracy": float(correct.sum() / max(1, n)), "loss": loss_sum / max(1, n),
            "per_class_accuracy": per_class, "samples": n}


OPTIMIZERS = ("auto", "sgd", "adamw")


def check_optimizer(optimizer: str) -> str:
    if optimizer not in OPTIMIZERS:
        raise SettingError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    return optimizer


def weight_optimizer(params: Iterable[nn.Parameter], optimizer: str, space: Any, batch_size: int,
                     sgd: tuple[float, float], adamw: tuple[float, float]) -> torch.optim.Optimizer:
    """The weight optimizer of a training run: SGD or AdamW, ``auto`` asking the space (``space.optimizer``).

    ``sgd`` is (learning rate per 256 images, weight decay): Nesterov momentum 0.9, the rate scaled by
    ``batch_size / 256``. ``adamw`` is (learning rate, weight decay), not scaled. Convolutional
    spaces train well with SGD; the attention-like FocalNet does not (``bench blocks``: 65 % and 76 %
    with SGD and layer scale against 81 % and 83 % with AdamW at 5M and 10M MACs; see the README), so its space asks for AdamW.
    """
    kind = getattr(space, "optimizer", "sgd") if check_optimizer(optimizer) == "auto" else optimizer
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=adamw[0], weight_decay=adamw[1])
    return torch.optim.SGD(params, lr=sgd[0] * batch_size / 256, momentum=0.9, nesterov=True, weight_decay=sgd[1])


def channels_last(model: nn.Module) -> nn.Module:
    """Put every 4-D parameter and buffer in channels-last layout (the layout the batches come in).

    ``Module.to(memory_format=...)`` refuses models with other ranks, such as the 5-D kernel bank
    of a dynamic convolution; those keep their layout here. Weights with one input channel (the
    stem of a one-channel space, every depthwise kernel) get true NHWC strides too
    (``data.channels_last_tensor``), which ``Module.to`` would leave ambiguous.
    """
    return convert_4d(model, channels_last_tensor)


def convert_4d(model: nn.Module, convert: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    """Replace the data of every 4-D parameter and buffer of ``model`` by ``convert(data)``, in place."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.dim() == 4:
            tensor.data = convert(tensor.data)
    return model


def temperature_at(epoch: float, anneal_epochs: float, start: float = 30.0, end: float = 1.0) -> float:
    """Softmax temperature at ``epoch``: linear from ``start`` to ``end`` over ``anneal_epochs``, then ``end``.

    A high early temperature keeps the kernel attention near uniform, so all kernels get trained
    before the attention sharpens (the paper anneals 30 -> 1 over the first epochs).
    """
    if anneal_epochs <= 0 or epoch >= anneal_epochs:
        return float(end)
    progress = max(0.0, float(epoch)) / float(anneal_epochs)
    return float(start + (end - start) * progress)


def set_temperature(model: nn.Module, value: float) -> int:
    """Set ``.temperature`` on every submodule that declares ``anneal_temperature = True``; return how many.

    Duck-typed on that class attribute (``DynamicConv2d`` declares it), so this layer needs no block classes.
    """
    count = 0
    for module in model.modules():
        if getattr(module, "anneal_temperature", False) is True:
            module.temperature = float(value)
            count += 1
    return count


def anneal_temperature(model: nn.Module, epoch: float, anneal_epochs: float) -> None:
    """Set the softmax temperature of every dynamic convolution in ``model`` for training progress ``epoch``.

    Dynamic convolution trains its kernel attention with a temperature annealed from 30 to 1 over
    the first ``anneal_epochs`` epochs (Chen et al. 2020); a model without one is left untouched.
    """
    set_temperature(model, temperature_at(epoch, anneal_epochs))


Batch = tuple[torch.Tensor, torch.Tensor]
# A training step: takes one batch, updates the model, returns (metrics of the batch, its number of samples).
Step = Callable[[Any], tuple[dict[str, float], int]]

DEFAULT_DIVERGE_HINT = "Lower the learning rate and run again."


class TrainingDiverged(UserError):
    """A training phase stopped because its loss (or its weights) stopped being finite (NaN or infinite).

    Raised by ``train_epoch`` when a step's loss is not finite, before that step touches the weights,
    the optimizer or the scheduler, and by ``check_finite_weights`` before a checkpoint would save
    non-finite weights. The message names the phase and epoch (the loop's ``desc``), the batch, and
    the setting to change; a ``UserError``, so the command line prints it and exits with status 2.
    """


class NonFiniteLoss(FloatingPointError):
    """Internal: ``optimizer_step`` refused a NaN or infinite loss (``train_epoch`` turns it into ``TrainingDiverged``)."""

    def __init__(self, value: float) -> None:
        super().__init__(f"the loss is {value}")
        self.value = value


def _first_non_finite(tensor: torch.Tensor) -> float:
    """The first NaN or infinite entry of ``tensor``, as a float."""
    flat = tensor.detach().reshape(-1)
    return float(flat[~torch.isfinite(flat)][0])


def _diverged(desc: str, problem: str, hint: str) -> TrainingDiverged:
    where = f' in "{desc}"' if desc else ""
    return TrainingDiverged(f"training diverged{where}: {problem}. {hint or DEFAULT_DIVERGE_HINT}")


def train_epoch(batches: Iterable[Any], step: Step, total: int, desc: str = "", show_progress: bool = True,
                before_step: Callable[[float], None] | None = None, diverge_hint: str = "") -> dict[str, float]:
    """Run ``step`` on every batch (with a progress bar); return its metrics averaged over samples.

    The one training loop: supernet warm-up, the search's alternating weight/logit steps, SPOS
    supernet training and stand-alone retraining all run through it. ``before_step(t)`` is called
    before each step with the epoch's progress ``t = i / total`` (dynamic convolutions anneal their
    temperature with it). The loop itself draws no random numbers: the batches and the step do, in
    the order they always did.

    A step whose loss is NaN or infinite (``optimizer_step`` refuses it before the backward pass)
    stops the epoch with ``TrainingDiverged``, naming ``desc``, the batch and ``diverge_hint`` (the
    settings to change; a generic "lower the learning rate" when empty). Nothing is saved here, so
    the caller's last checkpoint (written at the end of the previous epoch) is what remains.

    Under ``torchrun`` (``core.distributed``) every rank draws the same global batches and trains on
    its slice of each, batch norm and dropout acting on the global batch; steps report the global
    batch's metrics and size (``distributed.reduce_metrics``), so the averages are one process's.
    """
    sums: dict[str, float] = {}
    n = 0
    bar = progress(distributed.shard(batches), total, desc, show_progress)
    for i, batch in enumerate(bar):
        if before_step is not None:
            before_step(i / total)
        try:
            with distributed.global_batch():
                metrics, size = step(batch)
        except NonFiniteLoss as exc:
            bar.close()
            raise _diverged(desc, f"the loss became {exc.value} at batch {i + 1}/{total}; that step's update was "
                                  "not applied and the last checkpoint (end of the previous epoch), if any, is kept",
                            diverge_hint) from None
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value * size
        n += size
        bar.set_postfix({key: f"{value / n:.3f}" for key, value in sums.items()}, refresh=False)
    release_memory()
    return {key: value / max(1, n) for key, value in sums.items()}


def check_finite_weights(model: nn.Module, desc: str = "", diverge_hint: str = "") -> None:
    """Raise ``TrainingDiverged`` when a floating-point parameter or buffer of ``model`` is NaN or infinite.

    For the end of an epoch, before its checkpoint: a finite loss can still step the weights to
    infinity (an overflowing update), and such weights must never be saved.
    """
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _diverged(desc, f"{name} became {_first_non_finite(tensor)} although every loss was finite; "
                                  "this epoch was not saved and the last checkpoint (end of the previous epoch), if "
                                  "any, is kept", diverge_hint)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: Any = None,
                   samples: int | None = None) -> None:
    """Backpropagate ``loss`` into fresh gradients and step ``optimizer`` (and ``scheduler``, once per batch).

    A NaN or infinite ``loss`` raises ``NonFiniteLoss`` first, leaving the gradients, the weights, the
    optimizer and the scheduler untouched (``train_epoch`` reports it as ``TrainingDiverged``).
    ``samples``: the batch size ``loss`` is the mean over; needed under ``torchrun``, where the step
    follows the global batch's mean loss (``distributed.global_loss``, gradients summed over ranks).
    """
    if distributed.world() > 1:
        if samples is None:
            raise RuntimeError("optimizer_step under torchrun needs samples= (the batch size of this rank's loss)")
        loss, value = distributed.global_loss(loss, samples)  # every rank sees the same global value
        if not math.isfinite(value):
            raise NonFiniteLoss(value)
    elif not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteLoss(_first_non_finite(loss))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.all_reduce_gradients(optimizer)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()


def supervised_step(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    optimizer: torch.optim.Optimizer, scheduler: Any) -> Step:
    """The plain step for ``train_epoch``: ``loss_fn(model(x), y)``, one optimizer and scheduler step; reports train_loss.

    A non-finite loss stops it before the update (see ``optimizer_step``).
    """
    def step(batch: Batch) -> tuple[dict[str, float], int]:
        x, y = batch
        loss = loss_fn(model(x), y)
        optimizer_step(loss, optimizer, scheduler, samples=len(y))
        return distributed.reduce_metrics({"train_loss": float(loss.detach())}, len(y))

    return step


def progress(iterable: Iterable, total: int | None = None, desc: str = "", enabled: bool = True):
    """A tqdm bar on stderr; disabled when ``enabled`` is false, XSEARCH_PROGRESS=0, or on ranks other than 0."""
    enabled = enabled and os.environ.get("XSEARCH_PROGRESS", "1") != "0" and distributed.is_main()
    # disable=None: tqdm hides itself when stderr is not a terminal (CI logs, pipes)
    return tqdm(iterable, total=total, desc=desc, leave=False, disable=None if enabled else True, dynamic_ncols=True,
                file=sys.stderr, mininterval=0.5)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                          max_batches: int = 20) -> None:
    """Re-estimate every batch norm's running statistics on ``batches`` (exact averages, not EMA).

    A sub-network of a supernet inherits running statistics measured under a different path
    distribution; without this its held-out accuracy is meaningless (often chance).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the recalibration batches
    was_training = model.training
    model.train()
    for i, (x, _) in enumerate(batches):
        if i >= max_batches:
            break
        model(x)
    model.train(was_training)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


def retrain_epochs(model: nn.Module, resumable: Any, workdir: Any, epochs: int,
                   run_epoch: Callable[[int], tuple[str, dict[str, float]]],
                   diverge_hint: str = "") -> tuple[list[dict[str, float]], float]:
    """The retraining loop every evaluator shares: resume, train the remaining epochs, checkpoint after each.

    ``resumable`` (a ``core.checkpoint.Resumable``) restores ``workdir/train_checkpoint.pt`` when
    there is one and saves it after every epoch (no ``workdir``: no checkpoint). ``run_epoch(epoch)``
    trains one epoch (0-based) and returns its progress label and the scalars to record. Weights a
    step made infinite are never checkpointed (``check_finite_weights``). Returns the per-epoch
    history (``epoch``, the scalars, cumulative ``seconds``) and the training seconds.
    """
    import time
    from pathlib import Path

    state = {"epoch": 0, "history": [], "seconds": 0.0}
    ckpt_path = Path(workdir) / "train_checkpoint.pt" if workdir else None
    if ckpt_path is not None:
        if distributed.is_main():  # under torchrun only rank 0 writes; every rank resumes from its checkpoint
            ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        state = resumable.restore(ckpt_path, "retrain") or state
    distributed.broadcast_module(model)  # rank 0's weights everywhere (identical already when seeded alike)
    history, elapsed = state["history"], state["seconds"]
    for epoch in range(state["epoch"], epochs):
        t0 = time.time()
        model.train()
        desc, record = run_epoch(epoch)
        check_finite_weights(model, desc, diverge_hint)
        elapsed += time.time() - t0
        history.append({"epoch": epoch + 1, **record, "seconds": elapsed})
        if ckpt_path is not None and distributed.is_main():
            resumable.save(ckpt_path, "retrain", {"epoch": epoch + 1, "history": history, "seconds": elapsed})
    return history, elapsed
