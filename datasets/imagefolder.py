"""ImageNet-style image folders (``data=imagefolder``), decoded in DataLoader worker processes, and the writer of one.

``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``: data too big for memory is decoded on
the fly, a split that fits the cache is decoded once. ``write_image_folder`` writes any in-memory
dataset in that layout (``xsearch data folder``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from xsearch.core.data import ImageData, TensorSplit, stratified_subset
from xsearch.core.errors import UserError

from ._registry import DATASETS


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
