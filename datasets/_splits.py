"""What the dense-task datasets (COCO-format detection data, semantic label maps) share: a train and a val split."""

from __future__ import annotations

from typing import Any


class TrainValSplits:
    """A dataset of ``train`` and ``val`` splits at one square ``image_size`` (RGB); ``test`` is ``val``."""

    train: Any
    val: Any
    image_size: int

    @property
    def test(self) -> Any:
        return self.val

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def split(self, split: str) -> Any:
        if split == "train":
            return self.train
        if split in ("val", "test"):
            return self.val
        raise ValueError(f"split must be 'train', 'val' or 'test', not {split!r}")

    def num_batches(self, n: int, batch_size: int) -> int:
        return (n + batch_size - 1) // batch_size
