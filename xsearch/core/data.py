"""Datasets as in-memory tensors (or an image folder read lazily), with fast batch iteration.

Nothing is downloaded: every loader reads files the user already has and, when they are missing,
raises a UserError that says where it looked and how to get them.
"""

from __future__ import annotations

import gzip
import itertools
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .registry import Registry

DATASETS: Registry[Callable[..., ImageData]] = Registry("dataset")

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass
class TensorSplit:
    """Images as a uint8 tensor (N, C, H, W) and integer targets."""

    images: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index].float().div_(255.0), self.targets[index]


def default_workers() -> int:
    """DataLoader worker processes when ``data.workers`` is unset: min(4, the CPUs this process may use)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)


class _FolderImages(torch.utils.data.Dataset):
    """The decoding half of a ``FolderSplit`` that worker processes receive: index -> uint8 (C, H, W) image."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.folder[index][0]


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(images)


class FolderSplit:
    """An ImageFolder-style directory, decoded on the fly in DataLoader worker processes (data too big for memory).

    Images are resized (shorter side) and centre-cropped to ``image_size``, as RGB uint8.
    ``decoded_batches`` decodes a list of index batches in order: in this process when ``workers``
    is 0 (or there is one batch), else in ``workers`` DataLoader processes, which return the same
    tensors in the same order. ``to_tensors`` decodes the whole folder once (the in-memory cache).
    """

    def __init__(self, root: Path, image_size: int, workers: int = 0) -> None:
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                 transforms.PILToTensor()])
        try:
            self.folder = datasets.ImageFolder(str(root), transform=tf)
        except FileNotFoundError as exc:  # no class folders, or no image files in them
            raise UserError(f"data=imagefolder: {exc}; put the images in {root}/<class>/") from None
        self.targets = torch.tensor(self.folder.targets, dtype=torch.long)
        self.classes = self.folder.classes
        self.image_size, self.workers = image_size, workers

    def __len__(self) -> int:
        return len(self.targets)

    def decode(self, index: torch.Tensor) -> torch.Tensor:
        """The images at ``index`` as one uint8 (N, C, H, W) tensor, decoded in this process."""
        return torch.stack([self.folder[int(i)][0] for i in index])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(index).float().div_(255.0), self.targets[index]

    def decoded_batches(self, chunks: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """uint8 image batches for the index batches ``chunks``, in order (worker processes when ``workers`` > 0)."""
        workers = min(self.workers, len(chunks))
        if workers == 0 or len(chunks) == 1 or _in_daemon():
            for chunk in chunks:  # one batch (a probe, a proxy's scoring batch) is not worth starting processes
                yield self.decode(chunk)
            return
        # DataLoader keeps the batch_sampler's order whatever the worker that decoded a batch. Its own
        # generator: the workers' seeds would otherwise be drawn from the global RNG, which would shift
        # every later draw of the training (dropout, path sampling) against in-process decoding.
        yield from torch.utils.data.DataLoader(_FolderImages(self.folder), batch_sampler=[c.tolist() for c in chunks],
                                               num_workers=workers, collate_fn=_stack,
                                               generator=torch.Generator().manual_seed(0))

    def to_tensors(self) -> TensorSplit:
        """The whole split decoded once into memory (in the worker processes), as a ``TensorSplit``."""
        order = torch.arange(len(self))
        chunks = [order[i:i + 256] for i in range(0, len(order), 256)]
        return TensorSplit(torch.cat(list(self.decoded_batches(chunks))), self.targets)

    def decoded_bytes(self) -> int:
        """What ``to_tensors`` would hold: RGB uint8 images of ``image_size`` squared."""
        return len(self) * 3 * self.image_size ** 2


def _in_daemon() -> bool:
    """A daemonic process (a multiprocessing pool's worker) may not start DataLoader workers of its own."""
    import multiprocessing

    return multiprocessing.current_process().daemon


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
                shuffle: bool = False, augment: bool = False, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (images, targets) batches of ``split`` ('train' or 'test'), optionally a subset."""
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
                x = augment_batch(x, self.crop_padding, self.flip, generator)
            x = (x - mean) / std
            x = channels_last_tensor((x.pin_memory() if pin else x).to(device, non_blocking=True))
            yield x, y.to(device, non_blocking=True)

    def num_batches(self, n: int, batch_size: int) -> int:
        return (n + batch_size - 1) // batch_size


def split_batches(split: Any, chunks: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images in [0, 1], targets) of ``split`` for each index batch of ``chunks``, in order.

    A split that decodes files (``FolderSplit``) decodes them all through ``decoded_batches`` (worker
    processes); the others answer ``batch(index)``. Either way the same tensors come back.
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


def augment_batch(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per sample."""
    b, _, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, :]
        x = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(b, generator=generator) < 0.5
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


# --- loaders ------------------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find(root: Path, stem: str) -> Path | None:
    for sub in ("", "raw", "FashionMNIST/raw"):
        for suffix in ("", ".gz"):
            p = root / sub / (stem + suffix)
            if p.is_file():
                return p
    return None


@DATASETS.register("fashion_mnist")
def load_fashion_mnist(root: str | None = None) -> ImageData:
    """Fashion-MNIST from its IDX files (Debian package ``dataset-fashion-mnist`` or torchvision's raw/ folder)."""
    base = Path(root or "/usr/share/datasets/fashion-mnist")
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    paths = [_find(base, s) for s in stems]
    if any(p is None for p in paths):
        missing = [s for s, p in zip(stems, paths) if p is None]
        raise UserError(
            f"Fashion-MNIST not found under {str(base)!r} (missing {', '.join(missing)}[.gz]). Install it with "
            "'apt-get install dataset-fashion-mnist' (files land in /usr/share/datasets/fashion-mnist/) or point "
            "data.root=DIR at a folder holding the four IDX files."
        )
    xtr, ytr, xte, yte = (_read_idx(p) for p in paths)  # type: ignore[arg-type]
    as_split = lambda x, y: TensorSplit(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    return ImageData("fashion_mnist", as_split(xtr, ytr), as_split(xte, yte), FASHION_MNIST_CLASSES,
                     mean=(0.2860,), std=(0.3530,), flip=True, crop_padding=2, info={"root": str(base)})


@DATASETS.register("digits")
def load_digits_data(root: str | None = None) -> ImageData:
    """scikit-learn's 8x8 digits (1,797 images, shipped with scikit-learn); a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy((d.images * 255.0 / 16.0).round().astype(np.uint8)).unsqueeze(1)
    targets = torch.from_numpy(d.target.astype(np.int64))
    te, tr = stratified_split(targets, 0, cuts=lambda m: (m // 5,))  # a fifth of each class
    return ImageData("digits", TensorSplit(images[tr], targets[tr]), TensorSplit(images[te], targets[te]),
                     tuple(str(i) for i in range(10)), mean=(0.3,), std=(0.4,), flip=False, crop_padding=1)


def _load_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar(name: str, root: str | None, folder: str, train_files: list[str], test_file: str,
           label_key: str, meta_file: str, names_key: str) -> ImageData:
    if not root:
        raise UserError(f"data={name} needs data.root=DIR, the folder that holds '{folder}/' "
                        "(the layout torchvision's CIFAR datasets use); nothing is downloaded.")
    base = Path(root)
    base = base / folder if (base / folder).is_dir() else base
    files = [base / f for f in train_files + [test_file, meta_file]]
    if not all(f.is_file() for f in files):
        raise UserError(f"{name} files not found under {str(base)!r}: expected {', '.join(train_files + [test_file])} "
                        f"(the python-pickle release, folder '{folder}/'). Set data.root to the folder holding it.")

    def read(paths: list[Path]) -> TensorSplit:
        parts = [_load_pickle(p) for p in paths]
        x = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(p[label_key]) for p in parts]).astype(np.int64)
        return TensorSplit(torch.from_numpy(x), torch.from_numpy(y))

    names = tuple(_load_pickle(files[-1])[names_key])
    return ImageData(name, read(files[:len(train_files)]), read([files[len(train_files)]]), names,
                     mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), flip=True, crop_padding=4,
                     info={"root": str(base)})


@DATASETS.register("cifar10")
def load_cifar10(root: str | None = None) -> ImageData:
    """CIFAR-10 from the python-pickle release (``cifar-10-batches-py/``)."""
    return _cifar("cifar10", root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                  "labels", "batches.meta", "label_names")


@DATASETS.register("cifar100")
def load_cifar100(root: str | None = None) -> ImageData:
    """CIFAR-100 from the python-pickle release (``cifar-100-python/``), fine labels."""
    return _cifar("cifar100", root, "cifar-100-python", ["train"], "test", "fine_labels", "meta", "fine_label_names")


@DATASETS.register("imagefolder")
def load_imagefolder(root: str | None = None, image_size: int = 64, workers: int | None = None,
                     cache_mb: float = 1024.0) -> ImageData:
    """An ImageNet-style folder: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

    Images are decoded in ``workers`` DataLoader processes (default: min(4, CPUs); 0 decodes in the
    training process). A split whose decoded images (3 x image_size^2 bytes each) fit in what is
    left of ``cache_mb`` MiB, train first, is decoded once into memory instead (0 turns that off).
    Batches are the same tensors, in the same order, whichever way they are decoded.
    """
    if not root or not (Path(root) / "train").is_dir() or not (Path(root) / "val").is_dir():
        raise UserError(f"data=imagefolder needs data.root=DIR with DIR/train/<class>/ and DIR/val/<class>/ image "
                        f"folders; got {root!r}.")
    if workers is not None and workers < 0:
        raise UserError(f"data.workers={workers} must be 0 (decode in the training process) or more worker "
                        "processes; leave it unset (null) for min(4, CPUs)")
    if not cache_mb >= 0:
        raise UserError(f"data.cache_mb={cache_mb} must be 0 (never cache) or more MiB of decoded images to keep "
                        "in memory")
    workers = default_workers() if workers is None else workers
    folders = [FolderSplit(Path(root) / name, image_size, workers) for name in ("train", "val")]
    if folders[0].classes != folders[1].classes:  # ImageFolder numbers the classes of each folder on its own
        raise UserError(f"data=imagefolder: {root}/train and {root}/val must hold the same class folders; train has "
                        f"{folders[0].classes}, val has {folders[1].classes}")
    splits: list[Any] = []
    budget, cached = cache_mb * 2 ** 20, []
    for name, folder in zip(("train", "val"), folders):
        if folder.decoded_bytes() <= budget:
            budget -= folder.decoded_bytes()
            cached.append(name)
            splits.append(folder.to_tensors())
        else:
            splits.append(folder)
    train, test = splits
    return ImageData("imagefolder", train, test, tuple(folders[0].classes), mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225), flip=True, crop_padding=image_size // 8,
                     info={"root": root, "workers": workers, "cached": cached})


def write_image_folder(data: ImageData, root: str | Path, train: int | None = None, val: int | None = None,
                       seed: int = 0) -> dict[str, int]:
    """``data`` as ``root/{train,val}/<class index>/NNNNN.png`` (what ``data=imagefolder`` reads); the counts written.

    ``train`` images of the training split and ``val`` of the test split, class-stratified and seeded
    (None: all of them). One-channel images are written as grayscale PNGs.
    """
    from PIL import Image

    counts = {}
    for split, source, n in (("train", data.train, train), ("val", data.test, val)):
        for i in stratified_subset(source.targets, n, seed).tolist():
            image, target = source.batch(torch.tensor([i]))
            pixels = (image[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            folder = Path(root) / split / f"{int(target[0]):02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(folder / f"{i:05d}.png")
        counts[split] = sum(1 for _ in (Path(root) / split).rglob("*.png"))
    return counts


def load_dataset(name: str, root: str | None = None, **kwargs: Any) -> ImageData:
    """Load dataset ``name`` (see ``DATASETS.names()``) from ``root``."""
    return DATASETS.get(name)(root=root, **kwargs)

from . import coco  # noqa: F401  registers data=coco
