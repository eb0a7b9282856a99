"""scikit-learn's digits (``data=digits``): 1,797 8x8 images, the tiny real set of fast tests."""

from __future__ import annotations

import numpy as np
import torch

from xsearch.core.data import ImageData, TensorSplit, stratified_split

from ._registry import DATASETS, held_in_memory


@DATASETS.register("digits")
@held_in_memory
def load_digits_data(root: str | None = None) -> ImageData:
    """scikit-learn's 8x8 digits (1,797 images, shipped with scikit-learn); a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy((d.images * 255.0 / 16.0).round().astype(np.uint8)).unsqueeze(1)
    targets = torch.from_numpy(d.target.astype(np.int64))
    te, tr = stratified_split(targets, 0, cuts=lambda m: (m // 5,))  # a fifth of each class
    return ImageData("digits", TensorSplit(images[tr], targets[tr]), TensorSplit(images[te], targets[te]),
                     tuple(str(i) for i in range(10)), mean=(0.3,), std=(0.4,), flip=False, crop_padding=1)
