"""CIFAR-10 and CIFAR-100 (``data=cifar10``, ``data=cifar100``) from the python-pickle release in data.root."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from xsearch.core.data import ImageData, TensorSplit
from xsearch.core.errors import UserError

from ._registry import DATASETS, held_in_memory


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
@held_in_memory
def load_cifar10(root: str | None = None) -> ImageData:
    """CIFAR-10 from the python-pickle release (``cifar-10-batches-py/``)."""
    return _cifar("cifar10", root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                  "labels", "batches.meta", "label_names")


@DATASETS.register("cifar100")
@held_in_memory
def load_cifar100(root: str | None = None) -> ImageData:
    """CIFAR-100 from the python-pickle release (``cifar-100-python/``), fine labels."""
    return _cifar("cifar100", root, "cifar-100-python", ["train"], "test", "fine_labels", "meta", "fine_label_names")
