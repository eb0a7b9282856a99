"""Several processes under ``torchrun``: one global batch split across them, the result of one process.

A leaf module (torch only). Launched by ``torchrun --nproc_per_node=N ...`` (which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``), ``init`` joins the process group:
gloo on the CPU, NCCL for CUDA tensors (``cpu:gloo,cuda:nccl``, so small CPU-side reductions such as
the reported losses still go through gloo). Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every
function here is the identity and nothing is communicated, so one process runs exactly as before.

How N processes reproduce one process with the same seed (up to float rounding):

- every rank draws the same global batch (same seeded generator, same augmentation draws) and
  ``shard`` keeps its contiguous slice (``train_epoch`` does this for every training loop);
- ``optimizer_step`` backpropagates the rank's mean loss times its share ``n_r / N`` of the global
  batch, then sums the gradients over ranks (``all_reduce_gradients``): the gradient of the global
  batch's mean loss. A manual all-reduce rather than ``DistributedDataParallel`` because the
  supernets change which parameters take part from step to step (single-path sampling, pruned
  candidates, logits and weights frozen in turn by ``requires_grad`` for two optimizers on one
  module): DDP fixes its gradient hooks at construction, and with ``find_unused_parameters`` it
  would still hand globally unused parameters zero gradients in some versions, which SGD's weight
  decay and momentum would then apply where one process skips the parameter (gradient ``None``).
  Summing exactly the gradients that exist keeps one process's semantics for every network; the
  price is no overlap of communication with the backward pass (one flat all-reduce per step);
- batch norm in training mode normalises with the global batch's moments (``global_batch``): every
  ``torch.nn.functional.batch_norm`` call (``nn.BatchNorm2d`` and the supernets' own functional
  calls alike) is replaced, through a ``torch.overrides.TorchFunctionMode``, by one that all-reduces
  the per-channel sums (autograd-aware ``torch.distributed.nn.functional.all_reduce``, as
  SyncBatchNorm's backward does) and updates the running statistics with the global unbiased
  variance. ``torch.nn.SyncBatchNorm`` is no option: in torch 2.14 it refuses CPU tensors
  ("SyncBatchNorm expected input tensor to be on GPU"), and it would not reach the functional calls;
- dropout draws its mask for the global batch (the same draws one process makes) and keeps the
  rank's rows, so the global random state stays the same on every rank and equal to one process's:
  sampled paths (SPOS, gated) are identical everywhere. Other per-sample draws in a forward pass are
  not covered: a drop path with ``drop_prob > 0`` (``blocks.focal.DropPath``; no space sets one)
  would draw per rank and lose the equality;
- evaluation, batch-norm recalibration and derivation run outside ``global_batch`` on full batches,
  identically on every rank (the weights are identical: the same summed gradients everywhere).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import warnings
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .errors import UserError

# torch.distributed.nn.functional.all_reduce (autograd-aware: its backward all-reduces the gradient, as
# SyncBatchNorm's does) warns that it is deprecated in favour of a private module; it is the public one
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated",
                        category=FutureWarning)


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> bool:
    """Join the process group ``torchrun`` describes (idempotent); False when there is a single process.

    ``device``: the run's device setting. ``auto`` and ``cuda`` take the GPU ``LOCAL_RANK`` (made the
    current device); a fixed ``cuda:N`` is refused, since every process would pick the same one.
    """
    if not launched():
        return False
    if dist.is_initialized():
        return True
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if device.startswith("cuda:"):
            raise UserError(f"device={device} under torchrun: every process would use that one GPU; use device=cuda "
                            "(or auto), and each process takes the GPU of its LOCAL_RANK")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo")
    atexit.register(_shutdown)
    return True


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    """How many processes share the training (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes (run folder, study, checkpoints, progress bars): rank 0, or the only one."""
    return rank() == 0


def slice_bounds(length: int, part: int, parts: int) -> tuple[int, int]:
    """Rank ``part``'s contiguous slice of ``length`` items split ``parts`` ways (sizes differ by at most one)."""
    return length * part // parts, length * (part + 1) // parts


def local_slice(batch: Any) -> Any:
    """This rank's rows of a batch: tensors and lists sliced along their first axis, tuples element by element."""
    if isinstance(batch, tuple):
        return tuple(local_slice(item) for item in batch)
    if isinstance(batch, (torch.Tensor, list)):
        start, stop = slice_bounds(len(batch), rank(), world())
        return batch[start:stop]
    return batch


def shard(batches: Iterable[Any]) -> Iterable[Any]:
    """``batches`` (the same global batches on every rank) cut to this rank's slices; unchanged for one process."""
    if world() == 1:
        return batches
    return (local_slice(batch) for batch in batches)


def reduce_metrics(metrics: dict[str, float], samples: int) -> tuple[dict[str, float], int]:
    """Per-batch means of this rank's ``samples`` -> the global batch's means and size (identity for one process)."""
    if world() == 1:
        return metrics, samples
    keys = list(metrics)
    local = [float(metrics[k]) * samples if samples else 0.0 for k in keys] + [float(samples)]
    total = torch.tensor(local, dtype=torch.float64)
    dist.all_reduce(total)
    n = int(total[-1])
    return {k: float(total[i]) / max(1, n) for i, k in enumerate(keys)}, n


def global_loss(loss: torch.Tensor, samples: int) -> tuple[torch.Tensor, float]:
    """(what this rank backpropagates, the global batch's mean loss) for a rank's mean ``loss`` over ``samples``.

    The rank's loss is weighted by its share ``samples / N`` of the global batch, so the summed
    gradients are those of the global mean. One process: ``(loss, float(loss))``.
    """
    if world() == 1:
        return loss, float(loss.detach())
    value = float(loss.detach()) * samples if samples else 0.0
    total = torch.tensor([value, float(samples)], dtype=torch.float64)
    dist.all_reduce(total)
    n = max(1.0, float(total[1]))
    return loss * (samples / n), float(total[0]) / n


def all_reduce_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Sum over ranks the gradients of ``optimizer``'s parameters that have one (one flat all-reduce)."""
    if world() == 1:
        return
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view(g.shape))
        offset += g.numel()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; identity for one process)."""
    if world() == 1:
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank (as DDP does at construction)."""
    if world() == 1:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            buffer = tensor.data.contiguous()  # channels-last weights: broadcast a contiguous copy, then write back
            dist.broadcast(buffer, src=0)
            if buffer.data_ptr() != tensor.data.data_ptr():
                tensor.data.copy_(buffer)


# --- one global batch across ranks --------------------------------------------------------
class _GlobalBatch(TorchFunctionMode):
    """Batch norm on the global batch's moments and dropout masks of the global batch (see the module doc)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            return _batch_norm(*args, **kwargs)
        if func is F.dropout:
            return _dropout(*args, **kwargs)
        return func(*args, **kwargs)


def global_batch() -> contextlib.AbstractContextManager:
    """A context in which the ranks' slices behave as one batch (nothing changes for one process)."""
    return _GlobalBatch() if world() > 1 else contextlib.nullcontext()


def _batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
                momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    if not training:
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    from torch.distributed.nn.functional import all_reduce

    dims = [0, *range(2, input.dim())]
    shape = (1, -1) + (1,) * (input.dim() - 2)
    local = input.numel() // max(1, input.shape[1])
    sums = all_reduce(torch.cat([input.sum(dims), input.new_tensor([float(local)])]))
    count = sums[-1].detach()
    mean = sums[:-1] / count
    centered = input - mean.view(shape)
    var = all_reduce((centered * centered).sum(dims)) / count  # two passes: no cancellation in E[x^2] - E[x]^2
    out = centered * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
        if running_var is not None:
            unbiased = var.detach() * (count / (count - 1).clamp(min=1))
            running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    return out


def _dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    if not training or p == 0:
        return F.dropout(input, p, training, inplace)
    sizes = torch.tensor([0] * world(), dtype=torch.long)
    sizes[rank()] = len(input)
    dist.all_reduce(sizes)
    start = int(sizes[:rank()].sum())
    # the noise one process would draw for the whole batch (same generator calls), then this rank's rows
    noise = F.dropout(input.new_ones((int(sizes.sum()), *input.shape[1:])), p, True)[start:start + len(input)]
    return input.mul_(noise) if inplace else input * noise


__all__ = ["all_reduce_gradients", "broadcast_module", "broadcast_object", "global_batch", "global_loss", "init",
           "is_main", "launched", "local_slice", "rank", "reduce_metrics", "shard", "slice_bounds", "world"]
