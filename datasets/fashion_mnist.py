"""Fashion-MNIST (``data=fashion_mnist``, the default): 70,000 28x28 images of 10 clothing classes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from xsearch.core.data import ImageData, TensorSplit
from xsearch.core.errors import UserError

from ._registry import DATASETS, held_in_memory

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


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
@held_in_memory
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
