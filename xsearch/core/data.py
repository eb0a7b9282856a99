"""Classification data as the training loop sees it: splits, normalised batches, augmentation, stratified subsets.

The loaders that make an ``ImageData`` from files, and the registry of datasets, are one layer up
in ``xsearch.datasets``; this module holds what the training loop, the strategies and the
evaluators use on any of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TensorSplit:
    """Images as a uint8 tensor (N, C, H, W) and integer targets."""

    images: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float().div_(255.0), self.targets[index]


@dataclass
class ImageData:
    """A classification dataset: train and test splits, normalisation, and what augmentation suits it."""

    name: str
    train: Any
    test: Any
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = True
    crop_padding: int = 2
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        x, _ = self.train.batch(torch.tensor([0]))
        return tuple(x.shape[1:])  # type: ignore[return-value]

    def batches(self, split: str, indices: torch.Tensor | None = None, batch_size: int = 128,
                shuffle: bool = False, augment: bool | float = False, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (images, targets) batches of ``split`` ('train' or 'test'), optionally a subset.

        ``augment`` is the augmentation's strength (``True`` is 1, ``augment_strength`` says what a strength does).
        """
        data = self.train if split == "train" else self.test
        if indices is None:
            indices = torch.arange(len(data))
        if shuffle:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        pin = torch.device(device).type == "cuda"  # pinned host memory: the copy to the GPU runs asynchronously
        chunks = [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]
        for x, y in split_batches(data, chunks):
            if augment:
                x = augment_batch(x, *augment_strength(self.crop_padding, self.flip, augment), generator)
            x = (x - mean) / std
            x = channels_last_tensor((x.pin_memory() if pin else x).to(device, non_blocking=True))
            yield x, y.to(device, non_blocking=True)

    def num_batches(self, n: int, batch_size: int) -> int:
        return (n + batch_size - 1) // batch_size


def split_batches(split: Any, chunks: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images in [0, 1], targets) of ``split`` for each index batch of ``chunks``, in order.

    A split that decodes files (``xsearch.datasets.imagefolder.FolderSplit``) decodes them all through
    ``decoded_batches`` (worker processes); the others answer ``batch(index)``. Either way the same
    tensors come back.
    """
    if hasattr(split, "decoded_batches"):
        for chunk, images in zip(chunks, split.decoded_batches(chunks)):
            yield images.float().div_(255.0), split.targets[chunk]
    else:
        for chunk in chunks:
            yield split.batch(chunk)


def channels_last_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` (N, C, H, W) with NHWC strides, so that the convolutions it meets run channels-last.

    ``t.contiguous(memory_format=torch.channels_last)`` leaves a tensor with one channel (or
    1x1 spatial size) as it is: its NCHW strides already count as channels-last, but PyTorch's
    convolutions then pick their layout from the strides and run in NCHW, and so does every layer
    after them. Here the channel stride is always 1 (one copy when it is not already).
    """
    _, c, h, w = t.shape
    strides = (h * w * c, 1, w * c, c)
    if t.stride() == strides:
        return t
    return torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)


def augment_strength(crop_padding: int, flip: bool, strength: float) -> tuple[int, float]:
    """(crop padding, flip probability) of augmentation ``strength`` for data with ``crop_padding`` and ``flip``.

    Strength 1 is the data's own augmentation (padding ``crop_padding``, flip with probability 1/2 where
    the data allows it); 0 is none; in between and above, the padding scales (rounded) and the flip
    probability scales up to 1/2. The training recipe's ``train.augment``.
    """
    return round(crop_padding * strength), (0.5 * min(1.0, strength) if flip else 0.0)


def augment_batch(x: torch.Tensor, padding: int, flip: bool | float, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip (``flip``: its probability, True = 1/2), per sample."""
    b, _, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, :]
        x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(b, generator=generator) < (0.5 if flip is True else flip)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


def stratified_split(targets: torch.Tensor, seed: int, cuts: Callable[[int], Sequence[int]] | None = None,
                     size: int | None = None) -> list[torch.Tensor]:
    """Seeded, class-stratified index sets of ``targets``: pass ``cuts`` for per-class parts, or ``size`` for one batch.

    The one sampler behind every stratified choice (search split, training subsets, the digits
    test split, a proxy's scoring batch). Exactly one of:

    - ``cuts(m)``: cut points for a class of ``m`` samples. Each class (ascending) is shuffled with
      its own ``randperm`` from one generator and cut there; part ``i`` holds every class's
      ``i``-th piece, class after class, so ``len(cuts(m)) + 1`` parts come back.
    - ``size``: one part of ``size`` indices from one shuffle of all indices, the classes taking
      turns (every class's r-th sample before any class's (r+1)-th, ties in shuffle order), so class
      counts differ by at most one in any prefix.

    The two modes draw from the generator differently; each keeps the exact indices of the helper
    it replaced, so the same seed still gives the same searches and scores.
    """
    if (cuts is None) == (size is None):
        raise ValueError("stratified_split needs exactly one of cuts= and size=")
    g = torch.Generator().manual_seed(seed)
    if size is not None:
        perm = torch.randperm(len(targets), generator=g)
        shuffled = targets[perm]
        rank = torch.empty(len(perm), dtype=torch.long)  # position of each sample among its class in the shuffle
        for c in torch.unique(shuffled).tolist():
            mask = shuffled == c
            rank[mask] = torch.arange(int(mask.sum()))
        return [perm[torch.argsort(rank * len(perm) + torch.arange(len(perm)))[:size]]]
    pieces = []
    for c in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        bounds = [0, *cuts(len(idx)), len(idx)]
        pieces.append([idx[a:b] for a, b in itertools.pairwise(bounds)])
    return [torch.cat(part) for part in zip(*pieces)]


def split_for_search(targets: torch.Tensor, num_samples: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint, class-stratified halves of (a subset of) the training split.

    The first trains supernet weights, the second the architecture logits and the difficulty
    ranking. The test split is never used for search.
    """
    n = len(targets) if not num_samples else min(num_samples, len(targets))

    def cuts(m: int) -> tuple[int, int]:
        take = round(m * n / len(targets))  # the class's share of n
        return take // 2, take

    first, second, _ = stratified_split(targets, seed, cuts)
    return first, second


def stratified_subset(targets: torch.Tensor, num_samples: int | None, seed: int,
                      indices: torch.Tensor | None = None) -> torch.Tensor:
    """A class-stratified random subset of about ``num_samples`` of ``indices`` (default: all of ``targets``).

    All of them when ``num_samples`` is falsy or not smaller. ``indices[:n]`` is no substitute: the
    splits above are grouped by class.
    """
    if indices is None:
        indices = torch.arange(len(targets))
    if not num_samples or num_samples >= len(indices):
        return indices
    return indices[torch.cat(split_for_search(targets[indices], num_samples, seed))]
